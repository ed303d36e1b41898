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
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from pipeline.errors import GenerationOutOfMemory, InvalidRequestError
from pipeline.guidance import GuidedUNet, StepCounter, vae_slicing
from pipeline.images import Infotext
from pipeline.loading import LoadedModel
from pipeline.noise import seeded_noise, slerp
from pipeline.prompts.encoding import max_clip_skip
from pipeline.prompts.plan import PromptPlan, plan_prompt
from pipeline.request import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ImageRef,
    ProgressEvent,
    ResultStatus,
    Timings,
)
from pipeline.samplers import SamplerSpec, make_scheduler, resolve_sampler
from pipeline.tiling import circular_padding
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


def easel_version() -> str:
    try:
        return version("easel")
    except PackageNotFoundError:
        return "dev"


class Engine:
    def __init__(
        self, model: LoadedModel, limits: Limits | None = None, exact_batches: bool = True
    ) -> None:
        """`exact_batches`: image i of a batch is bit-identical to seed i alone (see batching)."""
        self.model = model
        self.limits = limits or Limits()
        self.exact_batches = exact_batches
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
        if plan.loras:
            names = ", ".join(tag.name for tag in plan.loras)
            raise InvalidRequestError(
                f"The prompt asks for LoRA {names} with a <lora:…> tag, but this version of "
                "Easel cannot apply LoRAs yet; remove the tag."
            )
        return PreparedJob(
            request=resolved.request,
            notes=resolved.notes,
            scheduler=self._scheduler_for(spec, resolved.request.steps),
            sampler=spec,
            init_image=init,
            prompt=plan,
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
                    infotext=self._infotext(resolved, job.sampler, seed, index),
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
        pipe = self._img2img if request.is_img2img else self._txt2img
        pipe.scheduler = job.scheduler
        count = request.image_count
        counter = StepCounter(_visible_steps(request))
        guided = GuidedUNet(
            job.prompt,
            self.model.family.prompt_encoder(pipe, request.clip_skip),
            counter,
            images=count,
            exact=self.exact_batches,
        )
        first = guided.conditioning()  # diffusers checks shapes; the wrapper picks per step
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]
        arguments: dict[str, Any] = {
            "prompt_embeds": first.parts[0].repeat(count, 1, 1),
            "negative_prompt_embeds": first.negative.repeat(count, 1, 1),
            "num_inference_steps": request.steps,
            "guidance_scale": request.cfg_scale,
            "generator": generators,
            "output_type": "pil",
            "callback_on_step_end": _step_callback(on_progress, cancel, counter),
        }
        if request.variation_seeds:
            arguments["latents"] = self._varied_noise(pipe, request, generators)
        if job.init_image is not None:
            assert request.width is not None and request.height is not None
            init = job.init_image.resize((request.width, request.height), Image.Resampling.LANCZOS)
            arguments.update(image=init, strength=request.denoising_strength)
        else:
            arguments.update(width=request.width, height=request.height)
        exact = self.exact_batches
        with (
            circular_padding((pipe.unet, pipe.vae), enabled=request.tiling),
            guided.wrapping(pipe.unet),
            vae_slicing(pipe.vae, enabled=exact),
        ):
            started = time.perf_counter()
            output = pipe(**arguments)
            diffusion_s = time.perf_counter() - started
        return list(output.images), diffusion_s

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
        self, request: GenerationRequest, spec: SamplerSpec, seed: int, index: int
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
            denoising_strength=request.denoising_strength if request.is_img2img else None,
            clip_skip=request.clip_skip if request.clip_skip > 1 else None,  # A1111 omits 1
            tiling=request.tiling,
            rng="CPU",  # noise is drawn on the CPU, so seeds match across devices
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


def _visible_steps(request: GenerationRequest) -> int:
    """The steps a user asked for: img2img runs only the last `strength` share of them."""
    if request.is_img2img:
        return min(int(request.steps * request.denoising_strength), request.steps)
    return request.steps


def _step_callback(
    on_progress: ProgressCallback | None, cancel: threading.Event | None, counter: StepCounter
) -> Callable[..., dict[str, Any]]:
    """Advances the prompt schedule and reports progress in the user's steps: second-order
    samplers (Heun, DPM2) call the UNet about twice per step and PLMS once more."""
    shown = 0

    def callback(
        pipe: DiffusionPipeline, index: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        nonlocal shown
        counter.advance(pipe.num_timesteps)
        visible = counter.steps
        step = min(visible, math.ceil((index + 1) * visible / pipe.num_timesteps))
        if on_progress is not None and step > shown:
            on_progress(ProgressEvent(step=step, total=visible))
        shown = max(shown, step)
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        return tensors

    return callback
