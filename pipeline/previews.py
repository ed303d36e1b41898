"""Small previews of the images being made, from the latents of a sampling step.

Two decoders: the cheap linear approximation (one 4x3 matrix per pixel, the way A1111's
"Approx cheap" and ComfyUI's latent preview work for SD 1.x and 2.x), or TAESD (diffusers'
`AutoencoderTiny`) when its weights are in the models folder:

| layout      | where                                                              |
|-------------|--------------------------------------------------------------------|
| diffusers   | `models/vae-approx/taesd/` (config.json + weights)                 |
| AUTOMATIC1111 | `models/VAE-approx/taesd_decoder.safetensors` or `.pth`          |

SDXL checkpoints use their own: `taesdxl/`, `taesdxl_decoder.safetensors` or `.pth`.

A job's preview is its images side by side (2x2 for four) in one JPEG of at most 256 px a
side. Previews are made on the thread that runs the pipeline, between steps.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

log = logging.getLogger(__name__)

PREVIEW_SIDE = 256
JPEG_QUALITY = 80
VAE_APPROX_FOLDERS = ("vae-approx", "VAE-approx")
TAESD_FOLDER = "taesd"  # a diffusers AutoencoderTiny folder
TAESD_FILES = ("taesd_decoder.safetensors", "taesd_decoder.pth")  # TAESD's own decoder layout

# Each SD 1.x/2.x latent channel's contribution to R, G and B: the least-squares fit of
# decoded pixels on latents published with the SD 1.5 latent previews (rows: channels 0-3).
LATENT_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
# SDXL's VAE has its own latent space: the same kind of fit for it (as ComfyUI's previews use),
# with a per-colour offset; and TAESDXL in place of TAESD.
XL_LATENT_RGB_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
XL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


@dataclass(frozen=True)
class LatentSpace:
    """What previews need to know of a family's latents."""

    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float]
    taesd_folder: str  # a diffusers AutoencoderTiny folder under vae-approx/
    taesd_files: tuple[str, ...]  # the decoder alone, as A1111 and ComfyUI keep it


SD_LATENTS = LatentSpace(LATENT_RGB_FACTORS, (0.0, 0.0, 0.0), "taesd", TAESD_FILES)
XL_LATENTS = LatentSpace(
    XL_LATENT_RGB_FACTORS,
    XL_LATENT_RGB_BIAS,
    "taesdxl",
    ("taesdxl_decoder.safetensors", "taesdxl_decoder.pth"),
)
LATENT_SPACES = {"sd": SD_LATENTS, "sdxl": XL_LATENTS}  # by ModelFamily.latent_space


class PreviewDecoder(Protocol):
    name: str
    upscale: int  # output pixels per latent pixel, each way

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, 4, h, w) latents as the UNet sees them -> (N, 3, H, W) RGB in [0, 1]."""
        ...


class LinearDecoder:
    """Latent-sized RGB from one small matrix product; no weights to load."""

    name = "linear"
    upscale = 1

    def __init__(self, space: LatentSpace = SD_LATENTS) -> None:
        self.space = space
        self._factors: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._bias: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        key = (latents.device, latents.dtype)
        if key not in self._factors:
            self._factors[key] = torch.tensor(
                self.space.factors, device=latents.device, dtype=latents.dtype
            )
            self._bias[key] = torch.tensor(
                self.space.bias, device=latents.device, dtype=latents.dtype
            ).reshape(1, 3, 1, 1)
        rgb = torch.einsum("nchw,cr->nrhw", latents, self._factors[key]) + self._bias[key]
        return ((rgb + 1) / 2).clamp(0, 1)


class TaesdDecoder:
    """TAESD's decoder: full-size images, much closer to the VAE's, at a few conv layers' cost."""

    name = "taesd"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)
        levels = len(getattr(model, "config", {}).get("decoder_block_out_channels", (0,) * 4))
        self.upscale = 2 ** (levels - 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        parameter = next(self.model.parameters())
        latents = latents.to(parameter.device, parameter.dtype)
        images = self.model.decode(latents).sample  # in [-1, 1]
        return ((images + 1) / 2).clamp(0, 1)


def find_taesd(models_dir: Path, space: LatentSpace = SD_LATENTS) -> Path | None:
    """The TAESD weights for `space` in `models_dir`, a diffusers folder first; None when there
    are none."""
    for name in VAE_APPROX_FOLDERS:
        folder = models_dir / name
        if (folder / space.taesd_folder / "config.json").is_file():
            return folder / space.taesd_folder
        for file_name in space.taesd_files:
            if (folder / file_name).is_file():
                return folder / file_name
    return None


def load_taesd(path: Path, device: torch.device, dtype: torch.dtype) -> TaesdDecoder:
    """A diffusers AutoencoderTiny folder, or a TAESD decoder file as A1111 and ComfyUI keep it
    (diffusers' single-file loader does not read AutoencoderTiny)."""
    from diffusers import AutoencoderTiny

    if path.is_dir():
        model = AutoencoderTiny.from_pretrained(path)
    else:
        model = AutoencoderTiny()  # TAESD's own layout
        model.decoder.layers.load_state_dict(_decoder_layers(_read_weights(path)))
    return TaesdDecoder(model.to(device=device, dtype=dtype))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _decoder_layers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TAESD's decoder is one Sequential whose layer 0 is a weightless clamp; diffusers keeps
    the clamp in `forward`, so every layer index is one less."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        index, _, rest = key.removeprefix("decoder.").partition(".")
        renamed[f"{int(index) - 1}.{rest}"] = value
    return renamed


def choose_decoder(
    models_dir: Path, device: torch.device, dtype: torch.dtype, space: LatentSpace = SD_LATENTS
) -> PreviewDecoder:
    """TAESD (TAESDXL for SDXL) when its weights are in the models folder and load, else the
    linear approximation."""
    path = find_taesd(models_dir, space)
    if path is None:
        return LinearDecoder(space)
    try:
        return load_taesd(path, device, dtype)
    except Exception as error:  # a broken file costs the previews' quality, never a job
        log.warning(
            "TAESD at %s did not load (%s); previews use the linear approximation", path, error
        )
        return LinearDecoder(space)


def grid_size(count: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Columns, rows and one cell's width and height for `count` images of `width` x `height`
    side by side within PREVIEW_SIDE, never larger than the images themselves."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    scale = min(PREVIEW_SIDE / (columns * width), PREVIEW_SIDE / (rows * height), 1.0)
    return columns, rows, max(1, int(width * scale)), max(1, int(height * scale))


def grid_jpeg(images: torch.Tensor, width: int, height: int) -> bytes:
    """(N, 3, H, W) images in [0, 1] -> one JPEG of them in a grid, each shown as `width` x
    `height` scaled down to fit."""
    columns, rows, cell_w, cell_h = grid_size(images.shape[0], width, height)
    cells = torch.nn.functional.interpolate(
        images.float(), size=(cell_h, cell_w), mode="bilinear", antialias=True, align_corners=False
    )
    canvas = torch.zeros(3, rows * cell_h, columns * cell_w, device=cells.device)
    for index, cell in enumerate(cells):
        row, column = divmod(index, columns)
        canvas[:, row * cell_h : (row + 1) * cell_h, column * cell_w : (column + 1) * cell_w] = cell
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def pooling(latent_size: Sequence[int], cell: Sequence[int], upscale: int) -> int:
    """The largest power of two to shrink latents by (height, width) so that the decoder still
    makes at least a cell's pixels: the preview is small, decoding more is wasted work."""
    factor = 1
    while all(
        side % (factor * 2) == 0 and side // (factor * 2) * upscale >= want
        for side, want in zip(latent_size, cell, strict=True)
    ):
        factor *= 2
    return factor


@dataclass
class PreviewMaker:
    """One JPEG per job from a batch's latents; each job owns `counts[i]` rows, in order."""

    decoder: PreviewDecoder
    scale_factor: int = 8  # latent to image pixels

    def previews(
        self, latents: torch.Tensor, counts: Sequence[int], keys: Sequence[int]
    ) -> tuple[tuple[int, bytes], ...]:
        height, width = (side * self.scale_factor for side in latents.shape[-2:])
        made: list[tuple[int, bytes]] = []
        start = 0
        for key, count in zip(keys, counts, strict=True):
            rows = latents[start : start + count]
            start += count
            made.append((key, grid_jpeg(self._decode(rows, width, height), width, height)))
        return tuple(made)

    def _decode(self, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        _, _, cell_w, cell_h = grid_size(latents.shape[0], width, height)
        factor = pooling(latents.shape[-2:], (cell_h, cell_w), self.decoder.upscale)
        if factor > 1:
            latents = torch.nn.functional.avg_pool2d(latents, factor)
        with torch.inference_mode():
            return self.decoder.decode(latents)


class PreviewSchedule:
    """When a preview is due: at the first step after `every` seconds since the last one (or
    since the start), never on the last step, whose result follows at once."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        if every < 0:
            raise ValueError(f"The preview interval must be 0 or more seconds, not {every}.")
        self.every = every
        self.clock = clock
        self.last = clock()

    def due(self, step: int, total: int) -> bool:
        if step >= total:
            return False
        now = self.clock()
        if now - self.last < self.every:
            return False
        self.last = now
        return True
