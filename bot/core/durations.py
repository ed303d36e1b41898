"""Lengths of time as people write them (`30m`, `12h`, `7d`, `2w`): how long a ban lasts, how
far back `--since` looks, how old `easel prune` deletes; and a moment as users read it
("2026-12-09 14:00 UTC"). One reading everywhere: m is minutes, never months."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

DURATION_RE = re.compile(r"(\d{1,6})\s*([mhdw])", re.IGNORECASE)
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LONGEST = timedelta(days=3650)  # longer than this is a ban without an end


class DurationError(ValueError):
    """Not a length Easel reads; the message says what is, `reason` which rule it broke."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "shape", "zero" or "too_long"


def is_duration(text: str) -> bool:
    """Whether `text` is written like a duration (its size is checked by `parse_length`)."""
    return DURATION_RE.fullmatch(text.strip()) is not None


def parse_length(text: str) -> timedelta:
    """`30m`, `12h`, `7d`, `2w`: a number and a unit (minutes, hours, days, weeks), more than
    nothing and at most ten years."""
    match = DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise DurationError(
            f"{text!r} is not a length of time: write a number and m, h, d or w (30m, 12h, 7d, 2w)",
            "shape",
        )
    length = timedelta(seconds=int(match[1]) * UNIT_SECONDS[match[2].lower()])
    if not length:
        raise DurationError(f"{text!r} is no time at all: give 30m, 12h or 7d", "zero")
    if length > LONGEST:
        raise DurationError(f"{text!r} is longer than {LONGEST.days} days", "too_long")
    return length


def parse_duration(text: str) -> timedelta:
    """A ban's length (`parse_length`), its errors worded for a ban."""
    try:
        return parse_length(text)
    except DurationError as error:
        if error.reason == "zero":
            message = "a ban of 0 lasts no time: give a length such as 30m, 12h or 7d"
        elif error.reason == "too_long":
            message = (
                f"{text} is longer than {LONGEST.days} days: leave the length out for a ban "
                "without an end"
            )
        else:
            raise
        raise DurationError(message, error.reason) from None


def end_after(length: timedelta, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) + length


def utc_text(moment: datetime) -> str:
    """A moment to the minute, in UTC: "2026-12-09 14:00 UTC"."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
