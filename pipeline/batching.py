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

    def forward(
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        rows = sample.shape[0]
        if rows % images:
            return original(sample, timestep, encoder_hidden_states, *args, **kwargs)
        group = rows // images
        outputs = []
        order = []
        for image in range(images):
            index = torch.tensor([image + k * images for k in range(group)], device=sample.device)
            step = timestep
            if isinstance(timestep, torch.Tensor) and timestep.ndim > 0 and len(timestep) == rows:
                step = timestep[index]
            result = original(
                sample[index],
                step,
                encoder_hidden_states[index],
                *args,
                **{**kwargs, "return_dict": False},
            )
            outputs.append(result[0])
            order.append(index)
        merged = outputs[0].new_empty((rows, *outputs[0].shape[1:]))
        for index, output in zip(order, outputs, strict=True):
            merged[index] = output
        if kwargs.get("return_dict", True):
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


@contextmanager
def vae_slicing(vae: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Encode and decode one image at a time for this job."""
    previous = bool(getattr(vae, "use_slicing", False))
    vae.use_slicing = enabled or previous
    try:
        yield
    finally:
        vae.use_slicing = previous
