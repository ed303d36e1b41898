"""Attention/emphasis: `(word)`, `[word]`, `(word:1.5)` and `BREAK` turned into weighted runs.

This is a reimplementation written from AUTOMATIC1111's documented behaviour (the wiki
"Features" page, Attention/emphasis and BREAK); A1111 is AGPL and none of its code is copied.
It is a hand-written scanner: round and square brackets are tracked on two independent stacks,
as A1111 documents, so `(a [b) c]` is accepted and each run is weighted by every bracket that
was open when it was written.

Rules:
- `(x)` multiplies by 1.1, `[x]` divides by 1.1, `(x:1.5)` multiplies by 1.5; nesting multiplies.
  A weight is an optionally signed decimal (`1.5`, `.5`, `-1`), whitespace allowed around it;
  anything else after the colon (`1e3`, `1.2.3`, a number too big for a float) is plain text
  and the `)` then closes with the default 1.1. Square brackets take no number.
- A backslash makes the next character literal: `\\(`, `\\)`, `\\[`, `\\]`, `\\\\` as documented,
  and also `\\:` (no weight) and `\\B` (a literal `BREAK`). A trailing lone backslash is kept.
- Brackets still open at the end are closed there; unmatched closing brackets are text.
- `BREAK` as a whole uppercase word is the marker `("BREAK", -1)`. The whitespace around it is
  dropped (A1111 strips it too), and the marker is never weighted or merged, even in brackets.
- Neighbouring runs of equal weight merge, empty runs are dropped, and an empty result is
  `[("", 1.0)]`. Weights are always finite: products that overflow are clamped to the largest
  float. `weight_out_of_range` finds a run weighted outside MIN_EMPHASIS..MAX_EMPHASIS (0 to 4:
  past that CLIP embeddings blow up and images turn black), which the prompt plan refuses.
"""

import math
import sys
from dataclasses import dataclass

from pipeline.prompts.syntax import is_whole_word_at, parse_number

ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1
BREAK = "BREAK"
BREAK_WEIGHT = -1.0

_NUMBER_CHARS = frozenset("+-.0123456789")
MIN_EMPHASIS = 0.0
MAX_EMPHASIS = 4.0


@dataclass
class _Bracket:
    parent: int | None  # index of the bracket of the same kind that encloses this one
    factor: float | None = None  # None while still open


@dataclass(frozen=True)
class _Run:
    text: str
    round_bracket: int | None  # innermost round bracket open when the text was written
    square_bracket: int | None
    is_break: bool = False


def _bounded(value: float) -> float:
    return value if math.isfinite(value) else math.copysign(sys.float_info.max, value)


class _BracketStack:
    """The brackets of one kind: every one ever opened, and the innermost still open."""

    def __init__(self, default_factor: float) -> None:
        self.default_factor = default_factor
        self.brackets: list[_Bracket] = []
        self.innermost: int | None = None

    def open(self) -> None:
        self.brackets.append(_Bracket(parent=self.innermost))
        self.innermost = len(self.brackets) - 1

    def close(self, factor: float) -> None:
        assert self.innermost is not None
        bracket = self.brackets[self.innermost]
        bracket.factor = factor
        self.innermost = bracket.parent

    def cumulative(self) -> list[float]:
        """Each bracket's factor times those of all brackets around it; open ones get defaults."""
        products: list[float] = []
        for bracket in self.brackets:
            factor = self.default_factor if bracket.factor is None else bracket.factor
            outer = 1.0 if bracket.parent is None else products[bracket.parent]
            products.append(_bounded(factor * outer))
        return products


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.runs: list[_Run] = []
        self.buffer: list[str] = []
        self.round = _BracketStack(ROUND_FACTOR)
        self.square = _BracketStack(SQUARE_FACTOR)

    def scan(self) -> list[tuple[str, float]]:
        while self.pos < len(self.text):
            self._step()
        self._flush()
        return _weighted_runs(self.runs, self.round.cumulative(), self.square.cumulative())

    def _step(self) -> None:
        char = self.text[self.pos]
        if char == "\\":
            self._escape()
        elif char in "([":
            self._flush()
            (self.round if char == "(" else self.square).open()
            self.pos += 1
        elif char == ")" and self.round.innermost is not None:
            self._close(self.round, ROUND_FACTOR, self.pos + 1)
        elif char == "]" and self.square.innermost is not None:
            self._close(self.square, SQUARE_FACTOR, self.pos + 1)
        elif char == ":" and self._weighted_close():
            return
        elif char == "B" and is_whole_word_at(self.text, self.pos, BREAK):
            self._break()
        else:
            self.buffer.append(char)
            self.pos += 1

    def _escape(self) -> None:
        escaped = self.text[self.pos + 1 : self.pos + 2]
        self.buffer.append(escaped or "\\")
        self.pos += 2

    def _close(self, stack: _BracketStack, factor: float, resume_at: int) -> None:
        self._flush()
        stack.close(factor)
        self.pos = resume_at

    def _weighted_close(self) -> bool:
        """Close the innermost round bracket at `:<number>)`; False (nothing done) otherwise."""
        if self.round.innermost is None:
            return False
        end = self.pos + 1
        # Only number characters and whitespace may follow, so each colon scans a short stretch.
        while end < len(self.text) and (
            self.text[end] in _NUMBER_CHARS or self.text[end].isspace()
        ):
            end += 1
        if end == len(self.text) or self.text[end] != ")":
            return False
        weight = parse_number(self.text[self.pos + 1 : end])
        if weight is None:
            return False
        self._close(self.round, weight, end + 1)
        return True

    def _break(self) -> None:
        before = "".join(self.buffer).rstrip()
        self.buffer = [before]
        self._flush()
        self.runs.append(_Run(BREAK, None, None, is_break=True))
        self.pos += len(BREAK)
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _flush(self) -> None:
        text = "".join(self.buffer)
        self.buffer = []
        if text:
            self.runs.append(_Run(text, self.round.innermost, self.square.innermost))


def _run_weight(run: _Run, round_products: list[float], square_products: list[float]) -> float:
    if run.is_break:
        return BREAK_WEIGHT
    round_weight = 1.0 if run.round_bracket is None else round_products[run.round_bracket]
    square_weight = 1.0 if run.square_bracket is None else square_products[run.square_bracket]
    return _bounded(round_weight * square_weight)


@dataclass
class _Merged:
    parts: list[str]
    weight: float
    is_break: bool


def _weighted_runs(
    runs: list[_Run], round_products: list[float], square_products: list[float]
) -> list[tuple[str, float]]:
    merged: list[_Merged] = []
    for run in runs:
        weight = _run_weight(run, round_products, square_products)
        last = merged[-1] if merged else None
        if last and not last.is_break and not run.is_break and last.weight == weight:
            last.parts.append(run.text)
        else:
            merged.append(_Merged([run.text], weight, run.is_break))
    return [("".join(group.parts), group.weight) for group in merged] or [("", 1.0)]


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """`text` as (run, weight) pairs; `("BREAK", -1.0)` marks a BREAK. Never raises."""
    return _Scanner(text).scan()


def weight_out_of_range(text: str) -> tuple[str, float] | None:
    """The first run of `text` whose emphasis (all its brackets multiplied) is outside
    MIN_EMPHASIS..MAX_EMPHASIS, with that weight; None when every weight is within."""
    for run, weight in parse_emphasis(text):
        if run == BREAK and weight == BREAK_WEIGHT:
            continue
        if not MIN_EMPHASIS <= weight <= MAX_EMPHASIS:
            return run, weight
    return None
