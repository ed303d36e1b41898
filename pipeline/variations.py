"""Midjourney's buttons as requests: reroll, subtle variation (V-subtle) and strong variation.

Each keeps the original request's size, sampler, steps, CFG, clip skip and tiling.
"""

from __future__ import annotations

import math
from dataclasses import replace

from PIL import Image

from pipeline.images import Infotext
from pipeline.lora_names import parse_lora_hashes
from pipeline.prompts.extra_networks import extract_loras
from pipeline.request import RANDOM_SEED, GenerationRequest, ImageRef, LoraUse
from pipeline.validation import batch_seeds

SUBTLE_STRENGTH = 0.25
STRONG_DENOISING = 0.65


def reroll(request: GenerationRequest) -> GenerationRequest:
    """The same request with new random seeds."""
    return replace(request, seeds=batch_seeds(RANDOM_SEED, request.image_count))


def subtle_variation(
    request: GenerationRequest,
    index: int,
    count: int = 4,
    strength: float = SUBTLE_STRENGTH,
    variation_seed: int = RANDOM_SEED,
) -> GenerationRequest:
    """`count` images that keep image `index`'s seed and blend in variation seeds (A1111)."""
    seed = request.seeds[index]
    return replace(
        request,
        seeds=(seed,) * count,
        variation_seeds=batch_seeds(variation_seed, count),
        variation_strength=strength,
    )


def strong_variation(
    request: GenerationRequest,
    image: Image.Image | ImageRef,
    count: int = 4,
    denoising_strength: float = STRONG_DENOISING,
    seed: int = RANDOM_SEED,
) -> GenerationRequest:
    """img2img from the chosen image with the same prompt and new seeds. An `ImageRef` (a
    file the worker can read) is kept as it is; a PIL image travels as PNG bytes."""
    reference = image if isinstance(image, ImageRef) else ImageRef.from_image(image)
    width, height = image.size() if isinstance(image, ImageRef) else image.size
    return replace(
        request,
        seeds=batch_seeds(seed, count),
        init_image=reference,
        denoising_strength=denoising_strength,
        width=request.width or width,
        height=request.height or height,
        variation_seeds=(),
        variation_strength=0.0,
    )


def request_from_infotext(info: Infotext) -> GenerationRequest:
    """The request that made an image, read back from its A1111 parameters.

    Its LoRAs come back through the `<lora:…>` tags of the prompt; a LoRA that `Lora hashes`
    names without a tag (images from before tags were written) comes back at weight 1.
    """
    sampler = info.sampler or "Euler a"
    if info.schedule_type and info.schedule_type.lower() != "automatic":
        sampler = f"{sampler} {info.schedule_type}"
    return GenerationRequest(
        prompt=info.prompt,
        negative_prompt=info.negative_prompt,
        width=info.width,
        height=info.height,
        steps=info.steps or 20,
        cfg_scale=info.cfg_scale if info.cfg_scale is not None else 7.0,
        sampler=sampler,
        seeds=(info.seed if info.seed is not None else RANDOM_SEED,),
        tiling=info.tiling,
        clip_skip=info.clip_skip or 1,
        loras=_untagged_loras(info),
    )


def _untagged_loras(info: Infotext) -> tuple[LoraUse, ...]:
    hashes = dict(info.extra).get("Lora hashes")
    if not hashes:
        return ()
    _, tags = extract_loras(info.prompt)
    tagged = {tag.name for tag in tags}
    return tuple(LoraUse(name) for name in parse_lora_hashes(hashes) if name not in tagged)


def detail_pass(
    request: GenerationRequest, upscaled: Image.Image, denoising_strength: float
) -> GenerationRequest:
    """A1111's "SD upscale" detail pass: img2img of the upscaled image at a low strength,
    with the original prompt and seed (and enough steps that at least one runs)."""
    width, height = upscaled.size
    return replace(
        request,
        steps=max(request.steps, math.ceil(1 / denoising_strength)),
        seeds=request.seeds[:1],
        init_image=ImageRef.from_image(upscaled),
        denoising_strength=denoising_strength,
        width=width,
        height=height,
        variation_seeds=(),
        variation_strength=0.0,
        hires=None,
    )
