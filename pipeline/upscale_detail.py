"""The one rule for Midjourney's U, shared by `easel upscale` and the chat's U buttons: enlarge
the image, then (by default) an img2img detail pass at a low strength with the image's own
prompt and seed, when the image carries its parameters and the result fits the size limit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from PIL import Image

from pipeline.images import Infotext
from pipeline.request import DETAIL_STRENGTH, GenerationRequest
from pipeline.variations import detail_pass, request_from_infotext

__all__ = ["DETAIL_STRENGTH", "DetailPlan", "plan_detail", "upscaled_parameters"]


@dataclass(frozen=True)
class DetailPlan:
    """The detail pass to run on an enlarged image, or why there is none."""

    request: GenerationRequest | None
    skipped: str | None = None  # a sentence for the user; None when not asked for


def plan_detail(
    infotext: Infotext | None, enlarged: Image.Image, strength: float, max_area: int
) -> DetailPlan:
    if strength <= 0:
        return DetailPlan(None)
    width, height = enlarged.size
    if infotext is None:
        return DetailPlan(
            None, f"No detail pass: the image holds no generation data ({width}x{height})."
        )
    if width * height > max_area:
        return DetailPlan(
            None, f"No detail pass: {width}x{height} is over the size limit of {max_area} pixels."
        )
    return DetailPlan(detail_pass(request_from_infotext(infotext), enlarged, strength))


def upscaled_parameters(
    parameters: Infotext | None, size: tuple[int, int], upscaler: str, scale: int
) -> Infotext:
    """The enlarged image's parameters: the source's (or the detail pass's), its size, and
    A1111's `Upscaler` / `Upscale by` keys."""
    width, height = size
    base = replace(parameters or Infotext(prompt=""), width=width, height=height)
    return replace(base, extra=(*base.extra, ("Upscaler", upscaler), ("Upscale by", str(scale))))
