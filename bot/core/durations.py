"""How long a ban lasts, as admins write it (`30m`, `12h`, `7d`, `2w`), and its end as users
read it ("2026-12-09 14:00 UTC")."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

DURATION_RE = re.compile(r"(\d{1,6})([mhdw])", re.IGNORECASE)
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LONGEST = timedelta(days=3650)  # longer than this is a ban without an end


class DurationError(ValueError):
    """Not a duration Easel reads; the message says what is."""


def is_duration(text: str) -> bool:
    """Whether `text` is written like a duration (its size is checked by `parse_duration`)."""
    return DURATION_RE.fullmatch(text.strip()) is not None


def parse_duration(text: str) -> timedelta:
    """`30m`, `12h`, `7d`, `2w`: a number and a unit (minutes, hours, days, weeks)."""
    match = DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise DurationError(
            f"{text!r} is not a duration: write a number and m, h, d or w (30m, 12h, 7d, 2w)"
        )
    length = timedelta(seconds=int(match[1]) * UNIT_SECONDS[match[2].lower()])
    if not length:
        raise DurationError("a ban of 0 lasts no time: give a length such as 30m, 12h or 7d")
    if length > LONGEST:
        raise DurationError(
            f"{text} is longer than {LONGEST.days} days: leave the length out for a ban "
            "without an end"
        )
    return length


def end_after(length: timedelta, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) + length


def utc_text(moment: datetime) -> str:
    """A moment to the minute, in UTC: "2026-12-09 14:00 UTC"."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
