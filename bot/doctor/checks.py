"""What a check returns, and the guard that turns a check's own crash into a failed check."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pipeline.errors import first_line

log = logging.getLogger(__name__)

GIB = 1024**3


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but worse than it could (slow, optional piece missing)
    FAIL = "fail"  # Easel will not work, or part of it will not


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    @classmethod
    def ok(cls, name: str, detail: str) -> Check:
        return cls(name, Status.OK, detail)

    @classmethod
    def warn(cls, name: str, detail: str, fix: str) -> Check:
        return cls(name, Status.WARN, detail, fix)

    @classmethod
    def fail(cls, name: str, detail: str, fix: str) -> Check:
        return cls(name, Status.FAIL, detail, fix)


def guarded(name: str, check: Callable[[], Check]) -> Check:
    """The check's result, or a failed check saying it could not run."""
    try:
        return check()
    except Exception as error:  # a doctor that crashes tells the operator nothing
        return _crashed(name, error)


def guarded_all(name: str, check: Callable[[], list[Check]]) -> list[Check]:
    try:
        return check()
    except Exception as error:
        return [_crashed(name, error)]


def _crashed(name: str, error: Exception) -> Check:
    log.debug("The %s check failed", name, exc_info=True)
    return Check.fail(
        name,
        f"could not be checked: {type(error).__name__}: {first_line(error)}",
        "run `EASEL_DEBUG=1 easel doctor` for the traceback and report it",
    )


def gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"


def nearest_existing(path: Path) -> Path:
    """`path`, or the closest folder above it that exists (where it would be created)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()
