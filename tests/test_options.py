"""Size options as users type them."""

from __future__ import annotations

import pytest

from bot.core.options import parse_ratio, parse_size, size_for_ratio
from pipeline.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("ratio", "native", "size"),
    [
        ("1:1", 512, (512, 512)),
        ("16:9", 512, (704, 384)),
        ("9:16", 512, (384, 704)),
        ("3:2", 512, (640, 448)),
        ("2:3", 768, (640, 960)),
        ("21:9", 768, (1152, 512)),
    ],
)
def test_aspect_ratios_keep_about_the_native_area(
    ratio: str, native: int, size: tuple[int, int]
) -> None:
    width, height = size_for_ratio(parse_ratio(ratio), native)
    assert (width, height) == size
    assert width % 64 == 0 and height % 64 == 0
    assert abs(width * height - native * native) / (native * native) < 0.15


@pytest.mark.parametrize("text", ["16-9", "0:1", "1:9", "wide", ""])
def test_bad_ratios_say_what_is_allowed(text: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"W:H|out of range"):
        parse_ratio(text)


def test_sizes() -> None:
    assert parse_size("768x512") == (768, 512)
    assert parse_size(" 640 X 640 ") == (640, 640)
    with pytest.raises(InvalidRequestError, match="WIDTHxHEIGHT"):
        parse_size("768 by 512")
