"""Starting noise, and A1111's variation seeds blended into it.

The noise is drawn exactly as diffusers draws it (the same generators, shape, device and
dtype), so a request with variation strength 0 gives the very same image as one without, and
the generators are left in the same state for ancestral samplers.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor


def seeded_noise(
    seeds: tuple[int, ...], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    return randn_tensor((len(seeds), *shape), generator=generators, device=device, dtype=dtype)


def slerp(strength: float, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per image (row) from `start` (strength 0) to `end` (1)."""
    if strength == 0:
        return start
    low = start.flatten(1).float()
    high = end.flatten(1).float()
    cosine = (low / low.norm(dim=1, keepdim=True) * high / high.norm(dim=1, keepdim=True)).sum(1)
    if cosine.mean() > 0.9995:  # nearly parallel: the sine ratios are unstable
        mixed = low * (1 - strength) + high * strength
    else:
        omega = torch.acos(cosine.clamp(-1, 1))
        sine = torch.sin(omega)
        mixed = (torch.sin((1 - strength) * omega) / sine).unsqueeze(1) * low + (
            torch.sin(strength * omega) / sine
        ).unsqueeze(1) * high
    return mixed.view_as(start).to(start.dtype)
