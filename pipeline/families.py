"""Model families and what differs between them.

Everything family-specific (the pipeline classes, the shipped configs, the tokenizer's
padding, how text becomes conditioning) sits behind `ModelFamily`, so a new family such as SDXL is a
new entry here plus its own text encoding, not a rewrite of the engine.

Importing this module imports neither torch nor diffusers: checking a job before it is queued
needs a family's configs and prompt chunking only (pipeline/preparation.py). The pipeline
classes and the prompt encoder are imported when a checkpoint is loaded or run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.prompts.chunking import PromptChunker
from pipeline.tokenizer import EOS, OPEN_CLIP_PAD

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from transformers import PreTrainedTokenizerBase

    from pipeline.prompts.encoding import Conditioner


def _clip_prompt_encoder(pipe: DiffusionPipeline, clip_skip: int) -> Conditioner:
    from pipeline.prompts.encoding import PromptEncoder

    return PromptEncoder(pipe, clip_skip)


def _xl_prompt_encoder(pipe: DiffusionPipeline, clip_skip: int) -> Conditioner:
    from pipeline.prompts.encoding_xl import XLPromptEncoder

    return XLPromptEncoder(pipe, clip_skip)


@dataclass(frozen=True)
class ModelFamily:
    id: str
    label: str
    # diffusers' text-to-image, img2img and inpainting classes, by name
    pipeline_classes: tuple[str, str, str]
    pad_token: str
    config_folder: str  # under pipeline/configs/
    # (pipeline, clip skip) -> the encoder of one job's prompts
    prompt_encoder: Callable[[DiffusionPipeline, int], Conditioner]
    # tokenizer -> what cuts prompts into the chunks that encoder encodes (no weights needed)
    prompt_chunker: Callable[[PreTrainedTokenizerBase], PromptChunker] = PromptChunker
    # What its pipelines are built with besides their components (SD's: no safety checker).
    pipeline_options: tuple[tuple[str, object], ...] = (
        ("safety_checker", None),
        ("feature_extractor", None),
        ("requires_safety_checker", False),
    )
    latent_space: str = "sd"  # its VAE's latents, for previews (pipeline/previews.py)
    vae_overflows_in_fp16: bool = False  # SDXL's: a fixed VAE or an fp32 retry (pipeline/vae.py)

    @property
    def txt2img_class(self) -> type[DiffusionPipeline]:
        return _diffusers_class(self.pipeline_classes[0])

    @property
    def img2img_class(self) -> type[DiffusionPipeline]:
        return _diffusers_class(self.pipeline_classes[1])

    @property
    def inpaint_class(self) -> type[DiffusionPipeline]:
        return _diffusers_class(self.pipeline_classes[2])


def _diffusers_class(name: str) -> type[DiffusionPipeline]:
    import diffusers

    return getattr(diffusers, name)


SD1 = ModelFamily(
    id="sd1",
    label="SD 1.x",
    pipeline_classes=(
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    ),
    pad_token=EOS,
    config_folder="sd1",
    prompt_encoder=_clip_prompt_encoder,
)
SD2 = ModelFamily(
    id="sd2",
    label="SD 2.x",
    pipeline_classes=(
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    ),
    pad_token=OPEN_CLIP_PAD,
    config_folder="sd2",
    prompt_encoder=_clip_prompt_encoder,
)
SDXL = ModelFamily(
    id="sdxl",
    label="SDXL",
    pipeline_classes=(
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    ),
    pad_token=EOS,  # the first tokenizer's; the second (OpenCLIP) pads with "!"
    config_folder="sdxl",
    prompt_encoder=_xl_prompt_encoder,
    pipeline_options=(),
    latent_space="sdxl",
    vae_overflows_in_fp16=True,
)
