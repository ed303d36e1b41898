"""The conditioning the UNet sees at each step: prompt editing, AND, and exact batches.

diffusers' pipeline stays in charge of the loop, the scheduler and classifier-free guidance;
this wraps the UNet's forward for one job and decides what each call conditions on:

- Prompt editing: the text of every AND part (and of the negative prompt) in force at the
  current step, switched as the step callback advances `StepCounter`.
- Composable diffusion (AND): the UNet runs once for the negative prompt and once per part,
  and the wrapper hands diffusers the combined prediction `u + sum(w_i * (c_i - u))`, so that
  diffusers' own `u + cfg * (c - u)` becomes A1111's `u + cfg * sum(w_i * (c_i - u))`.
- Exact batches: each image's rows go through the UNet on their own, so image i of a batch is
  bit-identical to generating it alone (matrix kernels round differently by row count).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.prompts.encoding import PromptEncoder
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


class GuidedUNet:
    def __init__(
        self,
        plan: PromptPlan,
        encoder: PromptEncoder,
        counter: StepCounter,
        images: int,
        exact: bool,
    ) -> None:
        self.plan = plan
        self.encoder = encoder
        self.counter = counter
        self.images = images
        self.exact = exact
        self._built: dict[tuple[str, tuple[tuple[str, float], ...]], _StepConditioning] = {}

    def conditioning(self) -> _StepConditioning:
        """The conditioning in force now; built once per distinct set of texts."""
        key = self.plan.at_step(self.counter.done)
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
        rows = sample.shape[0]
        guided = rows == 2 * self.images  # diffusers stacked [negative x N, positive x N]
        step = self.conditioning()
        plain = len(step.parts) == 1 and step.weights == (1.0,)
        with_negative = guided or not plain
        per_image = step.stacked if with_negative else step.stacked[1:]
        rows_per_image = per_image.shape[0]
        latents = sample[: self.images]
        groups = (
            [[image] for image in range(self.images)] if self.exact else [list(range(self.images))]
        )
        outputs: list[torch.Tensor] = []
        for group in groups:
            batch = latents[group].repeat_interleave(rows_per_image, dim=0)
            context = per_image.repeat(len(group), 1, 1)
            steps = _timesteps(timestep, batch.shape[0])
            predicted = original(batch, steps, context, *extra_args, **kwargs, return_dict=False)
            output = predicted[0]
            outputs.append(output.view(len(group), rows_per_image, *output.shape[1:]))
        predictions = torch.cat(outputs, dim=0)  # (images, rows per image, c, h, w)
        negative = predictions[:, 0] if with_negative else None
        positive = _combine(predictions[:, 1:] if with_negative else predictions, negative, step)
        if guided:
            assert negative is not None
            return torch.cat([negative, positive], dim=0)
        return positive


def _timesteps(timestep: Any, rows: int) -> Any:
    if isinstance(timestep, torch.Tensor) and timestep.ndim > 0:
        return timestep[:1].expand(rows)
    return timestep


def _combine(
    parts: torch.Tensor, negative: torch.Tensor | None, step: _StepConditioning
) -> torch.Tensor:
    """The positive prediction diffusers should see; exactly the part's own when plain."""
    if len(step.weights) == 1 and step.weights[0] == 1.0:
        return parts[:, 0]
    assert negative is not None
    combined = negative.clone()
    for index, weight in enumerate(step.weights):
        combined += weight * (parts[:, index] - negative)
    return combined


@contextmanager
def vae_slicing(vae: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Encode and decode one image at a time for this job (exact batches)."""
    previous = bool(getattr(vae, "use_slicing", False))
    vae.use_slicing = enabled or previous
    try:
        yield
    finally:
        vae.use_slicing = previous
