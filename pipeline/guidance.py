"""The conditioning the UNet sees at each step: prompt editing, AND, and exact batches.

diffusers' pipeline stays in charge of the loop, the scheduler and classifier-free guidance;
this wraps the UNet's forward for one batch of jobs (each with its own prompt plan and number of
images) and decides what each image conditions on at each call:

- Several jobs in one call: image i uses its own job's plan, so prompts, AND parts and
  negative prompts may all differ between the jobs of a batch.
- Prompt editing: the text of every AND part (and of the negative prompt) in force at the
  current step, switched as the step callback advances `StepCounter`.
- Composable diffusion (AND): the UNet runs once for the negative prompt and once per part,
  and the combined prediction `u + sum(w_i * (c_i - u))` is guided as one prompt, giving
  A1111's `u + cfg * sum(w_i * (c_i - u))`.
- Guidance: each image with its own job's CFG scale, by diffusers' formula `u + cfg * (c - u)`;
  diffusers is handed the result as both halves, so its own guidance leaves it unchanged.
- ControlNet (pipeline/control.py): the batch's one unit adds its residuals to each call
  while the step is in its guidance window.
- Which rows share a UNet call: the batch's `BatchShape` (the rules are in
  pipeline/batching.py): in fixed-size calls (the default), so that image i of a batch is
  bit-identical whichever jobs shared it, or all rows of one shape at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.batching import BatchMode, BatchShape, RowChecks, UNetCall, call_in_fixed_rows
from pipeline.control import ControlPass
from pipeline.prompts.encoding import Conditioner
from pipeline.prompts.plan import PromptPlan


@dataclass
class StepCounter:
    """Sampling steps done so far, in the user's steps (second-order samplers call the
    UNet about twice per step)."""

    steps: int
    calls_done: int = 0
    total_calls: int = 0

    def advance(self, total_calls: int) -> None:
        self.total_calls = total_calls
        self.calls_done += 1

    @property
    def done(self) -> int:
        if not self.total_calls:
            return 0
        return min(self.steps - 1, math.floor(self.calls_done * self.steps / self.total_calls))


@dataclass(frozen=True)
class _StepConditioning:
    negative: torch.Tensor  # (1, tokens, width)
    parts: tuple[torch.Tensor, ...]
    weights: tuple[float, ...]
    stacked: torch.Tensor  # (1 + parts, tokens, width): negative first

    @property
    def plain(self) -> bool:
        """One part at weight 1: the positive prediction is that part's own."""
        return len(self.weights) == 1 and self.weights[0] == 1.0


@dataclass(frozen=True)
class _ImageRows:
    """What one image runs through the UNet at this call."""

    step: _StepConditioning
    with_negative: bool  # its first row is the negative prompt's
    context: torch.Tensor  # (rows, tokens, width)


class GuidedUNet:
    """Per-image conditioning for a batch of jobs: `plans[j]` conditions the next
    `images_per_plan[j]` images of the batch, in order."""

    def __init__(
        self,
        plans: Sequence[PromptPlan],
        images_per_plan: Sequence[int],
        scales: Sequence[float],
        encoder: Conditioner,
        counter: StepCounter,
        shape: BatchShape,
        rows_per_call: int,
        checks: RowChecks,
        control: ControlPass | None = None,
    ) -> None:
        """`rows_per_call`: the fixed call size at this pass's image size
        (`shape.rows_for`); `checks`: the engine's record of which call shapes keep rows
        independent on its device; `control`: the batch's ControlNet (one for all its
        images)."""
        if len(plans) != len(images_per_plan) or len(plans) != len(scales) or not plans:
            raise ValueError("give one image count and scale per prompt plan, and one plan")
        self.plans = tuple(plans)
        self.scales = tuple(scales)
        self.encoder = encoder
        self.counter = counter
        self.shape = shape
        self.rows_per_call = rows_per_call
        self.checks = checks
        self.control = control
        # The plan index of every image of the batch.
        self._image_plans = tuple(
            plan for plan, count in enumerate(images_per_plan) for _ in range(count)
        )
        self._built: dict[tuple[str, tuple[tuple[str, float], ...]], _StepConditioning] = {}

    @property
    def images(self) -> int:
        return len(self._image_plans)

    def conditioning(self, plan: int = 0) -> _StepConditioning:
        """The conditioning of `plans[plan]` in force now; built once per distinct set of texts."""
        key = self.plans[plan].at_step(self.counter.done)
        if key not in self._built:
            negative, parts = key
            padded = self.encoder.padded([negative, *(text for text, _ in parts)])
            self._built[key] = _StepConditioning(
                negative=padded[0],
                parts=tuple(padded[1:]),
                weights=tuple(weight for _, weight in parts),
                stacked=torch.cat(padded, dim=0),
            )
        return self._built[key]

    @contextmanager
    def wrapping(self, unet: nn.Module) -> Iterator[None]:
        original = unet.forward
        shadowed = unet.__dict__.get("forward")

        def forward(sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
            # The text embeddings diffusers passes (positionally or by name) are replaced.
            kwargs.pop("encoder_hidden_states", None)
            wants_dict = kwargs.pop("return_dict", True)
            merged = self._predict(original, sample, timestep, args[1:], kwargs)
            if wants_dict:
                from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

                return UNet2DConditionOutput(sample=merged)
            return (merged,)

        unet.forward = forward
        try:
            yield
        finally:
            if shadowed is None:
                del unet.forward
            else:
                unet.forward = shadowed

    def _predict(
        self,
        original: Any,
        sample: torch.Tensor,
        timestep: Any,
        extra_args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        # diffusers stacks [negative x N, positive x N] when it guides.
        guided = sample.shape[0] == 2 * self.images
        steps = [self.conditioning(plan) for plan in range(len(self.plans))]
        rows = [_image_rows(steps[plan], guided) for plan in self._image_plans]
        predictions = self._run_groups(
            original, sample[: self.images], rows, timestep, extra_args, kwargs
        )
        guidance = [_guide(*pair) for pair in zip(rows, predictions, strict=True)]
        if not guided:
            return torch.stack([positive for _, positive in guidance])
        guided_rows = torch.stack(
            [
                negative + self.scales[plan] * (positive - negative)  # diffusers' own formula
                for plan, (negative, positive) in zip(self._image_plans, guidance, strict=True)
                if negative is not None
            ]
        )
        # diffusers' r + cfg * (r - r) is r again, bit for bit.
        return torch.cat([guided_rows, guided_rows], dim=0)

    def _run_groups(
        self,
        original: Any,
        latents: torch.Tensor,
        rows: list[_ImageRows],
        timestep: Any,
        extra_args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> list[torch.Tensor]:
        """Each image's UNet outputs, (rows, channels, height, width): the rows of images
        whose conditioning has one shape go through the UNet together."""

        def call(sample: torch.Tensor, step: Any, context: torch.Tensor) -> torch.Tensor:
            steps = _timesteps(step, sample.shape[0])
            text, arguments = self.encoder.unet_inputs(context, kwargs)
            if self.control is not None:
                negative_rows = None
                if self.control.reads_row_kinds:
                    # The last channel says which rows are negative prompts' (_run_group).
                    sample, negative_rows = sample[:, :-1], sample[:, -1, 0, 0]
                if self.control.active(self.counter.done, self.counter.steps):
                    extra = self.control.residuals(sample, steps, text, arguments, negative_rows)
                    arguments = {**arguments, **extra}
            return original(sample, steps, text, *extra_args, **arguments, return_dict=False)[0]

        outputs: dict[int, torch.Tensor] = {}
        for group in _same_shape(rows):
            for image, output in self._run_group(call, latents, rows, group, timestep).items():
                outputs[image] = output
        return [outputs[image] for image in range(len(rows))]

    def _run_group(
        self,
        call: UNetCall,
        latents: torch.Tensor,
        rows: list[_ImageRows],
        group: list[int],
        timestep: Any,
    ) -> dict[int, torch.Tensor]:
        sample = torch.cat(
            [
                latents[image : image + 1].repeat_interleave(len(rows[image].context), dim=0)
                for image in group
            ]
        )
        context = torch.cat([rows[image].context for image in group])
        if self.control is not None and self.control.reads_row_kinds:
            sample = _with_row_kinds(sample, [rows[image] for image in group])
        if self.shape.mode is BatchMode.WHOLE:
            output = call(sample, timestep, context)
        else:
            fixed = call_in_fixed_rows(
                call, sample, timestep, context, self.rows_per_call, self.checks
            )
            if fixed is None:  # this device mixes rows at this shape: each image alone
                return {
                    image: call(sample[span], timestep, context[span])
                    for image, span in zip(group, _spans(rows, group), strict=True)
                }
            output = fixed
        return {image: output[span] for image, span in zip(group, _spans(rows, group), strict=True)}


def _with_row_kinds(sample: torch.Tensor, rows: list[_ImageRows]) -> torch.Tensor:
    """`sample` with one more channel, 1 on a negative prompt's row: it travels with its row
    through fixed-size calls, padding and the row checks, where ControlNet's "ControlNet is
    more important" mode reads it."""
    kinds = torch.cat(
        [
            torch.tensor(
                [float(image.with_negative and index == 0) for index in range(len(image.context))]
            )
            for image in rows
        ]
    ).to(sample.device, sample.dtype)
    plane = kinds.view(-1, 1, 1, 1).expand(-1, 1, *sample.shape[2:])
    return torch.cat([sample, plane], dim=1)


def _same_shape(rows: list[_ImageRows]) -> list[list[int]]:
    """The images whose text conditioning has one shape (tokens, width), in order; their rows
    may share UNet calls whatever each image's row count."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for image, image_rows in enumerate(rows):
        groups.setdefault(tuple(image_rows.context.shape[1:]), []).append(image)
    return list(groups.values())


def _spans(rows: list[_ImageRows], group: list[int]) -> list[slice]:
    """Where each image of `group` has its rows in the group's stacked call."""
    spans: list[slice] = []
    start = 0
    for image in group:
        count = len(rows[image].context)
        spans.append(slice(start, start + count))
        start += count
    return spans


def _image_rows(step: _StepConditioning, guided: bool) -> _ImageRows:
    # An AND prompt needs the negative prediction even when diffusers does no guidance.
    with_negative = guided or not step.plain
    context = step.stacked if with_negative else step.stacked[1:]
    return _ImageRows(step=step, with_negative=with_negative, context=context)


def _timesteps(timestep: Any, rows: int) -> Any:
    if isinstance(timestep, torch.Tensor) and timestep.ndim > 0:
        return timestep[:1].expand(rows)
    return timestep


def _guide(rows: _ImageRows, prediction: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One image's (negative, positive) predictions from its rows' outputs."""
    negative = prediction[0] if rows.with_negative else None
    parts = prediction[1:] if rows.with_negative else prediction
    return negative, _combine(parts, negative, rows.step)


def _combine(
    parts: torch.Tensor, negative: torch.Tensor | None, step: _StepConditioning
) -> torch.Tensor:
    """The positive prediction diffusers should see; exactly the part's own when plain."""
    if step.plain:
        return parts[0]
    assert negative is not None
    combined = negative.clone()
    for index, weight in enumerate(step.weights):
        combined += weight * (parts[index] - negative)
    return combined


@contextmanager
def vae_slicing(vae: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Encode and decode one image at a time for this batch (see pipeline/batching.py)."""
    previous = bool(getattr(vae, "use_slicing", False))
    vae.use_slicing = enabled or previous
    try:
        yield
    finally:
        vae.use_slicing = previous
