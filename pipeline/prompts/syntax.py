"""Pieces shared by the prompt-language modules: the syntax error, numbers and whole words.

The prompt language is AUTOMATIC1111's web UI syntax. This package is a reimplementation
written from A1111's documented behaviour (its wiki "Features" page and the examples there);
A1111 is AGPL, and none of its code, regular expressions or grammar is copied here.
"""

import math

from pipeline.errors import InvalidRequestError

_DIGITS = frozenset("0123456789")


class PromptSyntaxError(InvalidRequestError):
    """A prompt uses the prompt language in a way that cannot be honoured (e.g. a bad LoRA tag)."""


class WeightOutOfRange(PromptSyntaxError):
    """A LoRA or emphasis weight outside its bounds; the fields let a front end translate it.

    `kind` is "lora" or "emphasis"; `where` is the tag or the weighted text (shortened).
    """

    def __init__(self, kind: str, where: str, weight: float, low: float, high: float) -> None:
        self.kind = kind
        self.where = shorten(where)
        self.weight = weight
        self.low = low
        self.high = high
        if kind == "lora":
            message = (
                f"{self.where}: a LoRA weight must be from {low:g} to {high:g}, not {weight:g}."
            )
            korean = (
                f"{self.where}: LoRA 가중치는 {low:g}에서 {high:g} 사이여야 합니다. "
                f"입력: {weight:g}"
            )
        else:
            message = (
                f"The emphasis on {self.where!r} comes to {weight:g}; emphasis weights (nested "
                f"brackets multiply) must be from {low:g} to {high:g}."
            )
            korean = (
                f"{self.where!r}의 강조 가중치가 {weight:g}입니다. 강조 가중치(괄호를 겹치면 "
                f"곱해집니다)는 {low:g}에서 {high:g} 사이여야 합니다."
            )
        super().__init__(message, ko=korean)


_SHORTENED = 40


def shorten(text: str, length: int = _SHORTENED) -> str:
    """`text` cut to about `length` characters for a message, marked with an ellipsis."""
    return text if len(text) <= length else text[: length - 1] + "…"


def is_word_char(char: str) -> bool:
    """Whether `char` is part of a word, as a regex `\\w` would match it."""
    return char.isalnum() or char == "_"


def is_whole_word_at(text: str, start: int, word: str) -> bool:
    """Whether `word` occurs at `start` in `text` with no word character on either side."""
    end = start + len(word)
    if not text.startswith(word, start):
        return False
    before_ok = start == 0 or not is_word_char(text[start - 1])
    after_ok = end == len(text) or not is_word_char(text[end])
    return before_ok and after_ok


def split_whole_word(text: str, word: str) -> list[str]:
    """`text` split at each whole-word occurrence of `word` (the separators are dropped)."""
    parts: list[str] = []
    start = 0
    found = text.find(word)
    while found != -1:
        if is_whole_word_at(text, found, word):
            parts.append(text[start:found])
            start = found + len(word)
            found = text.find(word, start)
        else:
            found = text.find(word, found + 1)
    parts.append(text[start:])
    return parts


def is_unsigned_decimal(text: str) -> bool:
    """Whether `text` is digits with at most one decimal point and at least one digit.

    `1`, `1.`, `.5` and `1.25` qualify; signs, exponents, `inf`, `nan` and `1_000` do not.
    """
    if not text or text.count(".") > 1:
        return False
    digits = text.replace(".", "")
    return bool(digits) and all(char in _DIGITS for char in digits)


def parse_number(text: str) -> float | None:
    """A finite weight written as an optionally signed decimal (`1.2`, `-.5`, `+2`), else None.

    Surrounding whitespace is allowed. Values too large for a float are None, never inf.
    """
    stripped = text.strip()
    unsigned = stripped[1:] if stripped[:1] in ("+", "-") else stripped
    if not is_unsigned_decimal(unsigned):
        return None
    value = float(stripped)
    return value if math.isfinite(value) else None
