"""Parsing the size options users type: `--size 768x512` and `--ar 16:9`."""

from __future__ import annotations

import re

from pipeline.errors import InvalidRequestError

ASPECT_STEP = 64
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    match = _SIZE.match(text)
    if match is None:
        raise InvalidRequestError(f"Size {text!r} is not WIDTHxHEIGHT, for example 768x512.")
    return int(match.group(1)), int(match.group(2))


def parse_ratio(text: str) -> tuple[float, float]:
    match = _RATIO.match(text)
    if match is None:
        raise InvalidRequestError(f"Aspect ratio {text!r} is not W:H, for example 16:9.")
    width, height = float(match.group(1)), float(match.group(2))
    if width <= 0 or height <= 0 or not 1 / 8 <= width / height <= 8:
        raise InvalidRequestError(f"Aspect ratio {text} is out of range (1:8 to 8:1).")
    return width, height


def size_for_ratio(ratio: tuple[float, float], native_size: int) -> tuple[int, int]:
    """A size of about the model's native area with this aspect ratio, in multiples of 64."""
    area = native_size * native_size
    width = (area * ratio[0] / ratio[1]) ** 0.5
    height = area / width
    return (
        max(ASPECT_STEP, round(width / ASPECT_STEP) * ASPECT_STEP),
        max(ASPECT_STEP, round(height / ASPECT_STEP) * ASPECT_STEP),
    )
