"""What the benchmarks share: random-weight models of a few shapes, loaded as users load
theirs, and a quiet diffusers."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from pipeline.device import DeviceChoice
from pipeline.loading import HashCache, LoadedModel, ModelSource, SourceKind, load_model
from tests.tiny_models import MID, TINY, build_random_pipeline, build_random_xl_pipeline

SHAPES = {"tiny": TINY, "mid": MID}
XL_SHAPES = ("tiny", "full")  # full: SDXL base's own configs, random weights (2.6 B in the UNet)


def quiet_diffusers() -> None:
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def synchronize() -> None:
    """Wait for the GPU, so that a timer measures the work and not its launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load_shape(name: str, device: DeviceChoice, scratch: Path, family: str = "sd1") -> LoadedModel:
    """A random model of shape `name` ("tiny", "mid"; for SDXL "tiny" or "full"), saved and
    loaded from disk."""
    folder = scratch / name
    if family == "sdxl":
        pipe = build_random_xl_pipeline() if name == "tiny" else _full_size_xl()
    else:
        pipe = build_random_pipeline("sd1", SHAPES[name])
    pipe.save_pretrained(folder)
    source = ModelSource(name, SourceKind.DIFFUSERS_FOLDER, str(folder))
    return load_model(source, device, scratch, HashCache(scratch / "hashes.json"))


def _full_size_xl() -> object:
    """SDXL base's architecture from the configs Easel ships, with random weights."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.checkpoints import shipped_config
    from pipeline.families import SDXL
    from pipeline.tokenizer import OPEN_CLIP_PAD, build_clip_tokenizer

    def config(part: str, name: str = "config.json") -> dict:
        return shipped_config(SDXL, part, name)

    torch.manual_seed(0)
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_config(config("vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig(**config("text_encoder"))),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2"))),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(OPEN_CLIP_PAD),
        unet=UNet2DConditionModel.from_config(config("unet")),
        scheduler=EulerDiscreteScheduler.from_config(config("scheduler", "scheduler_config.json")),
    )
