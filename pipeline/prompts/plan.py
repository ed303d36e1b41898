"""What a prompt asks for at each sampling step: LoRA tags out, AND parts, edit schedules.

The order follows A1111: extra-network tags are taken out of the whole prompt first, then the
prompt splits into AND parts, and each part gets its own prompt-editing schedule. The negative
prompt is scheduled too, but is never split by AND.

Both texts are cleaned first (lone surrogates and control characters, see pipeline.text), and
every text the plan will encode must keep its emphasis within MIN_EMPHASIS..MAX_EMPHASIS.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.prompts.composable import split_and
from pipeline.prompts.emphasis import MAX_EMPHASIS, MIN_EMPHASIS, weight_out_of_range
from pipeline.prompts.extra_networks import LoraTag, extract_loras
from pipeline.prompts.schedule import prompt_schedule
from pipeline.prompts.syntax import WeightOutOfRange
from pipeline.text import clean_text


@dataclass(frozen=True)
class ScheduledText:
    end_step: int  # as prompt_schedule gives it; see PromptPlan.at_step
    text: str


Schedule = tuple[ScheduledText, ...]


@dataclass(frozen=True)
class PromptPart:
    weight: float
    schedule: Schedule


@dataclass(frozen=True)
class PromptPlan:
    parts: tuple[PromptPart, ...]
    negative: Schedule
    loras: tuple[LoraTag, ...]

    def texts(self) -> set[str]:
        """Every distinct text the job will encode."""
        found = {entry.text for entry in self.negative}
        for part in self.parts:
            found.update(entry.text for entry in part.schedule)
        return found

    def at_step(self, done: int) -> tuple[str, tuple[tuple[str, float], ...]]:
        """(negative text, ((part text, weight), ...)) for the step after `done` steps.

        A1111's rule: the first entry with `done <= end_step` applies, so `[cat:dog:0.4]` at
        20 steps draws a cat for 9 steps (done = 0..8) and a dog for the other 11.
        """
        parts = tuple((_text_at(part.schedule, done), part.weight) for part in self.parts)
        return _text_at(self.negative, done), parts


def _text_at(schedule: Schedule, done: int) -> str:
    for entry in schedule:
        if done <= entry.end_step:
            return entry.text
    return schedule[-1].text


def _scheduled(text: str, steps: int) -> Schedule:
    return tuple(ScheduledText(end, part) for end, part in prompt_schedule(text, steps))


def plan_prompt(prompt: str, negative_prompt: str, steps: int) -> PromptPlan:
    """The plan of a prompt; raises PromptSyntaxError (WeightOutOfRange among them) for a bad
    LoRA tag or an emphasis weight out of bounds."""
    text, loras = extract_loras(clean_text(prompt))
    parts = tuple(
        PromptPart(weight=part.weight, schedule=_scheduled(part.text, steps))
        for part in split_and(text)
    )
    negative = _scheduled(clean_text(negative_prompt), steps)
    plan = PromptPlan(parts=parts, negative=negative, loras=tuple(loras))
    _check_emphasis(plan)
    return plan


def _check_emphasis(plan: PromptPlan) -> None:
    for text in plan.texts():
        found = weight_out_of_range(text)
        if found is not None:
            run, weight = found
            raise WeightOutOfRange("emphasis", run, weight, MIN_EMPHASIS, MAX_EMPHASIS)
