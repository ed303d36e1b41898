"""Limits on what one request may ask for, and resolving its open values (size, seeds)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace

from PIL import Image

from pipeline.errors import InvalidRequestError
from pipeline.images import check_pixels
from pipeline.prompts.extra_networks import MAX_LORA_WEIGHT, MIN_LORA_WEIGHT, lora_weight_in_range
from pipeline.prompts.plan import PromptPlan
from pipeline.request import RANDOM_SEED, GenerationRequest

MAX_SEED = 2**32 - 1
SIZE_STEP = 8
MIN_SIDE = 64


@dataclass(frozen=True)
class Limits:
    max_area: int = 1024 * 1024
    min_steps: int = 1
    max_steps: int = 100
    max_images: int = 4
    min_cfg: float = 1.0
    max_cfg: float = 30.0
    max_clip_skip: int = 12
    max_prompt_chunks: int = 8  # of 75 tokens: each one costs a text-encoder pass and UNet time
    # Composable `AND` parts of a prompt: each one is another UNet row per image and step.
    max_and_parts: int = 8
    # Pixels of an image given as input (init image, upscale source), read from its header
    # before any pixel is decoded; and of an image made by enlarging one (an upscale).
    max_input_pixels: int = 4096 * 4096
    max_output_pixels: int = 4096 * 4096


@dataclass(frozen=True)
class ResolvedRequest:
    """A request with every open value fixed, and notes for the user about what changed."""

    request: GenerationRequest
    notes: tuple[str, ...] = ()


def resolve_request(
    request: GenerationRequest,
    limits: Limits,
    native_size: int,
    init_image: Image.Image | None = None,
) -> ResolvedRequest:
    check_ranges(request, limits)
    width, height, notes = _resolve_size(request, limits, native_size, init_image)
    seeds = tuple(_resolve_seed(seed) for seed in request.seeds)
    variation = tuple(_resolve_seed(seed) for seed in request.variation_seeds)
    resolved = replace(request, width=width, height=height, seeds=seeds, variation_seeds=variation)
    return ResolvedRequest(resolved, notes)


def check_ranges(request: GenerationRequest, limits: Limits) -> None:
    """The checks that need no model: steps, count, CFG, clip skip, seeds, strength."""
    if not limits.min_steps <= request.steps <= limits.max_steps:
        raise InvalidRequestError(
            f"Steps must be between {limits.min_steps} and {limits.max_steps}, "
            f"not {request.steps}.",
            ko=f"단계 수는 {limits.min_steps}에서 {limits.max_steps} 사이여야 합니다. "
            f"입력: {request.steps}",
        )
    if not 1 <= request.image_count <= limits.max_images:
        raise InvalidRequestError(
            f"A request makes 1 to {limits.max_images} images, not {request.image_count}.",
            ko=f"한 번에 1~{limits.max_images}장만 만들 수 있습니다. 입력: {request.image_count}",
        )
    if not limits.min_cfg <= request.cfg_scale <= limits.max_cfg:
        raise InvalidRequestError(
            f"CFG scale must be between {limits.min_cfg:g} and {limits.max_cfg:g}, "
            f"not {request.cfg_scale:g}.",
            ko=f"CFG 스케일은 {limits.min_cfg:g}에서 {limits.max_cfg:g} 사이여야 합니다. "
            f"입력: {request.cfg_scale:g}",
        )
    if not 1 <= request.clip_skip <= limits.max_clip_skip:
        raise InvalidRequestError(
            f"Clip skip must be between 1 and {limits.max_clip_skip}, not {request.clip_skip}.",
            ko=f"Clip skip은 1에서 {limits.max_clip_skip} 사이여야 합니다. "
            f"입력: {request.clip_skip}",
        )
    for seed in request.seeds:
        if not _is_random(seed) and not 0 <= seed <= MAX_SEED:
            raise InvalidRequestError(
                f"Seeds are -1 (random) or 0 to {MAX_SEED}, not {seed}.",
                ko=f"시드는 -1(무작위) 또는 0에서 {MAX_SEED} 사이여야 합니다. 입력: {seed}",
            )
    _check_lora_weights(request)
    _check_variation(request)
    _check_hires(request, limits)
    if request.is_img2img:
        if not 0.0 < request.denoising_strength <= 1.0:
            raise InvalidRequestError(
                "Denoising strength must be above 0 and at most 1, "
                f"not {request.denoising_strength:g}.",
                ko="디노이징 강도는 0보다 크고 1 이하여야 합니다. "
                f"입력: {request.denoising_strength:g}",
            )
        if int(request.steps * request.denoising_strength) < 1:
            raise InvalidRequestError(
                f"{request.steps} steps at denoising strength {request.denoising_strength:g} "
                "leave no step to run; raise the steps or the strength.",
                ko=f"{request.steps}단계를 디노이징 강도 {request.denoising_strength:g}로 "
                "실행하면 남는 단계가 없습니다. 단계 수나 강도를 높이세요.",
            )


def check_prompt_plan(plan: PromptPlan, limits: Limits) -> None:
    """The checks on a planned prompt: how many `AND` parts it has."""
    if len(plan.parts) > limits.max_and_parts:
        raise InvalidRequestError(
            f"The prompt has {len(plan.parts)} parts joined by AND; the limit is "
            f"{limits.max_and_parts}.",
            ko=f"프롬프트가 AND로 나뉜 부분이 {len(plan.parts)}개입니다. 최대 "
            f"{limits.max_and_parts}개까지 가능합니다.",
        )


def _check_lora_weights(request: GenerationRequest) -> None:
    for use in request.loras:
        for weight in (use.unet_weight, use.te_weight):
            if not lora_weight_in_range(weight):  # NaN is out of range too
                raise InvalidRequestError(
                    f"LoRA {use.name}: a weight must be from {MIN_LORA_WEIGHT:g} to "
                    f"{MAX_LORA_WEIGHT:g}, not {weight:g}.",
                    ko=f"LoRA {use.name}: 가중치는 {MIN_LORA_WEIGHT:g}에서 "
                    f"{MAX_LORA_WEIGHT:g} 사이여야 합니다. 입력: {weight:g}",
                )


def check_input_size(
    size: tuple[int, int], limits: Limits, what: str = "The image", what_ko: str = "이미지"
) -> None:
    """Refuse an input image larger than the operator's limit (from its header alone)."""
    check_pixels(size, limits.max_input_pixels, what, what_ko)


def check_output_size(
    size: tuple[int, int], limits: Limits, what: str = "The result", what_ko: str = "결과 이미지"
) -> None:
    """Refuse to make an image larger than the operator's output limit."""
    width, height = size
    if width * height > limits.max_output_pixels:
        raise InvalidRequestError(
            f"{what} would be {width}x{height} ({width * height:,} pixels); the limit is "
            f"{limits.max_output_pixels:,} pixels.",
            ko=f"{what_ko} 크기가 {width}x{height}({width * height:,}픽셀)이 됩니다. 최대 "
            f"{limits.max_output_pixels:,}픽셀까지 가능합니다.",
        )


def _check_hires(request: GenerationRequest, limits: Limits) -> None:
    hires = request.hires
    if hires is None:
        return
    if not 1.0 < hires.scale <= 4.0:
        raise InvalidRequestError(
            f"Hires scale must be above 1 and at most 4, not {hires.scale:g}.",
            ko=f"Hires 배율은 1보다 크고 4 이하여야 합니다. 입력: {hires.scale:g}",
        )
    if hires.steps is not None and not limits.min_steps <= hires.steps <= limits.max_steps:
        raise InvalidRequestError(
            f"Hires steps must be between {limits.min_steps} and {limits.max_steps}, "
            f"not {hires.steps}.",
            ko=f"Hires 단계 수는 {limits.min_steps}에서 {limits.max_steps} 사이여야 합니다. "
            f"입력: {hires.steps}",
        )
    if not 0.0 < hires.denoising_strength <= 1.0:
        raise InvalidRequestError(
            f"Hires denoising strength must be above 0 and at most 1, "
            f"not {hires.denoising_strength:g}.",
            ko="Hires 디노이징 강도는 0보다 크고 1 이하여야 합니다. "
            f"입력: {hires.denoising_strength:g}",
        )
    if request.is_img2img:
        raise InvalidRequestError(
            "Hires fix is for text-to-image; an init image cannot take it.",
            ko="Hires fix는 텍스트로 이미지를 만들 때만 쓸 수 있습니다. 초기 이미지와 함께 "
            "쓸 수 없습니다.",
        )
    hires_steps = hires.steps or request.steps
    if int(hires_steps * hires.denoising_strength) < 1:
        raise InvalidRequestError(
            f"The hires fix runs {hires_steps} steps at denoising strength "
            f"{hires.denoising_strength:g}, which leaves no step to run; use at least "
            f"{math.ceil(1 / hires.denoising_strength)} steps.",
            ko=f"Hires fix가 {hires_steps}단계를 디노이징 강도 "
            f"{hires.denoising_strength:g}로 실행하면 남는 단계가 없습니다. 최소 "
            f"{math.ceil(1 / hires.denoising_strength)}단계를 쓰세요.",
        )


def _check_variation(request: GenerationRequest) -> None:
    if not request.variation_seeds:
        return
    if len(request.variation_seeds) != request.image_count:
        raise InvalidRequestError(
            f"Give one variation seed per image: {request.image_count}, "
            f"not {len(request.variation_seeds)}.",
            ko=f"이미지마다 변형 시드를 하나씩 주세요: {request.image_count}개가 필요한데 "
            f"{len(request.variation_seeds)}개입니다.",
        )
    for seed in request.variation_seeds:
        if not _is_random(seed) and not 0 <= seed <= MAX_SEED:
            raise InvalidRequestError(
                f"Seeds are -1 (random) or 0 to {MAX_SEED}, not {seed}.",
                ko=f"시드는 -1(무작위) 또는 0에서 {MAX_SEED} 사이여야 합니다. 입력: {seed}",
            )
    if not 0.0 <= request.variation_strength <= 1.0:
        raise InvalidRequestError(
            f"Variation strength must be between 0 and 1, not {request.variation_strength:g}.",
            ko=f"변형 강도는 0에서 1 사이여야 합니다. 입력: {request.variation_strength:g}",
        )
    # An inpainting request at full strength (zoom out, pan) starts from noise too.
    starts_from_noise = request.is_inpaint and request.denoising_strength == 1.0
    if request.is_img2img and not starts_from_noise:
        raise InvalidRequestError(
            "Variation seeds blend text-to-image noise; an init image cannot take them.",
            ko="변형 시드는 텍스트로 이미지를 만들 때의 노이즈를 섞습니다. 초기 이미지와 함께 "
            "쓸 수 없습니다.",
        )


def _resolve_size(
    request: GenerationRequest,
    limits: Limits,
    native_size: int,
    init_image: Image.Image | None,
) -> tuple[int, int, tuple[str, ...]]:
    if request.width is not None and request.height is not None:
        asked = (request.width, request.height)
    elif init_image is not None and request.width is None and request.height is None:
        asked = _fit_area(init_image.size, limits.max_area)
    else:
        asked = (request.width or native_size, request.height or native_size)
    if min(asked) < 1:
        raise InvalidRequestError(
            f"Width and height must be positive, not {asked[0]}x{asked[1]}.",
            ko=f"너비와 높이는 양수여야 합니다. 입력: {asked[0]}x{asked[1]}",
        )
    width, height = (max(MIN_SIDE, _round_to_step(side)) for side in asked)
    if width * height > limits.max_area:
        raise InvalidRequestError(
            f"{width}x{height} is {width * height:,} pixels; the limit is "
            f"{limits.max_area:,} pixels per image (for example "
            f"{_square_side(limits.max_area)}x{_square_side(limits.max_area)}).",
            ko=f"{width}x{height}는 {width * height:,}픽셀입니다. 이미지 한 장은 최대 "
            f"{limits.max_area:,}픽셀까지 가능합니다(예: "
            f"{_square_side(limits.max_area)}x{_square_side(limits.max_area)}).",
        )
    if request.hires is not None:
        target = replace(request, width=width, height=height).hires_size()
        if target[0] * target[1] > limits.max_area:
            raise InvalidRequestError(
                f"Hires fix to {target[0]}x{target[1]} is {target[0] * target[1]:,} pixels; "
                f"the limit is {limits.max_area:,} pixels per image.",
                ko=f"Hires fix로 {target[0]}x{target[1]}로 키우면 "
                f"{target[0] * target[1]:,}픽셀입니다. 이미지 한 장은 최대 "
                f"{limits.max_area:,}픽셀까지 가능합니다.",
            )
    notes: tuple[str, ...] = ()
    if (width, height) != asked and request.width is not None:
        notes = (
            f"Size {asked[0]}x{asked[1]} was rounded to {width}x{height} "
            f"(sides are multiples of {SIZE_STEP}, at least {MIN_SIDE}).",
        )
    return width, height, notes


def _round_to_step(side: int) -> int:
    return max(SIZE_STEP, round(side / SIZE_STEP) * SIZE_STEP)


def _fit_area(size: tuple[int, int], max_area: int) -> tuple[int, int]:
    width, height = size
    if width * height <= max_area:
        return width, height
    scale = (max_area / (width * height)) ** 0.5
    return int(width * scale) // SIZE_STEP * SIZE_STEP, int(height * scale) // SIZE_STEP * SIZE_STEP


def _square_side(area: int) -> int:
    return int(area**0.5) // SIZE_STEP * SIZE_STEP


def _is_random(seed: int | None) -> bool:
    return seed is None or seed == RANDOM_SEED


def _resolve_seed(seed: int | None) -> int:
    if seed is not None and not _is_random(seed):
        return seed
    return secrets.randbelow(MAX_SEED + 1)


def batch_seeds(seed: int | None, count: int) -> tuple[int, ...]:
    """A1111's batch seeds: `seed`, `seed + 1`, ...; a random start when seed is -1."""
    start = _resolve_seed(seed)
    return tuple((start + index) % (MAX_SEED + 1) for index in range(count))
