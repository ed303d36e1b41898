"""Upscalers by name, and the checks on an upscale that need no model: torch-free, for the
bot's checks of a job before it is queued (pipeline/upscale.py runs the models)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InvalidRequestError
from pipeline.folders import ModelFolders
from pipeline.validation import Limits

SCALES = (2, 4)
LANCZOS = "Lanczos"
DEFAULT_MAX_OUTPUT_PIXELS = Limits.max_output_pixels


@dataclass(frozen=True)
class UpscalerInfo:
    """An upscaler model file found in a models folder."""

    name: str
    path: Path


def find_upscalers(models_dir: Path) -> list[UpscalerInfo]:
    """Every upscaler file in `models/upscale` and A1111's `ESRGAN` and `RealESRGAN` folders."""
    return [UpscalerInfo(path.stem, path) for path in ModelFolders(models_dir).upscaler_files()]


def resolve_upscaler(name: str | None, models_dir: Path) -> UpscalerInfo | None:
    """The upscaler named `name` (a file stem, any case), or None for plain Lanczos.

    "Lanczos", the name Easel records when no model was used, also means no model unless a
    file has that stem.
    """
    if name is None or not name.strip():
        return None
    wanted = name.strip().lower()
    available = find_upscalers(models_dir)
    for info in available:
        if wanted in (info.name.lower(), info.path.name.lower()):
            return info
    if wanted == LANCZOS.lower():
        return None
    known = ", ".join(info.name for info in available) or "none"
    folders = " or ".join(f"{models_dir.name}/{folder}" for folder in ("upscale", "ESRGAN"))
    raise InvalidRequestError(
        f"No upscaler named {name!r}. Available: {known} (or {LANCZOS}, without a model). "
        f"Put .pth or .safetensors upscalers in {folders}.",
        ko=f"{name!r}(이)라는 업스케일러가 없습니다. 쓸 수 있는 것: "
        f"{known if available else '없음'}(모델 없이 {LANCZOS}도 가능). .pth 또는 "
        f".safetensors 업스케일러를 {folders}에 넣으세요.",
    )


def validate_scale(scale: int) -> None:
    if isinstance(scale, bool) or scale not in SCALES:
        allowed = " or ".join(str(factor) for factor in SCALES)
        raise InvalidRequestError(
            f"Upscale factor must be {allowed}, not {scale}.",
            ko=f"업스케일 배율은 {allowed.replace(' or ', ' 또는 ')}이어야 합니다. 입력: {scale}",
        )


def check_upscale_size(
    size: tuple[int, int], scale: int, max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
) -> None:
    """Refuse an upscale whose result would be larger than `max_output_pixels`."""
    width, height = size[0] * scale, size[1] * scale
    if width * height > max_output_pixels:
        raise InvalidRequestError(
            f"Upscaling {size[0]}x{size[1]} by {scale} would make {width}x{height} "
            f"({width * height:,} pixels); the limit is {max_output_pixels:,} pixels.",
            ko=f"{size[0]}x{size[1]}을(를) {scale}배로 업스케일하면 {width}x{height}"
            f"({width * height:,}픽셀)이 됩니다. 최대 {max_output_pixels:,}픽셀까지 가능합니다.",
        )
