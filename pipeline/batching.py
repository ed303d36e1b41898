"""Running a batch so that image i is bit-identical to generating seed i alone.

Matrix kernels on CPUs and GPUs pick their blocking by the number of rows, so a UNet call on
eight rows (four images, with and without the prompt) rounds differently from a call on two,
and pixels drift by a level here and there. In exact mode the UNet runs image by image inside
each step (rows [i, N+i] are exactly what a single-image call sees) and the VAE decodes one
image at a time; the batch still shares prompt encoding, scheduling and the Python loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def image_by_image(unet: nn.Module, images: int, enabled: bool = True) -> Iterator[None]:
    """Split every UNet call of a batch of `images` into one call per image."""
    if not enabled or images <= 1:
        yield
        return
    original = unet.forward
    shadowed = unet.__dict__.get("forward")  # an instance-level forward already in place

    def forward(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        rows = sample.shape[0]
        if rows % images:
            return original(sample, *args, **kwargs)
        group = rows // images
        wants_dict = kwargs.pop("return_dict", True)
        merged: torch.Tensor | None = None
        for image in range(images):
            index = torch.tensor([image + k * images for k in range(group)], device=sample.device)
            result = original(
                sample[index],
                *(_rows(value, index, rows) for value in args),
                **{key: _rows(value, index, rows) for key, value in kwargs.items()},
                return_dict=False,
            )[0]
            if merged is None:
                merged = result.new_empty((rows, *result.shape[1:]))
            merged[index] = result
        if wants_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=merged)
        return (merged,)

    unet.forward = forward
    try:
        yield
    finally:
        if shadowed is None:
            del unet.forward
        else:
            unet.forward = shadowed


def _rows(value: Any, index: torch.Tensor, rows: int) -> Any:
    """This image's rows of any per-row input (timesteps, text embeddings, SDXL's extra
    conditioning dicts); everything else passes through unchanged."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
        return value[index]
    if isinstance(value, dict):
        return {key: _rows(item, index, rows) for key, item in value.items()}
    return value


@contextmanager
def vae_slicing(vae: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Encode and decode one image at a time for this job."""
    previous = bool(getattr(vae, "use_slicing", False))
    vae.use_slicing = enabled or previous
    try:
        yield
    finally:
        vae.use_slicing = previous
