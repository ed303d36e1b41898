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

from pipeline.errors import ModelLoadError
from pipeline.prompts.encoding import PromptEncoder
from pipeline.tokenizer import EOS, OPEN_CLIP_PAD


@dataclass(frozen=True)
class ModelFamily:
    id: str
    label: str
    txt2img_class: type[DiffusionPipeline]
    img2img_class: type[DiffusionPipeline]
    pad_token: str
    config_folder: str  # under pipeline/configs/
    # (pipeline, clip skip) -> the encoder of one job's prompts
    prompt_encoder: Callable[[DiffusionPipeline, int], PromptEncoder]


SD1 = ModelFamily(
    id="sd1",
    label="SD 1.x",
    txt2img_class=StableDiffusionPipeline,
    img2img_class=StableDiffusionImg2ImgPipeline,
    pad_token=EOS,
    config_folder="sd1",
    prompt_encoder=PromptEncoder,
)
SD2 = ModelFamily(
    id="sd2",
    label="SD 2.x",
    txt2img_class=StableDiffusionPipeline,
    img2img_class=StableDiffusionImg2ImgPipeline,
    pad_token=OPEN_CLIP_PAD,
    config_folder="sd2",
    prompt_encoder=PromptEncoder,
)
NOT_YET_SUPPORTED = {"sdxl": "SDXL"}


def unsupported(family_id: str, where: str) -> ModelLoadError:
    label = NOT_YET_SUPPORTED.get(family_id, family_id)
    return ModelLoadError(
        f"{where} is an {label} model; this version of Easel runs SD 1.x and SD 2.x checkpoints."
    )
