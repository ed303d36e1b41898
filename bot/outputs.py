"""Saving a generation result: one PNG per image plus the grid, under outputs/YYYY-MM-DD/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.images import make_grid, output_path, save_png
from pipeline.request import GenerationResult

STEM_WORDS = 8


@dataclass(frozen=True)
class SavedResult:
    images: tuple[Path, ...]
    grid: Path | None


def prompt_stem(prompt: str) -> str:
    return "-".join(prompt.split()[:STEM_WORDS]) or "image"


def save_result(result: GenerationResult, outputs_dir: Path) -> SavedResult:
    """Write each image with its parameters, and a grid when there is more than one."""
    stem = prompt_stem(result.request.prompt)
    paths = tuple(
        save_png(item.image, output_path(outputs_dir, stem), item.infotext)
        for item in result.images
    )
    grid = None
    if len(result.images) > 1:
        grid_image = make_grid([item.image for item in result.images])
        grid = save_png(
            grid_image, output_path(outputs_dir, f"grid-{stem}"), result.images[0].infotext
        )
    return SavedResult(images=paths, grid=grid)
