"""Composable Diffusion: a prompt split at `AND` into parts, each with an optional weight.

This is a reimplementation written from AUTOMATIC1111's documented behaviour (the wiki
"Features" page, Composable Diffusion: `a cat :1.2 AND a dog AND a penguin :2.2`); A1111 is
AGPL and none of its code is copied.

Rules:
- Parts are separated by `AND` as a whole uppercase word (`ANDROID`, `ANDY`, `and`, `_AND_`
  do not split). Like A1111 the split ignores brackets: an `AND` inside `[...]` splits too.
- A part ending in `:<number>` (optionally signed decimal, whitespace allowed around the colon
  and number) takes that weight, negative weights included; otherwise the weight is 1.0 and a
  trailing `:x` that is not a number stays in the text.
- Part texts are stripped of surrounding whitespace. Empty parts (`a AND AND b`, a trailing
  `AND`) are kept as empty text, as A1111 keeps them: they condition on the empty prompt.
"""

from dataclasses import dataclass

from pipeline.prompts.syntax import parse_number, split_whole_word

AND = "AND"


@dataclass(frozen=True)
class WeightedPrompt:
    text: str
    weight: float = 1.0


def _weighted(part: str) -> WeightedPrompt:
    colon = part.rfind(":")
    if colon != -1:
        weight = parse_number(part[colon + 1 :])
        if weight is not None:
            return WeightedPrompt(part[:colon].strip(), weight)
    return WeightedPrompt(part.strip())


def split_and(text: str) -> list[WeightedPrompt]:
    """The `AND` parts of `text` with their weights; always at least one part. Never raises."""
    return [_weighted(part) for part in split_whole_word(text, AND)]
