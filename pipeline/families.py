"""Model families and what differs between them.

Everything family-specific (the pipeline classes, the shipped configs, the tokenizer's
padding, how text becomes conditioning) sits behind `ModelFamily`, so a new family such as SDXL is a
new entry here plus its own text encoding, not a rewrite of the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)

from pipeline.conditioning import PromptEmbeddings, encode_prompts
from pipeline.errors import ModelLoadError
from pipeline.tokenizer import EOS, OPEN_CLIP_PAD


@dataclass(frozen=True)
class ModelFamily:
    id: str
    label: str
    txt2img_class: type[DiffusionPipeline]
    img2img_class: type[DiffusionPipeline]
    pad_token: str
    config_folder: str  # under pipeline/configs/
    # (pipeline, prompt, negative prompt, image count, clip skip) -> conditioning
    encode_prompts: Callable[[DiffusionPipeline, str, str, int, int], PromptEmbeddings]


SD1 = ModelFamily(
    id="sd1",
    label="SD 1.x",
    txt2img_class=StableDiffusionPipeline,
    img2img_class=StableDiffusionImg2ImgPipeline,
    pad_token=EOS,
    config_folder="sd1",
    encode_prompts=encode_prompts,
)
SD2 = ModelFamily(
    id="sd2",
    label="SD 2.x",
    txt2img_class=StableDiffusionPipeline,
    img2img_class=StableDiffusionImg2ImgPipeline,
    pad_token=OPEN_CLIP_PAD,
    config_folder="sd2",
    encode_prompts=encode_prompts,
)
NOT_YET_SUPPORTED = {"sdxl": "SDXL"}


def unsupported(family_id: str, where: str) -> ModelLoadError:
    label = NOT_YET_SUPPORTED.get(family_id, family_id)
    return ModelLoadError(
        f"{where} is an {label} model; this version of Easel runs SD 1.x and SD 2.x checkpoints."
    )
