"""The one shared diffusers pipeline: a GenerationRequest in, images out.

Jobs run one at a time (diffusers schedulers and module state are shared), each with its own
scheduler instance. The img2img pipeline is built from the txt2img pipeline's components, so
the weights are in memory once.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from pipeline.errors import GenerationOutOfMemory, InvalidRequestError
from pipeline.guidance import GuidedUNet, StepCounter, vae_slicing
from pipeline.images import Infotext
from pipeline.loading import LoadedModel
from pipeline.lora import ActiveLoras, LoraManager
from pipeline.noise import seeded_noise, slerp
from pipeline.prompts.encoding import max_clip_skip
from pipeline.prompts.plan import PromptPlan, plan_prompt
from pipeline.request import (
    LATENT_UPSCALER,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    HiresFix,
    ImageRef,
    LoraUse,
    ProgressEvent,
    ResultStatus,
    Timings,
)
from pipeline.samplers import SamplerSpec, make_scheduler, resolve_sampler
from pipeline.tiling import circular_padding
from pipeline.upscale import LANCZOS, load_upscaler, resolve_upscaler
from pipeline.validation import Limits, resolve_request

ProgressCallback = Callable[[ProgressEvent], None]


class _Cancelled(Exception):
    """Raised inside the step callback to leave the diffusers loop at once."""


@dataclass(frozen=True)
class PreparedJob:
    """A checked request with its size and seeds fixed, ready to run."""

    request: GenerationRequest
    notes: tuple[str, ...]  # what was changed and should be told (a rounded size)
    scheduler: SchedulerMixin  # this job's own instance
    sampler: SamplerSpec
    init_image: Image.Image | None
    prompt: PromptPlan
    loras: tuple[LoraUse, ...]  # from <lora:…> tags and the request


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
        exact_batches: bool = True,
        models_dir: Path | None = None,
        max_resident_loras: int = 4,
    ) -> None:
        """`exact_batches`: image i of a batch is bit-identical to seed i alone (see
        pipeline/guidance.py). `models_dir` holds the upscalers a hires fix may name."""
        self.model = model
        self.limits = limits or Limits()
        self.exact_batches = exact_batches
        self.models_dir = models_dir
        self.loras = LoraManager(model.pipe, models_dir or Path("models"), max_resident_loras)
        self._txt2img = model.pipe
        self._img2img = model.family.img2img_class(
            **model.pipe.components, requires_safety_checker=False
        )
        self._img2img.set_progress_bar_config(disable=True)
        self._scheduler_config = dict(model.pipe.scheduler.config)
        self._lock = threading.Lock()

    @property
    def pipelines(self) -> tuple[DiffusionPipeline, DiffusionPipeline]:
        return self._txt2img, self._img2img

    def prepare(self, request: GenerationRequest) -> PreparedJob:
        """Check a request and fix its size and seeds without running it; errors are clear."""
        spec = resolve_sampler(request.sampler, request.schedule_type)
        init = open_init_image(request.init_image) if request.init_image is not None else None
        layers = max_clip_skip(self._txt2img)
        if request.clip_skip > layers:
            raise InvalidRequestError(
                f"Clip skip must be between 1 and {layers} for this model, not {request.clip_skip}."
            )
        resolved = resolve_request(request, self.limits, self.model.native_size, init)
        steps = _visible_steps(resolved.request)
        plan = plan_prompt(request.prompt, request.negative_prompt, steps)
        self._check_prompt_length(plan, request.clip_skip)
        hires = resolved.request.hires
        if hires is not None and hires.upscaler not in (LATENT_UPSCALER, LANCZOS):
            resolve_upscaler(hires.upscaler, self.models_dir or Path("models"))
        tagged = (LoraUse(tag.name, tag.unet_weight, tag.te_weight) for tag in plan.loras)
        loras = (*tagged, *request.loras)
        for use in loras:
            self.loras.lookup(use.name)  # an unknown name is a clear error before the queue
        return PreparedJob(
            request=resolved.request,
            notes=resolved.notes,
            scheduler=self._scheduler_for(spec, resolved.request.steps),
            sampler=spec,
            init_image=init,
            prompt=plan,
            loras=loras,
        )

    def _check_prompt_length(self, plan: PromptPlan, clip_skip: int) -> None:
        encoder = self.model.family.prompt_encoder(self._txt2img, clip_skip)
        most = self.limits.max_prompt_chunks
        for text in plan.texts():
            chunks = len(encoder.chunks(text))
            if chunks > most:
                raise InvalidRequestError(
                    f"The prompt needs {chunks} chunks of 75 tokens (BREAK starts one too); "
                    f"the limit is {most}. Shorten it."
                )

    def _scheduler_for(self, spec: SamplerSpec, steps: int) -> SchedulerMixin:
        scheduler = make_scheduler(spec, self._scheduler_config)
        try:
            scheduler.set_timesteps(steps)
        except ValueError as error:  # e.g. LCM runs at most its original 50 steps
            raise InvalidRequestError(f"{spec.name} cannot run {steps} steps: {error}") from None
        return scheduler

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        return self.run(self.prepare(request), on_progress, cancel)

    def run(
        self,
        job: PreparedJob,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Run a job from `prepare`; one at a time, whichever thread calls."""
        resolved = job.request
        with self._lock:
            started = time.perf_counter()
            if cancel is not None and cancel.is_set():
                return self._cancelled(resolved, started)
            out_of_memory = False
            active = self.loras.activate(job.loras)  # a bad file fails this job alone
            try:
                images, diffusion_s = self._run(job, on_progress, cancel)
            except _Cancelled:
                return self._cancelled(resolved, started)
            except torch.OutOfMemoryError:
                out_of_memory = True
            if out_of_memory:
                # Outside the except block, so the traceback (and every tensor its frames
                # hold) is gone before the cache is emptied.
                self._free_memory()
                raise GenerationOutOfMemory(
                    f"The GPU ran out of memory for {resolved.image_count} image(s) at "
                    f"{resolved.width}x{resolved.height}; try fewer images or a smaller size."
                )
            generated = tuple(
                GeneratedImage(
                    image=image,
                    seed=seed,
                    infotext=self._infotext(resolved, job.sampler, seed, index, active),
                )
                for index, (image, seed) in enumerate(zip(images, resolved.seeds, strict=True))
            )
            total = time.perf_counter() - started
        return GenerationResult(
            status=ResultStatus.DONE,
            request=resolved,
            images=generated,
            model_name=self.model.source.name,
            model_hash=self.model.short_hash,
            timings=Timings(total_s=total, diffusion_s=diffusion_s),
        )

    def _run(
        self,
        job: PreparedJob,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> tuple[list[Image.Image], float]:
        request = job.request
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]
        progress = _Progress(on_progress, cancel, total=_total_steps(request))
        pipe = self._img2img if request.is_img2img else self._txt2img
        arguments: dict[str, Any] = {}
        if request.variation_seeds:
            arguments["latents"] = self._varied_noise(pipe, request, generators)
        if job.init_image is not None:
            assert request.width is not None and request.height is not None
            init = job.init_image.resize((request.width, request.height), Image.Resampling.LANCZOS)
            arguments.update(image=init, strength=request.denoising_strength)
        else:
            arguments.update(width=request.width, height=request.height)
        hires = request.hires
        latent_hires = hires is not None and hires.upscaler == LATENT_UPSCALER
        first, diffusion_s = self._pass(
            pipe,
            job.scheduler,
            job.prompt,
            request,
            generators,
            arguments,
            progress,
            output_type="latent" if latent_hires else "pil",
        )
        if hires is None:
            return first, diffusion_s
        return self._hires_pass(job, first, generators, progress, diffusion_s)

    def _hires_pass(
        self,
        job: PreparedJob,
        first: list[Any],
        generators: list[torch.Generator],
        progress: _Progress,
        diffusion_s: float,
    ) -> tuple[list[Image.Image], float]:
        """Upscale the first pass and run img2img at the target size (A1111's hires fix)."""
        request = job.request
        assert request.hires is not None
        hires = request.hires
        width, height = request.hires_size()
        steps = hires.steps or request.steps
        if hires.upscaler == LATENT_UPSCALER:
            factor = self._txt2img.vae_scale_factor
            latents = torch.cat(first) if isinstance(first[0], torch.Tensor) else first
            image: Any = torch.nn.functional.interpolate(
                latents, size=(height // factor, width // factor), mode="bilinear"
            )
        else:
            image = [self._hires_upscale(item, hires.upscaler, width, height) for item in first]
        strength = hires.denoising_strength
        plan = plan_prompt(
            request.prompt, request.negative_prompt, min(int(steps * strength), steps)
        )
        hires_request = replace(request, width=width, height=height, steps=steps, hires=None)
        images, hires_s = self._pass(
            self._img2img,
            self._scheduler_for(job.sampler, steps),
            plan,
            replace(hires_request, denoising_strength=strength),
            generators,
            {"image": image, "strength": strength, "num_inference_steps": steps},
            progress,
            output_type="pil",
        )
        return images, diffusion_s + hires_s

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
        pipe: DiffusionPipeline,
        scheduler: SchedulerMixin,
        plan: PromptPlan,
        request: GenerationRequest,
        generators: list[torch.Generator],
        arguments: dict[str, Any],
        progress: _Progress,
        output_type: str,
    ) -> tuple[list[Any], float]:
        """One diffusers call with this job's scheduler, conditioning and padding."""
        pipe.scheduler = scheduler
        count = request.image_count
        counter = StepCounter(progress.pass_steps(request, "strength" in arguments))
        guided = GuidedUNet(
            plan,
            self.model.family.prompt_encoder(pipe, request.clip_skip),
            counter,
            images=count,
            exact=self.exact_batches,
        )
        first = guided.conditioning()  # diffusers checks shapes; the wrapper picks per step
        call: dict[str, Any] = {
            "prompt_embeds": first.parts[0].repeat(count, 1, 1),
            "negative_prompt_embeds": first.negative.repeat(count, 1, 1),
            "num_inference_steps": request.steps,
            "guidance_scale": request.cfg_scale,
            "generator": generators,
            "output_type": output_type,
            "callback_on_step_end": progress.callback(counter),
            **arguments,
        }
        exact = self.exact_batches
        with (
            circular_padding((pipe.unet, pipe.vae), enabled=request.tiling),
            guided.wrapping(pipe.unet),
            vae_slicing(pipe.vae, enabled=exact),
        ):
            started = time.perf_counter()
            output = pipe(**call)
            elapsed = time.perf_counter() - started
        if output_type == "latent":
            return list(output.images.split(1)), elapsed
        return list(output.images), elapsed

    def _varied_noise(
        self, pipe: DiffusionPipeline, request: GenerationRequest, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """The seeds' noise, drawn from the job's own generators as diffusers would draw it,
        blended towards the variation seeds' noise."""
        assert request.width is not None and request.height is not None
        factor = pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels, request.height // factor, request.width // factor)
        device, dtype = pipe._execution_device, pipe.unet.dtype
        base = randn_tensor(
            (request.image_count, *shape), generator=generators, device=device, dtype=dtype
        )
        varied = seeded_noise(request.variation_seeds, shape, device, dtype)  # type: ignore[arg-type]
        return slerp(request.variation_strength, base, varied)

    def _infotext(
        self,
        request: GenerationRequest,
        spec: SamplerSpec,
        seed: int,
        index: int,
        loras: ActiveLoras,
    ) -> Infotext:
        return Infotext(
            prompt=request.prompt,
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
            extra=_hires_keys(request.hires) + _lora_keys(loras),
            version=f"Easel {easel_version()}",
        )

    def _cancelled(self, request: GenerationRequest, started: float) -> GenerationResult:
        self._free_memory()
        return GenerationResult(
            status=ResultStatus.CANCELLED,
            request=request,
            model_name=self.model.source.name,
            model_hash=self.model.short_hash,
            timings=Timings(total_s=time.perf_counter() - started, diffusion_s=0.0),
        )

    def _free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def open_init_image(reference: ImageRef) -> Image.Image:
    try:
        return reference.open()
    except (OSError, ValueError) as error:
        where = reference.path or "the uploaded file"
        raise InvalidRequestError(
            f"The init image ({where}) could not be read as an image."
        ) from error


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


def _lora_keys(loras: ActiveLoras) -> tuple[tuple[str, str], ...]:
    hashes = loras.hashes_infotext()
    return (("Lora hashes", hashes),) if hashes else ()


def _visible_steps(request: GenerationRequest) -> int:
    """The steps a user asked for: img2img runs only the last `strength` share of them."""
    if request.is_img2img:
        return min(int(request.steps * request.denoising_strength), request.steps)
    return request.steps


def _total_steps(request: GenerationRequest) -> int:
    """Every step the job runs, a hires fix's second pass included."""
    total = _visible_steps(request)
    if request.hires is not None:
        steps = request.hires.steps or request.steps
        total += min(int(steps * request.hires.denoising_strength), steps)
    return total


class _Progress:
    """Progress over the whole job in the user's steps, and cancellation, for each pass.

    Second-order samplers (Heun, DPM2) call the UNet about twice per step and PLMS once
    more, so diffusers' own count would overshoot; the count is mapped back to steps.
    """

    def __init__(
        self,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None,
        total: int,
    ) -> None:
        self.on_progress = on_progress
        self.cancel = cancel
        self.total = total
        self.done_before = 0  # steps of the passes already finished
        self.shown = 0

    def pass_steps(self, request: GenerationRequest, img2img: bool) -> int:
        if img2img:
            return min(int(request.steps * request.denoising_strength), request.steps)
        return request.steps

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
                self.on_progress(ProgressEvent(step=step, total=self.total))
            self.shown = max(self.shown, step)
            if self.cancel is not None and self.cancel.is_set():
                raise _Cancelled
            return tensors

        return step_end
