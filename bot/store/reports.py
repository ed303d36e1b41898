"""Usage figures for the operator (`easel stats`): jobs and images per UTC day, per user and per
kind, how long jobs waited and ran, why they failed, and the GPU time they took.

The period's rows are read once and the figures computed here in Python: percentiles use the
nearest-rank rule (the p-th percentile of n sorted values is the value at rank ceil(p/100 * n)),
so every figure is a time some job really took; the median is `statistics.median`.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa

from bot.store.database import Store
from bot.store.models import Job, JobKind, JobStatus, User

# The reason a failed job without a readable message document is counted under.
UNKNOWN_REASON = "unknown"


@dataclass(frozen=True)
class DayUsage:
    """One UTC day: the jobs asked for that day and the images the finished ones made."""

    day: date
    jobs: int
    images: int
    failed: int
    cancelled: int


@dataclass(frozen=True)
class UserUsage:
    user_id: int
    platform: str
    platform_user_id: str
    display_name: str | None
    jobs: int
    images: int


@dataclass(frozen=True)
class KindUsage:
    kind: JobKind
    jobs: int
    images: int


@dataclass(frozen=True)
class Durations:
    """Seconds over `count` jobs; None when there were none."""

    count: int
    median: float | None
    p95: float | None


@dataclass(frozen=True)
class FailureCount:
    reason: str  # the message key of the job's error, e.g. failed_out_of_memory
    jobs: int


@dataclass(frozen=True)
class GpuTime:
    """GPU seconds of the period's done jobs. `measured` sums the recorded share of each job's
    batch; jobs from before it was recorded have none, and `estimated` sums their run time
    instead (an upper bound: jobs batched together ran in the same seconds)."""

    measured: float
    measured_jobs: int
    estimated: float
    estimated_jobs: int

    @property
    def total(self) -> float:
        return self.measured + self.estimated


@dataclass(frozen=True)
class UsageReport:
    start: datetime  # midnight UTC of the first day
    end: datetime  # when the report was made
    days: tuple[DayUsage, ...]  # every day of the period, oldest first, empty ones included
    users: tuple[UserUsage, ...]  # by images, then jobs, most first
    kinds: tuple[KindUsage, ...]  # by jobs, most first
    queue_wait: Durations  # started_at - created_at of every job that started
    run_time: Durations  # finished_at - started_at of every done job
    failures: tuple[FailureCount, ...]  # most first
    gpu: GpuTime

    @property
    def jobs(self) -> int:
        return sum(day.jobs for day in self.days)

    @property
    def images(self) -> int:
        return sum(day.images for day in self.days)

    @property
    def failed(self) -> int:
        return sum(day.failed for day in self.days)

    @property
    def cancelled(self) -> int:
        return sum(day.cancelled for day in self.days)


@dataclass(frozen=True)
class _Row:
    user_id: int
    kind: JobKind
    status: JobStatus
    image_count: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    gpu_seconds: float | None

    @property
    def images(self) -> int:
        """Images the job made: only a done job made any."""
        return self.image_count if self.status is JobStatus.DONE else 0


def usage_report(store: Store, days: int, now: datetime | None = None) -> UsageReport:
    """The figures of the last `days` UTC days, today included (jobs by when they were asked
    for)."""
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    end = (now or datetime.now(UTC)).astimezone(UTC)
    first_day = end.date() - timedelta(days=days - 1)
    start = datetime.combine(first_day, time(), tzinfo=UTC)
    rows = _rows(store, start, end)
    return UsageReport(
        start=start,
        end=end,
        days=_per_day(rows, first_day, days),
        users=_per_user(store, rows),
        kinds=_per_kind(rows),
        queue_wait=durations(
            [_seconds(row.created_at, row.started_at) for row in rows if row.started_at]
        ),
        run_time=durations(
            [
                _seconds(row.started_at, row.finished_at)
                for row in rows
                if row.status is JobStatus.DONE and row.started_at and row.finished_at
            ]
        ),
        failures=_failures(rows),
        gpu=_gpu_time(rows),
    )


def durations(seconds: Sequence[float]) -> Durations:
    if not seconds:
        return Durations(0, None, None)
    return Durations(len(seconds), statistics.median(seconds), nearest_rank(seconds, 95))


def nearest_rank(values: Sequence[float], percent: float) -> float:
    """The smallest value with at least `percent`% of the values at or below it."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def failure_reason(error: str | None) -> str:
    """The message key of a failed job's error document ({"key": ..., "args": ...})."""
    if not error:
        return UNKNOWN_REASON
    try:
        payload = json.loads(error)
    except ValueError:
        return UNKNOWN_REASON
    key = payload.get("key") if isinstance(payload, dict) else None
    return key if isinstance(key, str) and key else UNKNOWN_REASON


def _rows(store: Store, start: datetime, end: datetime) -> list[_Row]:
    query = sa.select(
        Job.user_id,
        Job.kind,
        Job.status,
        Job.image_count,
        Job.created_at,
        Job.started_at,
        Job.finished_at,
        Job.error,
        Job.gpu_seconds,
    ).where(Job.created_at >= start, Job.created_at <= end)
    with store.reading() as session:
        return [_Row(*row) for row in session.execute(query)]


def _per_day(rows: Sequence[_Row], first_day: date, days: int) -> tuple[DayUsage, ...]:
    jobs: Counter[date] = Counter()
    images: Counter[date] = Counter()
    failed: Counter[date] = Counter()
    cancelled: Counter[date] = Counter()
    for row in rows:
        day = row.created_at.astimezone(UTC).date()
        jobs[day] += 1
        images[day] += row.images
        failed[day] += row.status is JobStatus.FAILED
        cancelled[day] += row.status is JobStatus.CANCELLED
    every_day = (first_day + timedelta(days=offset) for offset in range(days))
    return tuple(
        DayUsage(day, jobs[day], images[day], failed[day], cancelled[day]) for day in every_day
    )


def _per_user(store: Store, rows: Sequence[_Row]) -> tuple[UserUsage, ...]:
    jobs: Counter[int] = Counter()
    images: Counter[int] = Counter()
    for row in rows:
        jobs[row.user_id] += 1
        images[row.user_id] += row.images
    if not jobs:
        return ()
    with store.reading() as session:
        people = {
            user.id: user
            for user in session.scalars(sa.select(User).where(User.id.in_(list(jobs))))
        }
    # A user forgotten between the two reads is left out: their jobs are gone too.
    usage = [
        UserUsage(
            user_id=user_id,
            platform=people[user_id].platform,
            platform_user_id=people[user_id].platform_user_id,
            display_name=people[user_id].display_name,
            jobs=count,
            images=images[user_id],
        )
        for user_id, count in jobs.items()
        if user_id in people
    ]
    return tuple(sorted(usage, key=lambda user: (-user.images, -user.jobs, user.user_id)))


def _per_kind(rows: Sequence[_Row]) -> tuple[KindUsage, ...]:
    jobs: Counter[JobKind] = Counter()
    images: Counter[JobKind] = Counter()
    for row in rows:
        jobs[row.kind] += 1
        images[row.kind] += row.images
    usage = [KindUsage(kind, count, images[kind]) for kind, count in jobs.items()]
    return tuple(sorted(usage, key=lambda kind: (-kind.jobs, kind.kind.value)))


def _failures(rows: Sequence[_Row]) -> tuple[FailureCount, ...]:
    reasons = Counter(failure_reason(row.error) for row in rows if row.status is JobStatus.FAILED)
    ordered = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    return tuple(FailureCount(reason, count) for reason, count in ordered)


def _gpu_time(rows: Sequence[_Row]) -> GpuTime:
    measured, measured_jobs, estimated, estimated_jobs = 0.0, 0, 0.0, 0
    for row in rows:
        if row.status is not JobStatus.DONE:
            continue
        if row.gpu_seconds is not None:
            measured += row.gpu_seconds
            measured_jobs += 1
        elif row.started_at and row.finished_at:
            estimated += _seconds(row.started_at, row.finished_at)
            estimated_jobs += 1
    return GpuTime(measured, measured_jobs, estimated, estimated_jobs)


def _seconds(since: datetime, until: datetime) -> float:
    return max(0.0, (until - since).total_seconds())
