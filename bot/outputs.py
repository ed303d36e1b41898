"""Saving a generation result: one PNG per image plus the grid, under outputs/YYYY-MM-DD/."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    """Each image as a PNG with its parameters, plus a grid when there are several.

    PNG compression is most of the cost and Pillow's encoder releases the GIL, so the files
    are written side by side; their numbers are claimed first, in order.
    """
    paths = [output_path(outputs_dir, stem) for _ in images]
    grid_path = output_path(outputs_dir, f"grid-{stem}") if len(images) > 1 else None
    with ThreadPoolExecutor(max_workers=min(len(images) + 1, os.cpu_count() or 1)) as pool:
        grid = pool.submit(_save_grid, images, grid_path) if grid_path is not None else None
        records = list(pool.map(_save_one, range(len(images)), images, paths))
        if grid is not None:
            grid.result()
    return SavedImages(tuple(records), grid_path)


def _save_one(index: int, item: GeneratedImage, path: Path) -> NewImage:
    save_png(item.image, path, item.infotext)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    width, height = item.image.size
    return NewImage(index, str(path), item.seed, width, height, digest)


def _save_grid(images: Sequence[GeneratedImage], path: Path) -> None:
    save_png(make_grid([item.image for item in images]), path, images[0].infotext)
