"""Jobs as pipeline work: decoding a job's stored request, and the child jobs of buttons."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from bot.core.buttons import Action
from bot.core.messages import Key
from bot.store import JobKind, JobRecord
from pipeline.control_names import MODE_WORDS, NO_PREPROCESSOR
from pipeline.executors import Work
from pipeline.lora_names import lora_set, requested_loras
from pipeline.request import (
    CODEFORMER_WEIGHT,
    ControlMode,
    ControlUse,
    GenerationRequest,
    ImageRef,
    UpscaleRequest,
)
from pipeline.variations import reroll, strong_variation, subtle_variation

# How each kind of job is named in replies.
KIND_KEYS = {
    JobKind.IMAGINE: Key.KIND_IMAGINE,
    JobKind.UPSCALE: Key.KIND_UPSCALE,
    JobKind.VARY_SUBTLE: Key.KIND_VARY_SUBTLE,
    JobKind.VARY_STRONG: Key.KIND_VARY_STRONG,
    JobKind.REROLL: Key.KIND_REROLL,
    JobKind.REMIX: Key.KIND_REMIX,
    JobKind.ZOOM: Key.KIND_ZOOM,
    JobKind.PAN: Key.KIND_PAN,
}


def work_of(job: JobRecord) -> Work:
    if job.kind is JobKind.UPSCALE:
        return UpscaleRequest.from_json(job.request)
    return GenerationRequest.from_json(job.request)


def lora_signature(work: Work) -> str:
    """Which LoRAs (and weights) the work needs loaded; "" for none. The scheduler prefers
    batches whose LoRAs are already active."""
    if isinstance(work, UpscaleRequest):
        return ""
    loras = lora_set(requested_loras(work))
    if not loras:
        return ""
    return hashlib.sha256(repr(loras).encode()).hexdigest()[:16]


def lora_names(work: Work) -> tuple[str, ...]:
    """The names of the LoRAs the work needs loaded (weight 0 ones are not loaded)."""
    if isinstance(work, UpscaleRequest):
        return ()
    return tuple(sorted({use.name for use in requested_loras(work) if not use.is_zero}))


def with_model(work: Work, model: str | None) -> Work:
    """The work for the checkpoint `model` unless it already names one (a child of an image
    keeps the checkpoint its parent ran on)."""
    if work.model is not None or model is None:
        return work
    return replace(work, model=model)


def child_work(
    action: Action,
    parent: GenerationRequest,
    image_path: Path | None,
    count: int,
    upscaler: str | None,
    faces: tuple[str, float] | None = None,
) -> Work:
    """The work a button asks for, from the parent job's request and chosen image; `faces`:
    the presser's restore-faces setting, a step of U."""
    if action.kind is JobKind.REROLL:
        return reroll(parent)
    assert action.index is not None and image_path is not None
    if action.kind is JobKind.UPSCALE:
        # The detail pass runs on the checkpoint that made the image.
        image = ImageRef(path=str(image_path))
        restorer, weight = faces if faces is not None else (None, CODEFORMER_WEIGHT)
        return UpscaleRequest(
            image=image,
            scale=2,
            upscaler=upscaler,
            model=parent.model,
            face_restoration=restorer,
            codeformer_weight=weight,
        )
    if action.kind is JobKind.VARY_SUBTLE:  # a zoom out's or pan's too: its canvas stays
        return subtle_variation(parent, action.index, count)
    # The chosen image stays a file on disk: the job row keeps its path, not its pixels. A
    # zoom out's or pan's image is varied whole: its canvas mask stays with that job.
    whole = replace(parent, mask_image=None)
    return strong_variation(whole, ImageRef(path=str(image_path)), count)


def remix_line(request: GenerationRequest) -> str:
    """A request as one /imagine line to edit: its prompt (style words and <lora:> tags
    included) and the flags that reproduce its settings; seeds are left out, so the remix
    draws new ones. The same parser reads it back."""
    flags = []
    if request.negative_prompt:
        flags.append(f"--neg {_quoted(request.negative_prompt)}")
    if request.width is not None and request.height is not None:
        flags.append(f"--size {request.width}x{request.height}")
    flags.append(f"--steps {request.steps}")
    flags.append(f"--cfg {request.cfg_scale:g}")
    sampler = request.sampler
    if request.schedule_type and request.schedule_type.lower() not in sampler.lower():
        sampler = f"{sampler} {request.schedule_type}"
    flags.append(f"--sampler {_quoted(sampler)}")
    flags.append(f"--n {request.image_count}")
    if request.tiling:
        flags.append("--tile")
    if request.clip_skip != 1:
        flags.append(f"--clip-skip {request.clip_skip}")
    if request.hires is not None:
        flags.append(f"--hires {request.hires.scale:g}")
    flags.extend(f"--lora {lora.name}:{lora.unet_weight:g}" for lora in request.loras)
    if request.init_image is not None:
        flags.append(f"--strength {request.denoising_strength:g}")
    flags.extend(_control_flags(request.control))
    return " ".join([request.prompt.strip(), *flags])


def _control_flags(use: ControlUse | None) -> list[str]:
    """The --cn flags that give the same ControlNet again (its image stays with the remix)."""
    if use is None:
        return []
    name = use.preprocessor if use.preprocessor != NO_PREPROCESSOR else use.model
    flags = [f"--cn {name}:{use.weight:g}"]
    if use.guidance_start != 0.0:
        flags.append(f"--cn-start {use.guidance_start:g}")
    if use.guidance_end != 1.0:
        flags.append(f"--cn-end {use.guidance_end:g}")
    if use.mode is not ControlMode.BALANCED:
        flags.append(f"--cn-mode {MODE_WORDS[use.mode]}")
    if use.show:
        flags.append("--cn-show")
    return flags


def _quoted(text: str) -> str:
    return f'"{text}"' if any(char.isspace() for char in text) or text.startswith("-") else text


def prompt_preview(job: JobRecord, limit: int = 120) -> str:
    """The job's prompt, cut to `limit` characters for a chat line (for an upscale: which
    image of which job)."""
    if job.kind is JobKind.UPSCALE:
        if job.parent_id is None:  # an image from a chat message, not one of a grid's
            return "U"
        return f"U{(job.image_index or 0) + 1} #{job.parent_id}"
    prompt = getattr(work_of(job), "prompt", "") or ""
    return prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"
