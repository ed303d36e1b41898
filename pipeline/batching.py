"""Every rule for how jobs share GPU work, in one place.

Which jobs share one pipeline call (the scheduler groups queued jobs by `batch_key`):
- Only jobs with an equal `BatchKey`: checkpoint, size, steps, sampler and schedule, clip
  skip, tiling, img2img and its strength, inpainting, the hires fix's settings, the LoRA set
  with its weights, the ControlNet with its control image and settings (one map a call), and
  whether the job is guided.
  - CFG: jobs of different scales share a call. Each image is guided with its own scale by
    the UNet wrapper, with diffusers' own formula `u + cfg * (c - u)`, and diffusers' guidance
    is handed `(r, r)` so that its `r + cfg * (r - r)` leaves the result as it is: bit for bit
    what the job alone gives. A scale of 1 or less means no guidance at all (no negative
    prompt rows), so unguided jobs split from guided ones; a model that embeds the scale in
    its timestep (LCM-distilled UNets) splits by scale.
  - LoRA sets: a set is fused into the weights for the call (pipeline/lora.py), so one call
    has one set; the scheduler prefers the set already fused.
  - Hires fix: its second pass has its own size and steps, so jobs share it only with the same
    scale, steps, strength and upscaler; their first passes then share a call too.
- Inside one call, prompts, negative prompts, AND parts, prompt editing, seeds, variation
  seeds, init images and image counts may all differ.

Which rows share one UNet call (pipeline/guidance.py builds the rows each step):
- An image runs one row for its negative prompt (when guided or an AND prompt) and one per AND
  part. Rows whose text conditioning has the same length share calls; rows of another length
  (a prompt of more 75-token chunks) get calls of their own, because padding the text would
  change what attention sees.
- `fixed` (the default): the rows are cut into calls of exactly `BatchShape.rows_for(size)`
  rows, the last call padded with copies of its last row. The row count depends only on the
  image size, never on which jobs share the batch. Where a row of a fixed-shape call depends
  only on its own inputs (its neighbours' values and its position do not change a bit), an
  image is therefore bit-identical whichever jobs shared its batch. `RowChecks` checks that on
  the device at the first call of each shape (one extra UNet call); a shape that fails runs
  its images one by one from then on, which is exact everywhere.
- `whole`: all rows of one length in one call. Fastest; an image may differ from running it
  alone by a level in some pixels.
- The VAE decodes one image at a time except in `whole` mode (decoding is a small share of a
  job; one image a call needs no padding and no check).

Written here by hand: no library batches diffusion rows across requests this way.

The batch key needs no torch (the bot computes it for jobs that run on other machines); torch
is imported by the row calls and checks, which run on the GPU side.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pipeline.control_names import control_key
from pipeline.lora_names import lora_set
from pipeline.request import HiresFix, LoraUse

if TYPE_CHECKING:
    import torch

    from pipeline.preparation import PreparedJob

log = logging.getLogger(__name__)

# Rows of one UNet call at the model's native size: four images and their negative prompts,
# the 2x2 grid an /imagine makes, run as plain diffusers runs a batch of four.
DEFAULT_ROWS = 8


@dataclass(frozen=True)
class BatchKey:
    """What jobs must share to run as one pipeline call; prompts, seeds, variation seeds and
    init images may differ."""

    width: int
    height: int
    steps: int
    guidance: str  # see guidance_key
    sampler: str  # the canonical name, " Karras" included
    schedule_type: str | None
    clip_skip: int
    tiling: bool
    loras: tuple[LoraUse, ...]  # sorted by name, weight-zero uses dropped
    is_img2img: bool
    denoising_strength: float | None  # img2img's only
    hires: HiresFix | None
    model: str | None = None  # the checkpoint the jobs were queued for (None: the loaded one)
    inpaint: bool = False  # masked img2img (zoom out, pan): the inpainting pipeline
    control: str | None = None  # the ControlNet, its image and settings (control_key)


def batch_key(job: PreparedJob) -> BatchKey:
    request = job.request
    assert request.width is not None and request.height is not None
    return BatchKey(
        width=request.width,
        height=request.height,
        steps=request.steps,
        guidance=guidance_key(request.cfg_scale, job.embeds_guidance),
        sampler=job.sampler.name,
        schedule_type=job.sampler.schedule_type,
        clip_skip=request.clip_skip,
        tiling=request.tiling,
        loras=lora_set(job.loras),
        is_img2img=request.is_img2img,
        denoising_strength=request.denoising_strength if request.is_img2img else None,
        hires=request.hires,
        model=request.model,
        inpaint=request.is_inpaint,
        control=control_key(request.control),
    )


def key_digest(job: PreparedJob) -> str:
    """A short, stable text form of the job's batch key, for the database (and the scheduler,
    which groups queued jobs by it)."""
    return hashlib.sha256(repr(batch_key(job)).encode()).hexdigest()[:32]


def guidance_key(cfg_scale: float, embeds_guidance: bool) -> str:
    """What of the CFG scale jobs must share: nothing but being guided (above 1), unless the
    model embeds the scale itself (then the scale)."""
    if embeds_guidance:
        return f"embedded {cfg_scale!r}"
    return "guided" if cfg_scale > 1 else "unguided"


class BatchMode(StrEnum):
    FIXED = "fixed"
    WHOLE = "whole"


@dataclass(frozen=True)
class BatchShape:
    """How the rows of a step are cut into UNet calls (see the module's docstring)."""

    mode: BatchMode = BatchMode.FIXED
    rows: int = DEFAULT_ROWS  # rows per call at the model's native area, and never more

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"A UNet call needs at least one row, not {self.rows}")

    def rows_for(self, width: int, height: int, native_size: int) -> int:
        """Rows per call at this size: `rows` at the native area or below; above it, fewer in
        proportion to the area (halving: 8, 4, 2, 1), so that a hires pass or a large image
        neither runs out of memory nor pads one image to four at four times the area."""
        scaled = self.rows * native_size * native_size / (width * height)
        if scaled >= self.rows:
            return self.rows
        return max(1, 2 ** math.floor(math.log2(max(scaled, 1.0))))


UNetCall = Callable[["torch.Tensor", Any, "torch.Tensor"], "torch.Tensor"]
"""One UNet forward: (latent rows, timestep, text rows) -> predictions, one per row."""


@dataclass(frozen=True)
class _CallShape:
    rows: int
    sample: tuple[int, ...]
    context: tuple[int, ...]
    dtype: torch.dtype
    device: str


@dataclass
class RowChecks:
    """Which fixed call shapes keep each row independent of the others on this device.

    Checked once per shape, on the first real call: the same rows again one position on, with
    the padding rows replaced by zeros. A shape that passes is trusted for the process; one
    that fails is remembered, and its images run one by one."""

    results: dict[_CallShape, bool] = field(default_factory=dict)

    def verdict(self, shape: _CallShape) -> bool | None:
        return self.results.get(shape)

    def check(
        self,
        call: UNetCall,
        sample: torch.Tensor,
        timestep: Any,
        context: torch.Tensor,
        real_rows: int,
        output: torch.Tensor,
    ) -> bool:
        import torch

        shape = _shape_of(sample, context)
        order = torch.roll(torch.arange(shape.rows), 1)
        moved_sample, moved_context = sample[order].clone(), context[order].clone()
        padding = order >= real_rows  # where the padding rows went
        moved_sample[padding] = 0
        moved_context[padding] = 0
        again = call(moved_sample, timestep, moved_context)
        kept = ~padding
        independent = torch.equal(again[kept], output[order][kept])
        self.results[shape] = independent
        if independent:
            log.info(
                "UNet calls of %s rows give each row its own result on %s", shape.rows, shape.device
            )
        else:
            log.warning(
                "On %s a row of a %s-row UNet call changes with the other rows; images of this "
                "size run one by one so that a seed still gives its image",
                shape.device,
                shape.rows,
            )
        return independent


def _shape_of(sample: torch.Tensor, context: torch.Tensor) -> _CallShape:
    return _CallShape(
        rows=sample.shape[0],
        sample=tuple(sample.shape[1:]),
        context=tuple(context.shape[1:]),
        dtype=sample.dtype,
        device=str(sample.device),
    )


def call_in_fixed_rows(
    call: UNetCall,
    sample: torch.Tensor,
    timestep: Any,
    context: torch.Tensor,
    rows: int,
    checks: RowChecks,
) -> torch.Tensor | None:
    """Every row's prediction from calls of exactly `rows` rows, the last padded with copies
    of its last row; None when this shape is known to mix rows (run the images alone)."""
    import torch

    outputs: list[torch.Tensor] = []
    for start in range(0, sample.shape[0], rows):
        real = min(rows, sample.shape[0] - start)
        padded_sample = _padded(sample[start : start + real], rows)
        padded_context = _padded(context[start : start + real], rows)
        shape = _shape_of(padded_sample, padded_context)
        verdict = checks.verdict(shape)
        if verdict is False:
            return None
        output = call(padded_sample, timestep, padded_context)
        if verdict is None and not checks.check(
            call, padded_sample, timestep, padded_context, real, output
        ):
            return None
        outputs.append(output[:real])
    return torch.cat(outputs)


def _padded(rows: torch.Tensor, count: int) -> torch.Tensor:
    import torch

    missing = count - rows.shape[0]
    if missing == 0:
        return rows
    return torch.cat([rows, rows[-1:].expand(missing, *rows.shape[1:])])
