"""Upscaling finished images: a super-resolution model loaded with spandrel, or plain Lanczos.

Models run tile by tile so memory stays bounded by the tile size, not the image: a 512px tile
of a 4x ESRGAN needs the same few hundred MB whether the result is 1024px or 4096px. The
result is accumulated on the CPU in float32.

Tiles step by `tile - overlap` and the last one in each row and column is aligned with the
image edge. A convolutional model sees zero padding at a tile's edge, so the pixels there
differ from what it would produce on the whole image; to hide the seams, each tile's output
is weighted by a linear ramp across the overlap on every side that has a neighbour (weight 1
elsewhere, and at the image border), and the sum is divided by the summed weights. Where two
tiles overlap by exactly `overlap` the two ramps add up to 1, a plain crossfade that gives the
least weight to each tile's least reliable pixels. Models that tile internally (spandrel's
`ModelTiling.INTERNAL`) get the whole image at once.

Any factor in `SCALES` works with any model: the model runs once, or twice when its native
scale is smaller than the factor (a 2x model for 4x), and Lanczos resizes what remains to
exactly width*scale x height*scale (down, for a 4x model asked for 2x).
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from spandrel import (
    ImageModelDescriptor,
    ModelLoader,
    ModelTiling,
    UnsupportedModelError,
)

from pipeline.errors import (
    GenerationOutOfMemory,
    InvalidRequestError,
    ModelLoadError,
    first_line,
)
from pipeline.upscale_names import (  # names and size checks need no torch
    DEFAULT_MAX_OUTPUT_PIXELS,
    LANCZOS,
    SCALES,
    UpscalerInfo,
    check_upscale_size,
    find_upscalers,
    resolve_upscaler,
    validate_scale,
)

__all__ = ["DEFAULT_MAX_OUTPUT_PIXELS", "LANCZOS", "SCALES", "Upscaler", "UpscalerInfo"]
__all__ += ["check_upscale_size", "clear_upscaler_cache", "find_upscalers", "lanczos_upscale"]
__all__ += ["load_upscaler", "resolve_upscaler", "upscale_image", "validate_scale"]

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
# Cached models, across every Upscaler; an ESRGAN is about 70 MB of weights.
CACHE_SIZE = 3

_LOAD_ERRORS = (
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    pickle.UnpicklingError,
    SafetensorError,
    UnsupportedModelError,
)


@dataclass(frozen=True)
class _Tile:
    """One tile of the input: its position and size, in input pixels."""

    top: int
    left: int
    height: int
    width: int


def lanczos_upscale(image: Image.Image, scale: int) -> Image.Image:
    """The upscale without a model: one Lanczos resize."""
    validate_scale(scale)
    image = _normalise_mode(image)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)


class Upscaler:
    """A spandrel super-resolution model on one device, ready to upscale images tile by tile."""

    def __init__(
        self,
        path: Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self._model = _load_cached(self.path.resolve(), _mtime(self.path), self.device, dtype)

    @property
    def name(self) -> str:
        """The name recorded in the image's parameters: the file stem."""
        return self.path.stem

    @property
    def native_scale(self) -> int:
        return self._model.scale

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model runs in: the one asked for, or float32 where unsupported."""
        return self._model.dtype

    @property
    def architecture(self) -> str:
        return self._model.architecture.name

    def upscale(
        self,
        image: Image.Image,
        scale: int,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
    ) -> Image.Image:
        """`image` made exactly `scale` times larger by the model (plus Lanczos for the rest)."""
        validate_scale(scale)
        _validate_tiling(tile, overlap)
        image = _normalise_mode(image)
        target = (image.width * scale, image.height * scale)
        out_of_memory = False
        try:
            upscaled = self._run_passes(image.convert("RGB"), scale, tile, overlap)
        except torch.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:
            # Outside the except block, so the traceback's tensors are freed before emptying.
            _empty_device_cache(self.device)
            raise GenerationOutOfMemory(
                f"The GPU ran out of memory upscaling {image.width}x{image.height} by {scale} "
                f"with {self.name}; try a smaller tile size or the {LANCZOS} upscaler."
            )
        if upscaled.size != target:
            upscaled = upscaled.resize(target, Image.Resampling.LANCZOS)
        if image.mode == "RGBA":
            alpha = image.getchannel("A").resize(target, Image.Resampling.LANCZOS)
            upscaled.putalpha(alpha)
        return upscaled

    def _run_passes(self, image: Image.Image, scale: int, tile: int, overlap: int) -> Image.Image:
        with torch.inference_mode():
            for _ in range(_pass_count(self.native_scale, scale)):
                image = self._run_once(image, tile, overlap)
        return image

    def _run_once(self, image: Image.Image, tile: int, overlap: int) -> Image.Image:
        pixels = _to_tensor(image, self._model.input_channels)
        if self._model.tiling is ModelTiling.INTERNAL:
            return _to_image(self._model(pixels.to(self.device, self.dtype)))
        return _array_to_image(self._tiled(pixels, tile, overlap))

    def _tiled(self, pixels: torch.Tensor, tile: int, overlap: int) -> np.ndarray:
        """The model's output for `pixels` (1, C, H, W on the CPU), blended from tiles, as an
        (H, W, C) uint8 array.

        Tiles are run a row at a time and only the rows of output that the current row of tiles
        reaches are held as floats; rows no later tile touches are rounded into the result, so
        the working memory is a strip of tiles, not four floats per output pixel.
        """
        _, _, height, width = pixels.shape
        scale = self.native_scale
        strip = _Strip(self._model.output_channels, width * scale)
        out = np.empty((height * scale, width * scale, strip.channels), dtype=np.uint8)
        for top in _starts(height, tile, overlap):
            strip.flush_to(out, top * scale)
            strip.extend_to((top + min(tile, height)) * scale)
            for left in _starts(width, tile, overlap):
                part = _Tile(top, left, min(tile, height), min(tile, width))
                rows = slice(part.top, part.top + part.height)
                columns = slice(part.left, part.left + part.width)
                piece = pixels[:, :, rows, columns].to(self.device, self.dtype)
                output = self._model(piece).float().cpu()
                weight = _tile_weight(part, height, width, overlap, scale)
                strip.add(output, weight, rows.start * scale, columns.start * scale)
        strip.flush_to(out, height * scale)
        return out


class _Strip:
    """Output rows still being blended: weighted sums and weights from `top` down."""

    def __init__(self, channels: int, width: int) -> None:
        self.channels = channels
        self.top = 0
        self.total = torch.zeros(1, channels, 0, width)
        self.weights = torch.zeros(1, 1, 0, width)

    def extend_to(self, bottom: int) -> None:
        more = bottom - self.top - self.total.shape[2]
        if more > 0:
            width = self.total.shape[3]
            self.total = torch.cat([self.total, torch.zeros(1, self.channels, more, width)], 2)
            self.weights = torch.cat([self.weights, torch.zeros(1, 1, more, width)], 2)

    def add(self, output: torch.Tensor, weight: torch.Tensor, top: int, left: int) -> None:
        rows = slice(top - self.top, top - self.top + output.shape[2])
        columns = slice(left, left + output.shape[3])
        self.total[:, :, rows, columns] += output * weight
        self.weights[:, :, rows, columns] += weight

    def flush_to(self, out: np.ndarray, row: int) -> None:
        """Round the rows above `row` into `out` and drop them from the strip."""
        done = min(row - self.top, self.total.shape[2])
        if done <= 0:
            return
        blended = self.total[:, :, :done] / self.weights[:, :, :done]
        out[self.top : self.top + done] = _to_array(blended)
        self.total = self.total[:, :, done:].clone()
        self.weights = self.weights[:, :, done:].clone()
        self.top += done


def load_upscaler(
    name: str | None,
    models_dir: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Upscaler | None:
    """The upscaler named `name`, loaded (or taken from the cache); None means Lanczos."""
    info = resolve_upscaler(name, models_dir)
    return None if info is None else Upscaler(info.path, device, dtype)


def upscale_image(
    image: Image.Image,
    scale: int,
    upscaler: Upscaler | None,
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
) -> tuple[Image.Image, str]:
    """The upscaled image and the name to record as the A1111 `Upscaler` parameter.

    Refused (InvalidRequestError) when the result would be larger than `max_output_pixels`.
    """
    validate_scale(scale)
    check_upscale_size(image.size, scale, max_output_pixels)
    if upscaler is None:
        return lanczos_upscale(image, scale), LANCZOS
    return upscaler.upscale(image, scale), upscaler.name


def clear_upscaler_cache() -> None:
    """Drop every cached model, e.g. to give its memory back to generation."""
    _load_cached.cache_clear()


# The modification time is part of the key so that a replaced file is loaded again.
@functools.lru_cache(maxsize=CACHE_SIZE)
def _load_cached(
    path: Path, mtime_ns: int, device: torch.device, dtype: torch.dtype
) -> ImageModelDescriptor:
    model = _load_descriptor(path, device)
    return model.to(supported_dtype(model, dtype)).eval()


def _load_descriptor(path: Path, device: torch.device) -> ImageModelDescriptor:
    try:
        model = ModelLoader(device).load_from_file(path)
    except _LOAD_ERRORS as error:
        detail = first_line(error)
        if isinstance(error, UnsupportedModelError):
            detail = "not a model architecture spandrel knows (ESRGAN, Real-ESRGAN, SwinIR...)"
        raise ModelLoadError(f"{path.name} could not be loaded as an upscaler: {detail}") from error
    if not isinstance(model, ImageModelDescriptor) or model.purpose == "FaceSR":
        raise ModelLoadError(
            f"{path.name} is a {model.architecture.name} {model.purpose} model, not an upscaler."
        )
    if model.input_channels not in (1, 3):
        raise ModelLoadError(
            f"{path.name} takes {model.input_channels}-channel images; "
            "only RGB and grayscale upscalers are supported."
        )
    return model


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError as error:
        raise ModelLoadError(f"Upscaler {path.name} is unreadable: {first_line(error)}") from error


def supported_dtype(model: ImageModelDescriptor, dtype: torch.dtype) -> torch.dtype:
    """`dtype`, or float32 where spandrel says the architecture does not support it."""
    if dtype == torch.float16 and not model.supports_half:
        return torch.float32
    if dtype == torch.bfloat16 and not model.supports_bfloat16:
        return torch.float32
    return dtype


def _pass_count(native_scale: int, scale: int) -> int:
    return 2 if 1 < native_scale < scale else 1


def _validate_tiling(tile: int, overlap: int) -> None:
    if overlap < 0 or tile <= 2 * overlap:
        raise InvalidRequestError(
            f"Upscale tiles must be larger than twice their overlap (tile {tile}, "
            f"overlap {overlap})."
        )


def _normalise_mode(image: Image.Image) -> Image.Image:
    """RGB, or RGBA where the image has transparency (palette images included)."""
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    mode = "RGBA" if has_alpha else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis; the last tile ends at the edge, so may overlap more."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    starts.append(length - tile)
    return starts


def _tile_weight(part: _Tile, height: int, width: int, overlap: int, scale: int) -> torch.Tensor:
    rows = _ramp(
        part.height * scale, part.top > 0, part.top + part.height < height, overlap * scale
    )
    columns = _ramp(
        part.width * scale, part.left > 0, part.left + part.width < width, overlap * scale
    )
    return (rows[:, None] * columns[None, :])[None, None]


def _ramp(size: int, rise: bool, fall: bool, length: int) -> torch.Tensor:
    """Weights along one tile axis: 1, ramping linearly over `length` on sides with neighbours.

    The ramp never reaches 0, so every pixel keeps some weight; two facing ramps sum to 1.
    """
    weight = torch.ones(size)
    position = torch.arange(size, dtype=torch.float32)
    if rise:
        weight = torch.minimum(weight, (position + 1) / (length + 1))
    if fall:
        weight = torch.minimum(weight, (size - position) / (length + 1))
    return weight


def _to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    mode = "L" if channels == 1 else "RGB"
    array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def _to_array(pixels: torch.Tensor) -> np.ndarray:
    return pixels[0].float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def _to_image(pixels: torch.Tensor) -> Image.Image:
    return _array_to_image(_to_array(pixels))


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], "L").convert("RGB")
    return Image.fromarray(array[:, :, :3], "RGB")


def _empty_device_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
