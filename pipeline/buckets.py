"""The sizes SDXL was trained at: its aspect-ratio buckets, each about 1024² in area.

From the SDXL report (Podell et al., 2023, appendix: multi-aspect training). `--ar` on a model
trained at 1024² picks the bucket nearest the asked ratio, as SDXL front ends do, instead of
rounding the ratio at the native area: a size the model has seen composes better.
"""

from __future__ import annotations

import math

XL_NATIVE = 1024
# (width, height), the wide ones; the tall ones are the same pairs turned.
_XL_WIDE = (
    (1024, 1024),
    (1088, 960),
    (1088, 896),
    (1152, 896),
    (1152, 832),
    (1216, 832),
    (1280, 768),
    (1344, 768),
    (1344, 704),
    (1408, 704),
    (1472, 704),
    (1536, 640),
    (1600, 640),
    (1664, 576),
    (1728, 576),
    (1792, 576),
    (1856, 512),
    (1920, 512),
    (1984, 512),
    (2048, 512),
)
XL_BUCKETS = tuple(
    sorted({*_XL_WIDE, *((height, width) for width, height in _XL_WIDE)}, key=lambda s: s[0] / s[1])
)


def xl_bucket(ratio: tuple[float, float]) -> tuple[int, int]:
    """The trained SDXL size whose width:height is nearest `ratio` (on a log scale, so 2:1
    and 1:2 are equally far from 1:1); the wider one on a tie."""
    wanted = math.log(ratio[0] / ratio[1])
    return min(reversed(XL_BUCKETS), key=lambda size: abs(math.log(size[0] / size[1]) - wanted))
