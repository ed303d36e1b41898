"""A1111 sampler names and schedule types, checked without torch or diffusers.

Options parsing and the command line only need the canonical name; `pipeline.samplers` maps
that name to a diffusers scheduler when a job runs (and its tests check that the Karras list
here matches what the scheduler classes take).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pipeline.errors import UnknownSamplerError

# The names A1111 lists. Since A1111 1.9 the schedule is a separate choice, so every sampler whose
# scheduler class takes Karras sigmas also resolves as "<name> Karras" ("Euler Karras").
SAMPLER_NAMES: tuple[str, ...] = (
    "Euler a",
    "Euler",
    "LMS",
    "LMS Karras",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM2 Karras",
    "DPM2 a Karras",
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras",
    "DPM++ SDE",
    "DPM++ SDE Karras",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
)
BASE_NAMES: tuple[str, ...] = tuple(name for name in SAMPLER_NAMES if not name.endswith(" Karras"))

KARRAS = "Karras"
SCHEDULE_TYPES: tuple[str, ...] = ("Automatic", KARRAS)
KARRAS_SUFFIX = " " + KARRAS

# The samplers whose diffusers scheduler takes `use_karras_sigmas`.
KARRAS_BASES: tuple[str, ...] = (
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2M",
    "DPM++ 2M SDE",
    "DPM++ SDE",
    "UniPC",
)
# Every name that resolves: A1111's list first, then the Karras pairings it does not list.
ALL_NAMES: tuple[str, ...] = SAMPLER_NAMES + tuple(
    name + KARRAS_SUFFIX for name in KARRAS_BASES if name + KARRAS_SUFFIX not in SAMPLER_NAMES
)
_MAX_ECHOED_CHARS = 60


def normalize_sampler(text: str) -> str:
    return " ".join(text.split()).casefold()


_CANONICAL: dict[str, str] = {normalize_sampler(name): name for name in ALL_NAMES}


def split_schedule(name: str) -> tuple[str, str | None]:
    """("DPM++ 2M", "Karras") for "DPM++ 2M Karras"; (name, None) without a schedule."""
    if name.endswith(KARRAS_SUFFIX):
        return name.removesuffix(KARRAS_SUFFIX), KARRAS
    return name, None


def sampler_name(name: str, schedule_type: str | None = None) -> str:
    """The canonical A1111 name for `name`, case- and spacing-insensitively.

    `schedule_type` is A1111's newer separate field: "Karras" turns "DPM++ 2M" into
    "DPM++ 2M Karras" and "Euler" into "Euler Karras" (any sampler whose scheduler takes Karras
    sigmas); None, "" or "Automatic" keeps the sampler's default.
    """
    canonical = _CANONICAL.get(normalize_sampler(name))
    if canonical is None:
        raise _unknown_sampler(name)
    if _parse_schedule_type(schedule_type) == KARRAS:
        return _with_karras(canonical)
    return canonical


@dataclass(frozen=True)
class SamplerName:
    """A checked sampler name, before any scheduler is built."""

    name: str  # canonical A1111 name, " Karras" included ("DPM++ 2M Karras")
    base_name: str  # the name without its schedule ("DPM++ 2M")
    schedule_type: str | None  # "Karras", or None for the sampler's default schedule


def resolve_sampler_name(name: str, schedule_type: str | None = None) -> SamplerName:
    """`sampler_name` with its parts, for callers that need no scheduler."""
    canonical = sampler_name(name, schedule_type)
    base_name, schedule = split_schedule(canonical)
    return SamplerName(canonical, base_name, schedule)


def _echo(text: str) -> str:
    """Quote user input for a one-line message: escaped, and cut if it is long."""
    if len(text) > _MAX_ECHOED_CHARS:
        text = text[:_MAX_ECHOED_CHARS] + "..."
    return repr(text)


def _closest_name(name: str) -> str | None:
    matches = difflib.get_close_matches(normalize_sampler(name), list(_CANONICAL), n=1, cutoff=0.6)
    return _CANONICAL[matches[0]] if matches else None


def _unknown_sampler(name: str) -> UnknownSamplerError:
    closest = _closest_name(name)
    hint = f" Did you mean {closest!r}?" if closest else ""
    valid = ", ".join(SAMPLER_NAMES)
    hint_ko = f" {closest!r}을(를) 찾으셨나요?" if closest else ""
    return UnknownSamplerError(
        f"Unknown sampler {_echo(name)}.{hint} Valid samplers: {valid}.",
        ko=f"알 수 없는 샘플러입니다: {_echo(name)}.{hint_ko} 쓸 수 있는 샘플러: {valid}.",
    )


def _parse_schedule_type(schedule_type: str | None) -> str | None:
    """Returns KARRAS, or None for the sampler's own schedule ("Automatic")."""
    key = normalize_sampler(schedule_type or "")
    if key in ("", "automatic"):
        return None
    if key == KARRAS.casefold():
        return KARRAS
    valid = ", ".join(SCHEDULE_TYPES)
    raise UnknownSamplerError(
        f"Unknown schedule type {_echo(schedule_type or '')}. Valid schedule types: {valid}.",
        ko=f"알 수 없는 스케줄 종류입니다: {_echo(schedule_type or '')}. "
        f"쓸 수 있는 스케줄 종류: {valid}.",
    )


def _with_karras(canonical: str) -> str:
    base_name, schedule = split_schedule(canonical)
    if schedule == KARRAS:
        return canonical
    if base_name not in KARRAS_BASES:
        with_karras = ", ".join(KARRAS_BASES)
        raise UnknownSamplerError(
            f"Sampler {canonical!r} has no Karras schedule: use schedule type Automatic, "
            f"or one of these samplers: {with_karras}.",
            ko=f"{canonical!r} 샘플러에는 Karras 스케줄이 없습니다. 스케줄 종류를 Automatic으로 "
            f"하거나 다음 샘플러 중 하나를 쓰세요: {with_karras}.",
        )
    return base_name + KARRAS_SUFFIX
