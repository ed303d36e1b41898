"""Midjourney's zoom out and pan as inpainting requests: the canvas, its mask, the request.

Zoom out keeps the picture's size and shrinks the image into the middle of it (1.5x or 2x);
pan widens the picture by half its side towards one edge. The new area is masked white; the
mask reaches a band into the old image so the seam is painted over, and the engine pastes the
old pixels back through the blurred mask, so nothing outside the band changes.

The new area starts as the old image's edge colours smeared outwards (OpenCV's Telea
inpainting on a small copy): an inpainting checkpoint sees a plausible frame, and a plain
checkpoint starts from noise there anyway (denoising 1).

No torch here: the bot builds the canvas when a button is pressed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from PIL import Image, ImageFilter

from pipeline.request import RANDOM_SEED, GenerationRequest, ImageRef
from pipeline.validation import batch_seeds

OUTPAINT_STRENGTH = 1.0
SIDE_MULTIPLE = 8  # the VAE's factor: every canvas side is a multiple of it


class Move(StrEnum):
    """A zoom out or pan button's move; the value is the button's action name."""

    ZOOM_2 = "Z2"
    ZOOM_1_5 = "Z15"
    LEFT = "PL"
    RIGHT = "PR"
    UP = "PU"
    DOWN = "PD"

    @property
    def zoom(self) -> float | None:
        return {Move.ZOOM_2: 2.0, Move.ZOOM_1_5: 1.5}.get(self)


@dataclass(frozen=True)
class Canvas:
    """The picture to inpaint: the old image placed on it, and where to paint (white)."""

    image: Image.Image
    mask: Image.Image  # mode "L", blurred at the seam
    box: tuple[int, int, int, int]  # where the old image sits: left, top, right, bottom


def canvas_size(move: Move, width: int, height: int, max_area: int) -> tuple[int, int]:
    """The outpainted picture's size from the original generation's `width` x `height`:
    the same for a zoom, half a side more for a pan; scaled down to fit `max_area`."""
    if move in (Move.LEFT, Move.RIGHT):
        width = width * 3 // 2
    elif move in (Move.UP, Move.DOWN):
        height = height * 3 // 2
    scale = min(1.0, (max_area / (width * height)) ** 0.5)
    return _snapped(width * scale), _snapped(height * scale)


def build_canvas(image: Image.Image, move: Move, size: tuple[int, int]) -> Canvas:
    """`image` placed on a `size` canvas for `move`, the rest masked for painting."""
    box = _placement(image.size, move, size)
    left, top, right, bottom = box
    placed = image.convert("RGB").resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    band = max(SIDE_MULTIPLE, min(right - left, bottom - top) // 16)
    # White outside the old picture, fading to black across `band` pixels inside it.
    hard = Image.new("L", size, 255)
    hard.paste(0, _inset(box, size, band // 2))
    mask = hard.filter(ImageFilter.GaussianBlur(band / 6))
    canvas = Image.new("RGB", size)
    canvas.paste(placed, (left, top))
    return Canvas(image=_filled(canvas, box), mask=mask, box=box)


def outpaint_request(
    parent: GenerationRequest,
    canvas: ImageRef,
    mask: ImageRef,
    size: tuple[int, int],
    count: int,
) -> GenerationRequest:
    """A grid of `count` new pictures on the canvas: the parent's prompt and settings, new
    seeds (as a reroll), no variation seeds, no hires fix, no ControlNet (its map was drawn
    for the old frame)."""
    width, height = size
    return replace(
        parent,
        seeds=batch_seeds(RANDOM_SEED, count),
        init_image=canvas,
        mask_image=mask,
        denoising_strength=OUTPAINT_STRENGTH,
        width=width,
        height=height,
        variation_seeds=(),
        variation_strength=0.0,
        hires=None,
        control=None,
    )


def _placement(
    image_size: tuple[int, int], move: Move, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    width, height = size
    zoom = move.zoom
    if zoom is not None:
        inner_w, inner_h = round(width / zoom), round(height / zoom)
        left, top = (width - inner_w) // 2, (height - inner_h) // 2
        return left, top, left + inner_w, top + inner_h
    # A pan keeps the old picture's aspect: its full height (or width) along the other side.
    old_w, old_h = image_size
    if move in (Move.LEFT, Move.RIGHT):
        inner_w = min(width, round(height * old_w / old_h))
        left = width - inner_w if move is Move.LEFT else 0
        return left, 0, left + inner_w, height
    inner_h = min(height, round(width * old_h / old_w))
    top = height - inner_h if move is Move.UP else 0
    return 0, top, width, top + inner_h


def _inset(
    box: tuple[int, int, int, int], size: tuple[int, int], band: int
) -> tuple[int, int, int, int]:
    """`box` shrunk by `band` on every side that borders new area (not the canvas edge)."""
    left, top, right, bottom = box
    width, height = size
    return (
        left + band if left > 0 else 0,
        top + band if top > 0 else 0,
        right - band if right < width else width,
        bottom - band if bottom < height else height,
    )


def _filled(canvas: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The canvas with the area outside `box` filled from the old image's edges."""
    import cv2

    small_side = 128
    scale = small_side / max(canvas.size)
    small_size = (max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale)))
    unknown = Image.new("L", canvas.size, 255)
    unknown.paste(0, box)
    small = np.asarray(canvas.resize(small_size, Image.Resampling.BOX))
    small_mask = np.asarray(unknown.resize(small_size, Image.Resampling.NEAREST))
    painted = cv2.inpaint(small, small_mask, 5, cv2.INPAINT_TELEA)
    filled = Image.fromarray(painted).resize(canvas.size, Image.Resampling.BICUBIC)
    filled.paste(canvas.crop(box), box[:2])
    return filled


def _snapped(side: float) -> int:
    return max(SIDE_MULTIPLE, int(side) // SIDE_MULTIPLE * SIDE_MULTIPLE)
