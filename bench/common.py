"""What the benchmarks share: random-weight models of a few shapes, loaded as users load
theirs, and a quiet diffusers."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from pipeline.device import DeviceChoice
from pipeline.loading import HashCache, LoadedModel, ModelSource, SourceKind, load_model
from tests.tiny_models import MID, TINY, build_random_pipeline

SHAPES = {"tiny": TINY, "mid": MID}


def quiet_diffusers() -> None:
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def synchronize() -> None:
    """Wait for the GPU, so that a timer measures the work and not its launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load_shape(name: str, device: DeviceChoice, scratch: Path) -> LoadedModel:
    """A random SD 1.x model of shape `name` ("tiny", "mid"), saved and loaded from disk."""
    folder = scratch / name
    build_random_pipeline("sd1", SHAPES[name]).save_pretrained(folder)
    source = ModelSource(name, SourceKind.DIFFUSERS_FOLDER, str(folder))
    return load_model(source, device, scratch, HashCache(scratch / "hashes.json"))
