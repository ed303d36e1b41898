"""One log line per step of a job's life, at INFO on the `easel.jobs` logger: queued, started,
finished, failed, cancelled, and requeued (a stop or a crash put it back in the queue).

Each line names the job, its user (`platform:id`) and its kind, and the times known then:
wait (started - created) and run (ended - started), in seconds. The same values are fields of
the record (`extra`), which the JSON log format writes as keys:

    Job 7 finished: user=telegram:5678 kind=imagine images=4 wait=0.41s run=12.80s gpu=12.77s
    {"time": "...", "level": "INFO", "logger": "easel.jobs", "message": "Job 7 finished: ...",
     "job": 7, "event": "finished", "user": "telegram:5678", "kind": "imagine",
     "wait_s": 0.41, "run_s": 12.8, "images": 4, "gpu_s": 12.77}

gpu is the job's share of its batch's time (what `jobs.gpu_seconds` holds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from bot.store import JobRecord, UserRecord

log = logging.getLogger("easel.jobs")
UserLookup = Callable[[int], UserRecord]  # a user by their row id (the dispatcher's cache)
# The order fields are written in the text line, with their units there.
_SHOWN = (
    ("user", ""),
    ("kind", ""),
    ("images", ""),
    ("position", ""),
    ("wait_s", "s"),
    ("run_s", "s"),
    ("gpu_s", "s"),
    ("reason", ""),
)


class Stage(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"


def queued(job: JobRecord, owner: UserLookup, position: int) -> None:
    write(Stage.QUEUED, job, owner, position=position)


def started(job: JobRecord, owner: UserLookup) -> None:
    write(Stage.STARTED, job, owner)


def finished(job: JobRecord, owner: UserLookup, images: int, gpu_seconds: float) -> None:
    write(Stage.FINISHED, job, owner, images=images, gpu_s=round(gpu_seconds, 3))


def failed(job: JobRecord, owner: UserLookup, reason: str) -> None:
    write(Stage.FAILED, job, owner, reason=str(reason))


def cancelled(job: JobRecord, owner: UserLookup) -> None:
    write(Stage.CANCELLED, job, owner)


def requeued(job: JobRecord, owner: UserLookup) -> None:
    write(Stage.REQUEUED, job, owner)


def write(stage: Stage, job: JobRecord, owner: UserLookup, **more: object) -> None:
    """The line; a failure to write it (an owner that cannot be read) never reaches the
    job, which goes on."""
    if not log.isEnabledFor(logging.INFO):
        return
    try:
        fields = job_fields(stage, job, owner, datetime.now(UTC))
    except Exception as error:  # the line is worth less than the job
        log.warning("Job %s %s (its details could not be read: %s)", job.id, stage, error)
        return
    fields.update({name: value for name, value in more.items() if value is not None})
    log.info("Job %d %s: %s", job.id, stage, _text(fields), extra=fields)


def job_fields(stage: Stage, job: JobRecord, owner: UserLookup, now: datetime) -> dict[str, object]:
    """What the line says of the job at `now`: job, event, user, kind, and wait_s / run_s
    where they are known (a queued job has neither; one cancelled while queued has waited
    until now and never ran)."""
    user = owner(job.user_id)
    fields: dict[str, object] = {
        "job": job.id,
        "event": str(stage),
        "user": f"{user.platform}:{user.platform_user_id}",
        "kind": str(job.kind),
    }
    if stage is Stage.QUEUED:
        return fields
    began = job.started_at
    if began is not None:
        fields["wait_s"] = _seconds(began - job.created_at)
        if stage is not Stage.STARTED:
            fields["run_s"] = _seconds(now - began)
    elif stage in (Stage.CANCELLED, Stage.FAILED):  # it never ran: it waited until now
        fields["wait_s"] = _seconds(now - job.created_at)
    return fields


def _seconds(delta: timedelta) -> float:
    return round(max(0.0, delta.total_seconds()), 3)


def _text(fields: dict[str, object]) -> str:
    shown = []
    for name, unit in _SHOWN:
        if name in fields:
            value = fields[name]
            text = f"{value:.2f}" if isinstance(value, float) else str(value)
            shown.append(f"{name.removesuffix('_s')}={text}{unit}")
    return " ".join(shown)
