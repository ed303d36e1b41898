"""Checking a job and fixing its open values (size, seeds) before it is queued, the same with
the weights loaded or without them.

`prepare_job` holds every check of a generation request that depends on the checkpoint, in
one place, against its `ModelTraits`: the engine reads them off its loaded pipeline, and the
bot reads them from the checkpoint's config and tokenizer files when GPU workers on other
machines hold the weights (pipeline/model_traits.py). Either way a request gets the same
answer: the same resolved request, notes, cost and batch key, or the same error.

Nothing here imports torch or diffusers, except that building the job's scheduler (the last
check: can this sampler run this many steps?) imports diffusers' scheduler classes the first
time it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from pipeline.control_names import resolve_control
from pipeline.errors import InvalidRequestError
from pipeline.face_steps import check_codeformer_weight, resolve_face_restorer
from pipeline.families import ModelFamily
from pipeline.images import check_pixels
from pipeline.lora_names import requested_loras
from pipeline.prompts.chunking import PromptChunker
from pipeline.prompts.plan import PromptPlan, plan_prompt
from pipeline.request import LATENT_UPSCALER, GenerationRequest, ImageRef, LoraUse, UpscaleRequest
from pipeline.sampler_names import resolve_sampler_name
from pipeline.upscale_names import LANCZOS, check_upscale_size, resolve_upscaler, validate_scale
from pipeline.validation import Limits, check_input_size, check_prompt_plan, resolve_request

if TYPE_CHECKING:
    from diffusers import SchedulerMixin
    from transformers import PreTrainedTokenizerBase

    from pipeline.samplers import SamplerSpec


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
    # UNet rows per step relative to one plain image (one prompt, one negative, one chunk of
    # 75 tokens): images x (AND parts + negative) x longest chunk count / 2. Size, steps and
    # a hires pass are not part of it: it is what the prompt multiplies the UNet's work by.
    cost: float = 1.0
    embeds_guidance: bool = False  # the UNet takes the CFG scale as an input (LCM-distilled)
    mask_image: Image.Image | None = None  # inpainting's, grayscale: white is repainted
    control_image: Image.Image | None = None  # the ControlNet's image, before its preprocessor


@dataclass(frozen=True)
class ModelTraits:
    """What checking a job needs to know of a checkpoint, and nothing that needs its weights."""

    family: ModelFamily
    native_size: int  # the side of the square the UNet was trained at (512 for SD 1.5)
    max_clip_skip: int  # the text encoder's layers
    embeds_guidance: bool  # the UNet takes the CFG scale as an input (LCM-distilled)
    tokenizer: PreTrainedTokenizerBase = field(compare=False, repr=False)
    # The pipeline's scheduler config, as its loaded scheduler holds it. A call, because where
    # only the file is at hand, turning it into that takes diffusers (imported when first used).
    scheduler_config: Callable[[], Mapping[str, Any]] = field(compare=False, repr=False)
    # The width of the text the UNet's cross-attention reads (which ControlNets fit).
    text_width: int = 768
    inpainting: bool = False  # an inpainting checkpoint: it fills masks, nothing else

    def chunker(self) -> PromptChunker:
        """What counts a prompt's 75-token chunks, as this family's encoder cuts them."""
        return self.family.prompt_chunker(self.tokenizer)


def prepare_job(
    request: GenerationRequest,
    traits: ModelTraits,
    limits: Limits,
    models_dir: Path,
    find_lora: Callable[[str], object],
) -> PreparedJob:
    """Check `request` against a checkpoint with `traits` and fix its size and seeds; errors
    are clear InvalidRequestErrors, in the order a user would fix them. `models_dir` holds the
    upscalers a hires fix may name; `find_lora(name)` raises for a LoRA that cannot be used."""
    sampler = resolve_sampler_name(request.sampler, request.schedule_type)
    init = (
        open_init_image(request.init_image, limits.max_input_pixels)
        if request.init_image is not None
        else None
    )
    mask = _open_mask(request, limits) if request.mask_image is not None else None
    if request.face_restoration is not None:
        check_codeformer_weight(request.codeformer_weight)
        restorer = resolve_face_restorer(request.face_restoration, models_dir)
        request = replace(request, face_restoration=restorer.name)
    control_image = None
    if request.control is not None:
        control = resolve_control(request.control, models_dir, traits.text_width)
        control_image = open_init_image(control.image, limits.max_input_pixels, CONTROL_IMAGE)
        request = replace(request, control=control)
    layers = traits.max_clip_skip
    if request.clip_skip > layers:
        raise InvalidRequestError(
            f"Clip skip must be between 1 and {layers} for this model, not {request.clip_skip}.",
            ko=f"이 모델의 Clip skip은 1에서 {layers} 사이여야 합니다. 입력: {request.clip_skip}",
        )
    resolved = resolve_request(request, limits, traits.native_size, init)
    plan = plan_prompt(request.prompt, request.negative_prompt, visible_steps(resolved.request))
    check_prompt_plan(plan, limits)
    chunks = check_prompt_length(plan, traits.chunker(), limits)
    hires = resolved.request.hires
    if hires is not None and hires.upscaler not in (LATENT_UPSCALER, LANCZOS):
        resolve_upscaler(hires.upscaler, models_dir)
    loras = requested_loras(request)
    for use in loras:
        find_lora(use.name)  # an unknown name is a clear error before the queue
    # Last, and only here: the scheduler classes come with diffusers (and torch).
    from pipeline.samplers import resolve_sampler, scheduler_for_steps

    spec = resolve_sampler(sampler.name)
    return PreparedJob(
        request=resolved.request,
        notes=resolved.notes,
        scheduler=scheduler_for_steps(spec, traits.scheduler_config(), resolved.request.steps),
        sampler=spec,
        init_image=init,
        prompt=plan,
        loras=loras,
        cost=job_cost(resolved.request, len(plan.parts), chunks),
        embeds_guidance=traits.embeds_guidance,
        mask_image=mask,
        control_image=control_image,
    )


def _open_mask(request: GenerationRequest, limits: Limits) -> Image.Image:
    """An inpainting mask, which needs the image it masks."""
    assert request.mask_image is not None
    if request.init_image is None:
        raise InvalidRequestError(
            "An inpainting mask needs the image it masks.",
            ko="인페인팅 마스크에는 가릴 원본 이미지가 필요합니다.",
        )
    return open_init_image(request.mask_image, limits.max_input_pixels, MASK_IMAGE).convert("L")


def check_before_load(request: GenerationRequest, models_dir: Path, limits: Limits) -> None:
    """What can be checked of a job before any checkpoint is loaded (`easel imagine` loads
    one only after): the ControlNet's names and image, and the face restorer's name."""
    if request.control is not None:
        resolve_control(request.control, models_dir, text_width=None)
        open_init_image(request.control.image, limits.max_input_pixels, CONTROL_IMAGE)
    if request.face_restoration is not None:
        check_codeformer_weight(request.codeformer_weight)
        resolve_face_restorer(request.face_restoration, models_dir)


def check_prompt_length(plan: PromptPlan, chunker: PromptChunker, limits: Limits) -> int:
    """The most 75-token chunks any text of the plan needs; refused above the limit."""
    most = limits.max_prompt_chunks
    longest = 1
    for text in plan.texts():
        chunks = len(chunker.chunks(text))
        if chunks > most:
            raise InvalidRequestError(
                f"The prompt needs {chunks} chunks of 75 tokens (BREAK starts one too); "
                f"the limit is {most}. Shorten it.",
                ko=f"프롬프트가 75토큰 단위 {chunks}개를 차지합니다(BREAK도 새 단위를 "
                f"시작합니다). 최대 {most}개까지 가능하니 줄여 주세요.",
            )
        longest = max(longest, chunks)
    return longest


def job_cost(request: GenerationRequest, parts: int, chunks: int) -> float:
    """UNet rows per step relative to one plain image; see PreparedJob.cost."""
    return request.image_count * (parts + 1) * chunks / 2


def visible_steps(request: GenerationRequest) -> int:
    """The steps a user asked for: img2img runs only the last `strength` share of them."""
    return pass_steps(request.steps, request.denoising_strength if request.is_img2img else None)


def pass_steps(steps: int, strength: float | None) -> int:
    """The steps a pass runs: img2img (strength given) only the last `strength` share."""
    if strength is not None:
        return min(int(steps * strength), steps)
    return steps


INIT_IMAGE = ("The init image", "초기 이미지")
CONTROL_IMAGE = ("The control image", "컨트롤 이미지")
MASK_IMAGE = ("The mask", "마스크")


def open_init_image(
    reference: ImageRef, max_pixels: int, what: tuple[str, str] = INIT_IMAGE
) -> Image.Image:
    """An input image (`what` it is, in English and Korean), its size checked from the
    header before its pixels are decoded."""
    where = Path(reference.path).name if reference.path is not None else "the uploaded file"
    where_ko = Path(reference.path).name if reference.path is not None else "업로드한 파일"
    name, name_ko = f"{what[0]} ({where})", f"{what[1]}({where_ko})"
    unreadable = InvalidRequestError(
        f"{name} could not be read as an image.", ko=f"{name_ko}를 이미지로 읽을 수 없습니다."
    )
    try:
        size = reference.size()
    except Exception as error:  # Pillow raises many types on data that is not an image
        raise unreadable from error
    check_pixels(size, max_pixels, name, name_ko)
    try:
        return reference.open()
    except (OSError, ValueError) as error:
        raise unreadable from error


# ----- upscales


def check_upscale_request(work: UpscaleRequest, limits: Limits) -> None:
    """The checks on an upscale before it is queued: its factor, and its image's size from
    the image's header (no model: the upscaler is looked up when it runs)."""
    validate_scale(work.scale)
    check_upscale_source(work)
    size = _upscale_source_size(work)
    check_input_size(size, limits, "The image to upscale", "업스케일할 이미지")
    check_upscale_size(size, work.scale, limits.max_output_pixels)


def check_upscale_source(work: UpscaleRequest) -> None:
    path = work.image.path
    if path is not None and not Path(path).is_file():
        raise InvalidRequestError(
            f"The image to upscale ({Path(path).name}) is gone.",
            ko=f"업스케일할 이미지({Path(path).name})가 더 이상 없습니다.",
        )


def _upscale_source_size(work: UpscaleRequest) -> tuple[int, int]:
    """The size of the image to upscale, from its header."""
    try:
        return work.image.size()
    except Exception as error:  # Pillow raises many types on data that is not an image
        raise InvalidRequestError(
            "The image to upscale could not be read as an image.",
            ko="업스케일할 이미지를 이미지로 읽을 수 없습니다.",
        ) from error
