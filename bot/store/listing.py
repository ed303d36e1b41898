"""The operator's queries on jobs: listings, the queue as it stands, history for export, and
the changes a command line makes under a running bot (retry, clearing the queue).

Each change that a running bot must act on bumps the shared revision in the same transaction,
so the bot sees the change and the rows together.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import selectinload

from bot.store.database import (
    ID_CHUNK,
    MAX_ID,
    NotFoundError,
    Store,
    _job_record,
    _record,
    update_jobs,
)
from bot.store.database import _touch_control as touch_control
from bot.store.models import Job, JobStatus, User, utcnow
from bot.store.people import find_user as find_user  # the callers' name for it here
from bot.store.records import JobRecord, UserRecord

RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)
EXPORT_CHUNK = 500  # jobs read per query while exporting a history


class NotRetryableError(ValueError):
    """Only a failed or cancelled job can be retried."""

    def __init__(self, job_id: int, status: JobStatus) -> None:
        super().__init__(f"job {job_id} is {status.value}")
        self.job_id = job_id
        self.status = status


@dataclass(frozen=True)
class JobQuery:
    """Which jobs a listing shows: all of them unless narrowed."""

    user_id: int | None = None
    statuses: tuple[JobStatus, ...] = ()
    since: datetime | None = None  # created at or after
    limit: int | None = None


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue as the database has it: running jobs (oldest start first), queued jobs
    (oldest first), their owners, and how many jobs there are of each status."""

    running: tuple[JobRecord, ...]
    queued: tuple[JobRecord, ...]
    owners: dict[int, UserRecord]
    counts: dict[JobStatus, int]


def users_by_id(store: Store, user_ids: Collection[int]) -> dict[int, UserRecord]:
    wanted = sorted(set(user_ids))
    found: dict[int, UserRecord] = {}
    with store.reading() as session:
        for start in range(0, len(wanted), ID_CHUNK):
            rows = session.scalars(
                sa.select(User).where(User.id.in_(wanted[start : start + ID_CHUNK]))
            )
            found.update((row.id, _record(UserRecord, row)) for row in rows)
    return found


def list_jobs(store: Store, query: JobQuery) -> list[JobRecord]:
    """The jobs the query asks for, newest first, with their images."""
    select = _filtered(sa.select(Job), query.user_id, query.since)
    if query.statuses:
        select = select.where(Job.status.in_(query.statuses))
    select = select.order_by(Job.id.desc())
    if query.limit is not None:
        select = select.limit(query.limit)
    with store.reading() as session:
        rows = session.scalars(select.options(selectinload(Job.images)))
        return [_job_record(row, with_images=True) for row in rows]


def history(
    store: Store, user_id: int | None = None, since: datetime | None = None
) -> Iterator[JobRecord]:
    """Every job (of a user, since a time), oldest first, with its images; read in chunks,
    so a long history is never held in memory at once."""
    after = 0
    while True:
        select = _filtered(sa.select(Job), user_id, since).where(Job.id > after)
        select = select.order_by(Job.id).limit(EXPORT_CHUNK).options(selectinload(Job.images))
        with store.reading() as session:
            chunk = [_job_record(row, with_images=True) for row in session.scalars(select)]
        yield from chunk
        if len(chunk) < EXPORT_CHUNK:
            return
        after = chunk[-1].id


def queue_snapshot(store: Store) -> QueueSnapshot:
    with store.reading() as session:
        running = session.scalars(
            sa.select(Job).where(Job.status == JobStatus.RUNNING).order_by(Job.started_at, Job.id)
        ).all()
        queued = session.scalars(
            sa.select(Job).where(Job.status == JobStatus.QUEUED).order_by(Job.id)
        ).all()
        counts = dict(
            session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)).all()
        )
        running_records = tuple(_job_record(row) for row in running)
        queued_records = tuple(_job_record(row) for row in queued)
    owners = users_by_id(store, {job.user_id for job in running_records + queued_records})
    every = {status: int(counts.get(status, 0)) for status in JobStatus}
    return QueueSnapshot(running_records, queued_records, owners, every)


def retry_job(store: Store, job_id: int, changed_by: str | None = None) -> JobRecord:
    """Queue a failed or cancelled job again as a new job with the same request, kind,
    parent, image index, batch key, cost and origin; a running bot takes it at its next
    look at the revision. `NotFoundError` for no such job, `NotRetryableError` for a job
    that is queued, running or done."""
    if not 0 < job_id <= MAX_ID:
        raise NotFoundError(f"no jobs row with id {job_id}")
    with store.writing() as session:
        # The write comes first: it takes SQLite's write lock before anything is read, so
        # the job read below cannot be out of date by the time the new row is written.
        touch_control(session, changed_by)
        old = session.get(Job, job_id)
        if old is None:
            raise NotFoundError(f"no jobs row with id {job_id}")
        if old.status not in RETRYABLE:
            raise NotRetryableError(job_id, old.status)
        new = Job(
            user_id=old.user_id,
            kind=old.kind,
            parent_id=old.parent_id,
            image_index=old.image_index,
            request=old.request,
            batch_key=old.batch_key,
            image_count=old.image_count,
            cost=old.cost,
            origin_platform=old.origin_platform,
            origin_chat=old.origin_chat,
            origin_message=old.origin_message,
        )
        session.add(new)
        session.flush()
        return _job_record(new)


def cancel_queued(store: Store, changed_by: str | None = None) -> list[int]:
    """Cancel every queued job in one transaction; the ids cancelled, oldest first."""
    with store.writing() as session:
        cancelled = update_jobs(
            session,
            (Job.status == JobStatus.QUEUED,),
            status=JobStatus.CANCELLED,
            finished_at=utcnow(),
        )
        if cancelled:
            touch_control(session, changed_by)
    return sorted(cancelled)


def _filtered(
    select: sa.Select[tuple[Job]], user_id: int | None, since: datetime | None
) -> sa.Select[tuple[Job]]:
    if user_id is not None:
        select = select.where(Job.user_id == user_id)
    if since is not None:
        if since.tzinfo is None:
            raise ValueError(f"naive datetime {since!r}: pass a timezone-aware one")
        select = select.where(Job.created_at >= since)
    return select
