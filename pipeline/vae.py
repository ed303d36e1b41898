"""SDXL's VAE in fp16: a fixed VAE from the models folder when there is one, else fp16 with a
retry in fp32 when a decode overflows.

SDXL's own VAE overflows in fp16 (black or NaN images). diffusers' answer is to decode every
image in fp32 (`force_upcast`); A1111's is a fixed VAE (`sdxl-vae-fp16-fix`, which decodes in
fp16 to within a level of the original) or, without one, fp16 until a decode gives NaN or
infinity and then that decode again in fp32. Easel does what A1111 does, and the images'
parameters say which VAE decoded them (`VAE: sdxl_vae_fp16_fix`), as A1111's do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

VAE_FOLDERS = ("VAE", "vae")  # A1111's, and Easel's lower-case form
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")


@dataclass(frozen=True)
class VaeChoice:
    """Which VAE decodes: the checkpoint's own (`name` None) or a fixed one by name."""

    name: str | None = None
    retries_in_fp32: bool = False  # fp16, with an fp32 retry on overflow


def find_fixed_vae(models_dir: Path) -> Path | None:
    """An fp16-fixed SDXL VAE in models/VAE: a file or diffusers folder whose name holds
    "fp16" and "fix" (`sdxl_vae_fp16_fix.safetensors`, `sdxl-vae-fp16-fix/`)."""
    for folder_name in VAE_FOLDERS:
        folder = models_dir / folder_name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            name = path.name.lower()
            if "fp16" not in name or "fix" not in name:
                continue
            if path.is_dir() and (path / "config.json").is_file():
                return path
            if path.is_file() and path.suffix in VAE_SUFFIXES:
                return path
    return None


def choose_vae(pipe: Any, models_dir: Path, needs_fix: bool) -> VaeChoice:
    """Set up `pipe`'s VAE for fp16 when `needs_fix` (SDXL in fp16): the fixed VAE when the
    models folder has one, else the overflow retry."""
    import torch

    if not needs_fix or pipe.vae.dtype != torch.float16:
        return VaeChoice()
    path = find_fixed_vae(models_dir)
    if path is not None:
        pipe.vae = _load_fixed(path, pipe.vae)
        log.info("Decoding with the fixed fp16 VAE %s", path.name)
        return VaeChoice(name=path.stem if path.is_file() else path.name)
    retry_in_fp32_on_overflow(pipe.vae)
    return VaeChoice(retries_in_fp32=True)


def _load_fixed(path: Path, current: Any) -> Any:
    """The fixed VAE; a single file is read with the checkpoint VAE's config (offline)."""
    import tempfile

    from diffusers import AutoencoderKL

    if path.is_dir():
        vae = AutoencoderKL.from_pretrained(path, torch_dtype=current.dtype)
    else:
        with tempfile.TemporaryDirectory(prefix="easel-vae-") as config:
            current.save_config(config)
            vae = AutoencoderKL.from_single_file(path, config=config, torch_dtype=current.dtype)
    vae.register_to_config(force_upcast=False)
    return vae.to(current.device)


def retry_in_fp32_on_overflow(vae: Any) -> None:
    """Decode in fp16; a decode whose output is not all finite runs again in fp32."""
    import torch

    vae.register_to_config(force_upcast=False)
    decode: Callable[..., Any] = vae.decode

    def guarded(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        output = decode(latents, *args, **kwargs)
        sample = output[0] if isinstance(output, tuple) else output.sample
        if torch.isfinite(sample).all():
            return output
        log.info("The VAE overflowed in fp16; decoding that batch again in fp32")
        vae.to(torch.float32)
        try:
            again = decode(latents.float(), *args, **kwargs)
        finally:
            vae.to(torch.float16)
        if isinstance(again, tuple):
            return tuple(item.half() if torch.is_tensor(item) else item for item in again)
        again.sample = again.sample.half()
        return again

    vae.decode = guarded
