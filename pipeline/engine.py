"""The one shared diffusers pipeline: a GenerationRequest in, images out.

Batches run one at a time (diffusers schedulers and module state are shared). A batch is one
job or several with equal `batch_key` (different prompts, seeds and init images), run as one
diffusers call. The img2img pipeline is built from the txt2img pipeline's components, so the
weights are in memory once.
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from pipeline.acceleration import Acceleration, WarmUpReport, accelerate, warm_up
from pipeline.batching import BatchKey, BatchMode, BatchShape, RowChecks, batch_key
from pipeline.checkpoints import INPAINTING_CHANNELS
from pipeline.control import ControlNets, ControlPass
from pipeline.control_names import control_parameters
from pipeline.errors import GenerationOutOfMemory, InvalidRequestError, ModelLoadError, first_line
from pipeline.face_steps import FaceKeys, restore_image_faces
from pipeline.guidance import GuidedUNet, StepCounter, vae_slicing
from pipeline.images import Infotext
from pipeline.loading import (
    CheckpointStamp,
    CheckpointSwitchError,
    LoadedModel,
    ModelLoader,
    ModelSource,
    checkpoint_stamp,
)
from pipeline.lora import ActiveLora, ActiveLoras, LoraManager, lora_hash
from pipeline.lora_names import prompt_with_lora_tags
from pipeline.noise import seeded_noise, slerp
from pipeline.preparation import (
    ModelTraits,
    PreparedJob,
    pass_steps,
    prepare_job,
    visible_steps,
)
from pipeline.previews import LATENT_SPACES, PreviewMaker, PreviewSchedule, choose_decoder
from pipeline.prompts.encoding import max_clip_skip
from pipeline.prompts.plan import PromptPlan, plan_prompt
from pipeline.request import (
    LATENT_UPSCALER,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    HiresFix,
    LoraUse,
    ProgressEvent,
    ResultStatus,
    Timings,
    UpscaleRequest,
)
from pipeline.samplers import SamplerSpec, scheduler_for_steps
from pipeline.tiling import circular_padding
from pipeline.upscale import LANCZOS, load_upscaler
from pipeline.vae import VaeChoice, choose_vae
from pipeline.validation import Limits

ProgressCallback = Callable[[ProgressEvent], None]

log = logging.getLogger(__name__)


class _Cancelled(Exception):
    """Raised inside the step callback to leave the diffusers loop at once."""


@dataclass(frozen=True)
class _Batch:
    """Jobs of one key, run as one call; their images follow one another in job order."""

    jobs: tuple[PreparedJob, ...]
    key: BatchKey

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(job.request.image_count for job in self.jobs)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def split(self, items: Sequence[Any]) -> list[Sequence[Any]]:
        """Per-image `items` (images, generators) cut into one run per job."""
        ends = list(itertools.accumulate(self.counts))
        return [items[end - count : end] for end, count in zip(ends, self.counts, strict=True)]


@dataclass(frozen=True)
class _PassSpec:
    """One diffusers call of a batch: the first pass, or a hires fix's second."""

    pipe: DiffusionPipeline
    scheduler: SchedulerMixin
    plans: tuple[PromptPlan, ...]  # one per job
    steps: int
    strength: float | None  # img2img's, None for text-to-image
    arguments: dict[str, Any]
    output_type: str
    size: tuple[int, int]  # the pass's image width and height
    control: ControlPass | None = None


def _shared_key(jobs: Sequence[PreparedJob]) -> BatchKey:
    first, *others = [batch_key(job) for job in jobs]
    differing = [
        item.name
        for item in fields(BatchKey)
        if any(getattr(key, item.name) != getattr(first, item.name) for key in others)
    ]
    if differing:
        raise ValueError(f"Jobs of one batch must share their batch_key; {differing} differ.")
    return first


def _is_set(event: threading.Event | None) -> bool:
    return event is not None and event.is_set()


def _init_images(batch: _Batch) -> list[Image.Image]:
    """Each job's init image at the batch size, once per image of that job."""
    return _per_image(batch, lambda job: job.init_image)


def _masks(batch: _Batch) -> list[Image.Image]:
    """Each job's inpainting mask at the batch size, once per image of that job."""
    return _per_image(batch, lambda job: job.mask_image)


def _per_image(
    batch: _Batch, image_of: Callable[[PreparedJob], Image.Image | None]
) -> list[Image.Image]:
    key = batch.key
    images: list[Image.Image] = []
    for job in batch.jobs:
        image = image_of(job)
        assert image is not None
        resized = image.resize((key.width, key.height), Image.Resampling.LANCZOS)
        images.extend([resized] * job.request.image_count)
    return images


def _overlaid(image: Image.Image, job: PreparedJob) -> Image.Image:
    """An inpainted image with the init image's pixels back where the mask keeps them, through
    the mask's blur (A1111's overlay): the kept area is exactly the input's."""
    assert job.init_image is not None and job.mask_image is not None
    init = job.init_image.resize(image.size, Image.Resampling.LANCZOS)
    mask = job.mask_image.resize(image.size, Image.Resampling.LANCZOS)
    return Image.composite(image.convert("RGB"), init, mask)


@dataclass(frozen=True)
class _FailedLoad:
    """A checkpoint whose load failed, with its files' stamp when it did."""

    name: str
    stamp: CheckpointStamp
    reason: str


def _without_frames(error: BaseException) -> BaseException:
    """`error` and the errors chained to it with their tracebacks dropped (the frames, and
    every local in them, are freed); the messages and the chain stay."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error


def _traits(model: LoadedModel, scheduler_config: dict[str, Any]) -> ModelTraits:
    """What checking a job needs of the loaded checkpoint (pipeline/preparation.py)."""
    pipe = model.pipe
    return ModelTraits(
        family=model.family,
        native_size=model.native_size,
        max_clip_skip=max_clip_skip(pipe),
        embeds_guidance=pipe.unet.config.time_cond_proj_dim is not None,
        tokenizer=pipe.tokenizer,
        text_width=pipe.unet.config.cross_attention_dim,
        inpainting=pipe.unet.config.in_channels == INPAINTING_CHANNELS,
        scheduler_config=lambda: scheduler_config,
    )


def easel_version() -> str:
    try:
        return version("easel")
    except PackageNotFoundError:
        return "dev"


class Engine:
    def __init__(
        self,
        model: LoadedModel,
        limits: Limits | None = None,
        batching: BatchShape | None = None,
        models_dir: Path | None = None,
        max_resident_loras: int = 4,
        loader: ModelLoader | None = None,
        acceleration: Acceleration | None = None,
    ) -> None:
        """`batching`: how a batch's rows are cut into UNet calls (pipeline/batching.py; by
        default in fixed-size calls, so an image is the same whichever jobs shared its batch).
        `models_dir` holds the upscalers a hires fix may name.
        `loader`: how `use_model` loads another checkpoint (None: this one only).
        `acceleration`: compile, channels-last, VAE tiling (pipeline/acceleration.py), applied
        to every checkpoint installed."""
        self.acceleration = acceleration or Acceleration()
        self.limits = limits or Limits()
        self.batching = batching or BatchShape()
        self.models_dir = models_dir
        self.loader = loader
        self.max_resident_loras = max_resident_loras
        self._lock = threading.Lock()  # one batch (or checkpoint switch) at a time
        # Held while the checkpoint is swapped and while a request is prepared against it.
        self._model_lock = threading.Lock()
        self._unloaded: str | None = None  # why no checkpoint is loaded (a failed switch)
        self._failed_load: _FailedLoad | None = None  # refused at once while its files stay
        self._install(model)

    def _install(self, model: LoadedModel) -> None:
        """Make `model` the one every pipeline call uses (the img2img pipeline shares its
        weights; LoRAs are loaded into it afresh)."""
        accelerate(model.pipe, self.acceleration)
        models = self.models_dir or Path("models")
        self.vae = choose_vae(model.pipe, models, needs_fix=model.family.vae_overflows_in_fp16)
        self.model = model
        self.loras = LoraManager(
            model.pipe, self.models_dir or Path("models"), self.max_resident_loras
        )
        self._txt2img = model.pipe
        self._img2img = model.family.img2img_class(
            **{**model.pipe.components, **dict(model.family.pipeline_options)}
        )
        self._img2img.set_progress_bar_config(disable=True)
        self._inpaint = model.family.inpaint_class(
            **{**model.pipe.components, **dict(model.family.pipeline_options)}
        )
        self._inpaint.set_progress_bar_config(disable=True)
        self.controlnets = ControlNets(model.pipe.unet, self.models_dir or Path("models"))
        self._scheduler_config = dict(model.pipe.scheduler.config)
        self.traits = _traits(model, self._scheduler_config)
        self._preview_maker: PreviewMaker | None = None
        self.row_checks = RowChecks()  # kernels are checked afresh for every checkpoint
        self._unloaded = None

    def warm_up(self, sizes: Sequence[tuple[int, int]] = ()) -> WarmUpReport | None:
        """With torch.compile on, compile now what the first jobs would: the checkpoint's
        native size and `sizes`, at each UNet call shape the batching makes there (fixed-size
        calls: one shape a size, whatever the batch holds; whole batches: one image and a full
        request). Called at start, before jobs run; None when nothing is compiled."""
        if not self.acceleration.compile.unet:
            return None
        native = self.model.native_size
        counts = (1,)
        if self.batching.mode is BatchMode.WHOLE:
            counts = tuple(dict.fromkeys((1, self.limits.max_images)))
        return warm_up(
            self.generate,
            [(native, native), *sizes],
            counts,
            self.acceleration.recompile_limit,
        )

    @property
    def model_name(self) -> str:
        """The loaded checkpoint's name, as the images' `Model` parameter says it."""
        return self.model.source.name

    def use_model(self, name: str | None) -> bool:
        """Make the checkpoint called `name` the loaded one (None: keep whichever is loaded);
        True when it was loaded now. Called between batches, on the thread that runs them.

        The current checkpoint is freed before the next one loads (one in memory at a time).
        A name that does not resolve to a usable checkpoint is refused before anything is
        freed; a load that fails after that loads the previous checkpoint again. Either way
        a CheckpointSwitchError says why and which checkpoint stays. A checkpoint that failed
        to load is refused at once (nothing freed) for as long as its files stay as they
        were, until a switch to another name is asked for."""
        if self._unloaded is None and (name is None or name == self.model.source.name):
            return False
        with self._lock, self._model_lock:
            previous = self.model.source
            current = None if self._unloaded is not None else previous.name
            wanted = name or previous.name
            if self.loader is None:
                raise CheckpointSwitchError(wanted, current, "this engine loads no other one")
            try:
                source = self.loader.source(wanted)
            except ModelLoadError as error:
                raise CheckpointSwitchError(wanted, current, first_line(error)) from error
            stamp = checkpoint_stamp(source)
            known = self._failed_load
            if known is not None and known.name == wanted and known.stamp == stamp:
                raise CheckpointSwitchError(wanted, current, known.reason)
            self._failed_load = None
            self._unload()
            loaded = self._load(source)
            if isinstance(loaded, BaseException):
                reason = first_line(loaded)
                log.error("Loading the checkpoint %s failed: %s", wanted, reason)
                self._failed_load = _FailedLoad(wanted, stamp, reason)
                self._free_memory()  # whatever the failed load had built, before the reload
                self._restore(previous)
                kept = None if self._unloaded else previous.name
                raise CheckpointSwitchError(wanted, kept, reason) from loaded
            self._install(loaded)
            log.info("Loaded the checkpoint %s (in place of %s)", source.name, previous.name)
            return True

    def _load(self, source: ModelSource) -> LoadedModel | Exception:
        """The loaded checkpoint, or why it failed: the error without its traceback, so that
        nothing the failed load built (its frames' locals: a half-built pipeline on the GPU)
        is still referenced when the memory is freed for the previous checkpoint."""
        assert self.loader is not None
        try:
            return self.loader.load(source)
        except Exception as error:
            return _without_frames(error)

    def _unload(self) -> None:
        """Drop every reference to the loaded checkpoint's weights and free their memory."""
        self._unloaded = f"{self.model.source.name} was unloaded"
        self._txt2img = self._img2img = self._inpaint = None  # type: ignore[assignment]
        self.loras = None  # type: ignore[assignment]
        self.controlnets = None  # type: ignore[assignment]
        self._preview_maker = None
        self.model = replace(self.model, pipe=None)  # type: ignore[arg-type]  # name, source
        self._free_memory()

    def _restore(self, previous: ModelSource) -> None:
        """Load the checkpoint a failed switch freed; if even that fails, the engine has
        none (its calls say so) until the next batch's switch loads one."""
        loaded = self._load(previous)
        if isinstance(loaded, BaseException):
            log.error("Loading %s again failed too: %s", previous.name, first_line(loaded))
            self._unloaded = f"loading {previous.name} again failed: {first_line(loaded)}"
            self._free_memory()
        else:
            self._install(loaded)

    def _require_model(self) -> None:
        if self._unloaded is not None:
            raise ModelLoadError(f"No checkpoint is loaded ({self._unloaded}).")

    @property
    def pipelines(self) -> tuple[DiffusionPipeline, DiffusionPipeline]:
        return self._txt2img, self._img2img

    def prepare(self, request: GenerationRequest) -> PreparedJob:
        """Check a request and fix its size and seeds without running it; errors are clear.
        It is checked against the loaded checkpoint (a switch under way is waited for)."""
        with self._model_lock:
            self._require_model()
            return self._prepare(request)

    def _prepare(self, request: GenerationRequest) -> PreparedJob:
        models = self.models_dir or Path("models")
        return prepare_job(request, self.traits, self.limits, models, self.loras.lookup)

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        preview_every: float | None = None,
    ) -> GenerationResult:
        return self.run(self.prepare(request), on_progress, cancel, preview_every)

    def run(
        self,
        job: PreparedJob,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        preview_every: float | None = None,
    ) -> GenerationResult:
        """Run a job from `prepare`; one at a time, whichever thread calls."""
        return self.run_batch([job], on_progress, [cancel], preview_every)[0]

    def run_batch(
        self,
        jobs: Sequence[PreparedJob],
        on_progress: ProgressCallback | None = None,
        cancels: Sequence[threading.Event | None] | None = None,
        preview_every: float | None = None,
    ) -> list[GenerationResult]:
        """Run jobs of one `batch_key` as one pipeline call; one result per job, in order.

        In fixed-size calls (the default `batching`) each job's images are bit-identical to
        running it alone, on devices that pass the engine's row check. A job
        whose cancel event is set comes back CANCELLED; the call stops early only once every
        job is cancelled. One batch at a time, whichever thread calls.

        `preview_every` (seconds; None: never): progress events carry a JPEG preview of each
        job's images, keyed by the job's position in `jobs`, at the first step after each
        interval (0: every step), never on the last step.
        """
        if preview_every is not None and preview_every < 0:
            raise ValueError(f"preview_every must be 0 or more seconds, not {preview_every}")
        events = tuple(cancels) if cancels is not None else (None,) * len(jobs)
        if len(events) != len(jobs):
            raise ValueError(f"{len(jobs)} jobs but {len(events)} cancel events")
        if not jobs:
            return []
        key = _shared_key(jobs)
        with self._lock:
            self._require_model()
            if self.traits.inpainting and not key.inpaint:
                # Checked here, not when the job is queued: jobs are checked against the
                # checkpoint loaded then, which a zoom out may have made the inpainting one.
                raise InvalidRequestError(
                    f"{self.model.source.name} is an inpainting checkpoint: it paints masked "
                    "areas (zoom out, pan) only; pick another checkpoint for this job.",
                    ko=f"{self.model.source.name}은(는) 인페인팅 체크포인트라 마스크 영역(줌 "
                    "아웃, 팬)만 그립니다. 이 작업에는 다른 체크포인트를 고르세요.",
                )
            started = time.perf_counter()
            live = [index for index, event in enumerate(events) if not _is_set(event)]
            images: dict[int, tuple[GeneratedImage, ...]] = {}
            diffusion_s = 0.0
            control_map = None
            if live:
                batch = _Batch(tuple(jobs[index] for index in live), key)
                progress = _Progress(
                    on_progress,
                    [events[index] for index in live],
                    total=_total_steps(batch.jobs[0].request),
                    previews=self._preview_plan(batch, live, on_progress, preview_every),
                )
                done, diffusion_s, control_map = self._generate(batch, progress)
                images = dict(zip(live, done, strict=True)) if done is not None else {}
            cancelled = [index for index, event in enumerate(events) if _is_set(event)]
            if cancelled:
                self._free_memory()
            timings = Timings(total_s=time.perf_counter() - started, diffusion_s=diffusion_s)
        return [
            self._result(
                job,
                images.get(index) if index not in cancelled else None,
                timings,
                control_map,
            )
            for index, job in enumerate(jobs)
        ]

    def preview_maker(self) -> PreviewMaker:
        """TAESD when the models folder has it, else the linear approximation; loaded once,
        the first time a preview is wanted."""
        if self._preview_maker is None:
            pipe = self._txt2img
            space = LATENT_SPACES[self.model.family.latent_space]
            decoder = choose_decoder(
                self.models_dir or Path("models"), pipe.device, pipe.dtype, space
            )
            self._preview_maker = PreviewMaker(decoder, pipe.vae_scale_factor)
        return self._preview_maker

    def _preview_plan(
        self,
        batch: _Batch,
        positions: Sequence[int],
        on_progress: ProgressCallback | None,
        preview_every: float | None,
    ) -> _PreviewPlan | None:
        if preview_every is None or on_progress is None:
            return None
        return _PreviewPlan(
            maker=self.preview_maker(),
            schedule=PreviewSchedule(preview_every),
            counts=batch.counts,
            keys=tuple(positions),
        )

    def _result(
        self,
        job: PreparedJob,
        images: tuple[GeneratedImage, ...] | None,
        timings: Timings,
        control_map: Image.Image | None = None,
    ) -> GenerationResult:
        """DONE with `images`, or CANCELLED (no images, no diffusion time) without them; the
        control map when the job asked to see it."""
        if images is None:
            timings = replace(timings, diffusion_s=0.0)
        shown = job.request.control is not None and job.request.control.show
        return GenerationResult(
            status=ResultStatus.DONE if images is not None else ResultStatus.CANCELLED,
            request=job.request,
            images=images or (),
            model_name=self.model.source.name,
            model_hash=self.model.short_hash,
            timings=timings,
            control_map=control_map if shown and images is not None else None,
        )

    def _generate(
        self, batch: _Batch, progress: _Progress
    ) -> tuple[list[tuple[GeneratedImage, ...]] | None, float, Image.Image | None]:
        """Each job's images, the diffusion time and the control map (the batch's one); None
        when every job was cancelled."""
        out_of_memory = False
        self.loras.activate(batch.key.loras)  # a bad file fails the whole batch
        try:
            images, diffusion_s, control_map = self._run(batch, progress)
        except _Cancelled:
            return None, 0.0, None
        except torch.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:
            # Outside the except block, so the traceback (and every tensor its frames
            # hold) is gone before the cache is emptied.
            self._free_memory()
            key = batch.key
            raise GenerationOutOfMemory(
                f"The GPU ran out of memory for {batch.total} image(s) at "
                f"{key.width}x{key.height}; try fewer images or a smaller size."
            )
        return (
            [
                self._generated(job, job_images)
                for job, job_images in zip(batch.jobs, batch.split(images), strict=True)
            ],
            diffusion_s,
            control_map,
        )

    def _generated(
        self, job: PreparedJob, images: Sequence[Image.Image]
    ) -> tuple[GeneratedImage, ...]:
        request = job.request
        loras = self._lora_records(job.loras)
        if job.mask_image is not None:
            images = [_overlaid(image, job) for image in images]
        face_keys: FaceKeys = ()
        if request.face_restoration is not None:
            restored = [self.restore_faces(image, request) for image in images]
            images = [image for image, _ in restored]
            face_keys = restored[0][1] if restored else ()
        toolbox_keys = self._control_keys(request) + face_keys  # once for the job's images
        return tuple(
            GeneratedImage(
                image=image,
                seed=seed,
                infotext=self._infotext(request, job.sampler, seed, index, loras, toolbox_keys),
            )
            for index, (image, seed) in enumerate(zip(images, request.seeds, strict=True))
        )

    def restore_faces(
        self, image: Image.Image, work: GenerationRequest | UpscaleRequest
    ) -> tuple[Image.Image, FaceKeys]:
        """`image` with its faces restored as `work` asks, on this engine's device, and the
        keys that record it in the parameters."""
        assert work.face_restoration is not None
        pipe = self._txt2img
        models = self.models_dir or Path("models")
        return restore_image_faces(
            image, work.face_restoration, work.codeformer_weight, models, pipe.device, pipe.dtype
        )

    def _lora_records(self, uses: Sequence[LoraUse]) -> ActiveLoras:
        """A job's own LoRAs for its infotext, in its order, weight-zero ones included."""
        files = [self.loras.lookup(use.name) for use in uses]
        return ActiveLoras(
            tuple(
                ActiveLora(file.name, use.unet_weight, use.te_weight, lora_hash(file.path))
                for file, use in zip(files, uses, strict=True)
            )
        )

    def _run(
        self, batch: _Batch, progress: _Progress
    ) -> tuple[list[Image.Image], float, Image.Image | None]:
        """The batch's images, its diffusion time and its control map (None without one)."""
        key = batch.key
        generators = [
            torch.Generator("cpu").manual_seed(seed)
            for job in batch.jobs
            for seed in job.request.seeds
        ]
        pipe = self._first_pass_pipe(key)
        arguments: dict[str, Any] = {}
        # An inpainting pass draws its noise here too: diffusers' own would come after its VAE
        # encode has drawn from the generators, and variation seeds blend into this noise.
        if key.inpaint or any(job.request.variation_seeds for job in batch.jobs):
            arguments["latents"] = self._initial_noise(pipe, batch, generators)
        if key.inpaint:
            arguments.update(
                image=_init_images(batch),
                mask_image=_masks(batch),
                strength=key.denoising_strength,
                width=key.width,
                height=key.height,
            )
        elif key.is_img2img:
            arguments.update(image=_init_images(batch), strength=key.denoising_strength)
        else:
            arguments.update(width=key.width, height=key.height)
        hires = key.hires
        latent_hires = hires is not None and hires.upscaler == LATENT_UPSCALER
        control, control_map = self._control_pass(batch, (key.width, key.height))
        first_pass = _PassSpec(
            pipe=pipe,
            scheduler=batch.jobs[0].scheduler,  # the jobs' schedulers are alike (same key)
            plans=tuple(job.prompt for job in batch.jobs),
            steps=key.steps,
            strength=key.denoising_strength,
            arguments=arguments,
            output_type="latent" if latent_hires else "pil",
            size=(key.width, key.height),
            control=control,
        )
        first, diffusion_s = self._pass(batch, first_pass, generators, progress)
        if hires is None:
            return first, diffusion_s, control_map
        images, hires_s = self._hires_pass(batch, first, generators, progress)
        return images, diffusion_s + hires_s, control_map

    def _control_pass(
        self, batch: _Batch, size: tuple[int, int]
    ) -> tuple[ControlPass | None, Image.Image | None]:
        """The batch's ControlNet at a pass's size, and its map (one for the batch: the
        batch key holds the control image and its settings)."""
        job = batch.jobs[0]
        use = job.request.control
        if use is None:
            return None, None
        assert job.control_image is not None
        return self.controlnets.control_pass(use, job.control_image, size)

    def _first_pass_pipe(self, key: BatchKey) -> DiffusionPipeline:
        if key.inpaint:
            return self._inpaint
        return self._img2img if key.is_img2img else self._txt2img

    def _hires_pass(
        self,
        batch: _Batch,
        first: list[Any],
        generators: list[torch.Generator],
        progress: _Progress,
    ) -> tuple[list[Image.Image], float]:
        """Upscale the first pass and run img2img at the target size (A1111's hires fix)."""
        key = batch.key
        assert key.hires is not None
        hires = key.hires
        width, height = batch.jobs[0].request.hires_size()
        steps = hires.steps or key.steps
        if hires.upscaler == LATENT_UPSCALER:
            factor = self._txt2img.vae_scale_factor
            latents = torch.cat(first) if isinstance(first[0], torch.Tensor) else first
            image: Any = torch.nn.functional.interpolate(
                latents, size=(height // factor, width // factor), mode="bilinear"
            )
        else:
            image = [self._hires_upscale(item, hires.upscaler, width, height) for item in first]
        strength = hires.denoising_strength
        edited_steps = pass_steps(steps, strength)
        plans = tuple(
            plan_prompt(job.request.prompt, job.request.negative_prompt, edited_steps)
            for job in batch.jobs
        )
        second_pass = _PassSpec(
            pipe=self._img2img,
            scheduler=scheduler_for_steps(batch.jobs[0].sampler, self._scheduler_config, steps),
            plans=plans,
            steps=steps,
            strength=strength,
            arguments={"image": image, "strength": strength},
            output_type="pil",
            size=(width, height),
            control=self._control_pass(batch, (width, height))[0],
        )
        return self._pass(batch, second_pass, generators, progress)

    def _hires_upscale(
        self, image: Image.Image, upscaler: str, width: int, height: int
    ) -> Image.Image:
        """Lanczos, or an upscaler model at 2x or 4x brought to the exact size."""
        model = None
        if upscaler != LANCZOS:
            device = self._txt2img.device
            model = load_upscaler(
                upscaler, self.models_dir or Path("models"), device, self._txt2img.dtype
            )
        if model is not None:
            factor = 2 if max(width / image.width, height / image.height) <= 2 else 4
            image = model.upscale(image, factor)
        return image.resize((width, height), Image.Resampling.LANCZOS)

    def _pass(
        self,
        batch: _Batch,
        spec: _PassSpec,
        generators: list[torch.Generator],
        progress: _Progress,
    ) -> tuple[list[Any], float]:
        """One diffusers call for the whole batch, with per-job conditioning and padding."""
        pipe = spec.pipe
        pipe.scheduler = spec.scheduler
        key = batch.key
        counter = StepCounter(pass_steps(spec.steps, spec.strength))
        guided = GuidedUNet(
            plans=spec.plans,
            images_per_plan=batch.counts,
            scales=tuple(job.request.cfg_scale for job in batch.jobs),
            encoder=self.model.family.prompt_encoder(pipe, key.clip_skip),
            counter=counter,
            shape=self.batching,
            rows_per_call=self.batching.rows_for(*spec.size, self.model.native_size),
            checks=self.row_checks,
            control=spec.control,
        )
        # diffusers checks the embeddings' shapes; the wrapper picks each image's per step.
        first = guided.conditioning(0)
        call: dict[str, Any] = {
            **guided.encoder.pipeline_embeds(first.parts[0], first.negative, batch.total),
            "num_inference_steps": spec.steps,
            # Guided or not, as every job of the key; the wrapper applies each job's own scale.
            "guidance_scale": max(job.request.cfg_scale for job in batch.jobs),
            "generator": generators,
            "output_type": spec.output_type,
            "callback_on_step_end": progress.callback(counter),
            **spec.arguments,
        }
        with (
            circular_padding((pipe.unet, pipe.vae), enabled=key.tiling),
            guided.wrapping(pipe.unet),
            vae_slicing(pipe.vae, enabled=self.batching.mode is not BatchMode.WHOLE),
        ):
            started = time.perf_counter()
            output = pipe(**call)
            elapsed = time.perf_counter() - started
        if spec.output_type == "latent":
            return list(output.images.split(1)), elapsed
        return list(output.images), elapsed

    def _initial_noise(
        self, pipe: DiffusionPipeline, batch: _Batch, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """Every job's starting noise as it would be alone, in batch order."""
        return torch.cat(
            [
                self._job_noise(pipe, job.request, job_generators)
                for job, job_generators in zip(batch.jobs, batch.split(generators), strict=True)
            ]
        )

    def _job_noise(
        self,
        pipe: DiffusionPipeline,
        request: GenerationRequest,
        generators: Sequence[torch.Generator],
    ) -> torch.Tensor:
        """The seeds' noise, drawn from the job's own generators as diffusers would draw it,
        blended towards the variation seeds' noise when the job has them."""
        assert request.width is not None and request.height is not None
        factor = pipe.vae_scale_factor
        channels = pipe.vae.config.latent_channels  # an inpainting UNet takes more than these
        shape = (channels, request.height // factor, request.width // factor)
        device, dtype = pipe._execution_device, pipe.unet.dtype
        base = randn_tensor(
            (request.image_count, *shape), generator=list(generators), device=device, dtype=dtype
        )
        if not request.variation_seeds:
            return base
        varied = seeded_noise(request.variation_seeds, shape, device, dtype)  # type: ignore[arg-type]
        return slerp(request.variation_strength, base, varied)

    def _infotext(
        self,
        request: GenerationRequest,
        spec: SamplerSpec,
        seed: int,
        index: int,
        loras: ActiveLoras,
        toolbox_keys: tuple[tuple[str, str], ...] = (),
    ) -> Infotext:
        """An image's A1111 parameters; `toolbox_keys`: its job's ControlNet and face
        restoration keys."""
        return Infotext(
            prompt=prompt_with_lora_tags(request.prompt, request.loras),
            negative_prompt=request.negative_prompt,
            steps=request.steps,
            sampler=spec.base_name,
            schedule_type=spec.schedule_type,
            cfg_scale=request.cfg_scale,
            seed=seed,
            variation_seed=request.variation_seeds[index] if request.variation_seeds else None,
            variation_seed_strength=request.variation_strength if request.variation_seeds else None,
            width=request.width,
            height=request.height,
            model_hash=self.model.short_hash,
            model=self.model.source.name,
            denoising_strength=_denoising_strength(request),
            clip_skip=request.clip_skip if request.clip_skip > 1 else None,  # A1111 omits 1
            tiling=request.tiling,
            rng="CPU",  # noise is drawn on the CPU, so seeds match across devices
            extra=_hires_keys(request.hires)
            + _lora_keys(loras)
            + toolbox_keys
            + _vae_keys(self.vae),
            version=f"Easel {easel_version()}",
        )

    def _control_keys(self, request: GenerationRequest) -> tuple[tuple[str, str], ...]:
        use = request.control
        if use is None:
            return ()
        return (("ControlNet 0", control_parameters(use, self.controlnets.short_hash(use.model))),)

    def _free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _denoising_strength(request: GenerationRequest) -> float | None:
    if request.hires is not None:
        return request.hires.denoising_strength
    return request.denoising_strength if request.is_img2img else None


def _hires_keys(hires: HiresFix | None) -> tuple[tuple[str, str], ...]:
    """A1111's hires fix parameters, in its order."""
    if hires is None:
        return ()
    keys = [("Hires upscale", f"{hires.scale:g}")]
    if hires.steps is not None:
        keys.append(("Hires steps", str(hires.steps)))
    keys.append(("Hires upscaler", hires.upscaler))
    return tuple(keys)


def _vae_keys(vae: VaeChoice) -> tuple[tuple[str, str], ...]:
    return (("VAE", vae.name),) if vae.name else ()


def _lora_keys(loras: ActiveLoras) -> tuple[tuple[str, str], ...]:
    hashes = loras.hashes_infotext()
    return (("Lora hashes", hashes),) if hashes else ()


def _total_steps(request: GenerationRequest) -> int:
    """Every step the job runs, a hires fix's second pass included."""
    total = visible_steps(request)
    if request.hires is not None:
        steps = request.hires.steps or request.steps
        total += min(int(steps * request.hires.denoising_strength), steps)
    return total


@dataclass
class _PreviewPlan:
    """Previews wanted for a batch: who makes them, when, and which rows are whose."""

    maker: PreviewMaker
    schedule: PreviewSchedule
    counts: tuple[int, ...]  # each job's rows of the latent batch, in order
    keys: tuple[int, ...]  # each job's position in run_batch's `jobs`


class _Progress:
    """Progress over the whole batch in the user's steps, and cancellation, for each pass.

    Second-order samplers (Heun, DPM2) call the UNet about twice per step and PLMS once
    more, so diffusers' own count would overshoot; the count is mapped back to steps.
    """

    def __init__(
        self,
        on_progress: ProgressCallback | None,
        cancels: Sequence[threading.Event | None],
        total: int,
        previews: _PreviewPlan | None = None,
    ) -> None:
        self.on_progress = on_progress
        self.cancels = tuple(cancels)
        self.total = total
        self.previews = previews
        self.done_before = 0  # steps of the passes already finished
        self.shown = 0

    @property
    def all_cancelled(self) -> bool:
        """The call stops only when no job of the batch still wants its images."""
        return all(_is_set(event) for event in self.cancels)

    def callback(self, counter: StepCounter) -> Callable[..., dict[str, Any]]:
        offset = self.done_before
        self.done_before += counter.steps

        def step_end(
            pipe: DiffusionPipeline, index: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            counter.advance(pipe.num_timesteps)
            in_pass = math.ceil((index + 1) * counter.steps / pipe.num_timesteps)
            step = offset + min(counter.steps, in_pass)
            if self.on_progress is not None and step > self.shown:
                previews = self._previews(step, tensors)
                self.on_progress(ProgressEvent(step=step, total=self.total, previews=previews))
            self.shown = max(self.shown, step)
            if self.all_cancelled:
                raise _Cancelled
            return tensors

        return step_end

    def _previews(self, step: int, tensors: dict[str, Any]) -> tuple[tuple[int, bytes], ...]:
        plan = self.previews
        if plan is None or "latents" not in tensors or not plan.schedule.due(step, self.total):
            return ()
        try:
            return plan.maker.previews(tensors["latents"], plan.counts, plan.keys)
        except Exception:  # a preview is a nicety: the batch goes on without them
            log.exception("Making a preview failed; this batch goes on without them")
            self.previews = None
            return ()
