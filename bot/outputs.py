"""Saving a generation result: one PNG per image plus the grid, under outputs/YYYY-MM-DD/."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.store import NewImage
from pipeline.images import make_grid, output_path, save_png
from pipeline.request import GeneratedImage, GenerationResult

STEM_WORDS = 8


@dataclass(frozen=True)
class SavedResult:
    images: tuple[Path, ...]
    grid: Path | None


def prompt_stem(prompt: str) -> str:
    return "-".join(prompt.split()[:STEM_WORDS]) or "image"


def save_result(result: GenerationResult, outputs_dir: Path) -> SavedResult:
    """Write each image with its parameters, and a grid when there is more than one."""
    saved = save_images(result.images, outputs_dir, prompt_stem(result.request.prompt))
    return SavedResult(images=tuple(Path(item.path) for item in saved.records), grid=saved.grid)


@dataclass(frozen=True)
class SavedImages:
    records: tuple[NewImage, ...]  # what the job's history keeps of each image
    grid: Path | None


def save_images(images: Sequence[GeneratedImage], outputs_dir: Path, stem: str) -> SavedImages:
    """Each image as a PNG with its parameters, plus a grid when there are several."""
    records = []
    for index, item in enumerate(images):
        path = save_png(item.image, output_path(outputs_dir, stem), item.infotext)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        width, height = item.image.size
        records.append(NewImage(index, str(path), item.seed, width, height, digest))
    grid = None
    if len(images) > 1:
        picture = make_grid([item.image for item in images])
        grid = save_png(picture, output_path(outputs_dir, f"grid-{stem}"), images[0].infotext)
    return SavedImages(tuple(records), grid)
