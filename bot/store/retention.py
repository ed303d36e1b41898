"""The history `easel prune` may delete: finished jobs (done, failed, cancelled) asked for
before a cutoff, with the files their rows record, and what newer or unfinished jobs still
name as their input."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from bot.store.database import ID_CHUNK, Store
from bot.store.models import Image, Job, JobStatus

FINISHED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class OldJob:
    """A finished job asked for before the cutoff, and the image and grid paths it records."""

    job_id: int
    status: JobStatus
    created_at: datetime
    paths: frozenset[str]


def finished_before(store: Store, cutoff: datetime) -> tuple[OldJob, ...]:
    """Finished jobs created before `cutoff`, oldest first."""
    _check_aware(cutoff)
    with store.reading() as session:
        rows = session.execute(
            sa.select(Job.id, Job.status, Job.created_at, Job.grid_path)
            .where(_old_and_finished(cutoff))
            .order_by(Job.id)
        ).all()
        images = session.execute(
            sa.select(Image.job_id, Image.path)
            .join(Job, Job.id == Image.job_id)
            .where(_old_and_finished(cutoff))
        ).all()
    paths: dict[int, set[str]] = {}
    for job_id, path in images:
        paths.setdefault(job_id, set()).add(path)
    return tuple(
        OldJob(
            job_id,
            status,
            created_at,
            frozenset(paths.get(job_id, set()) | ({grid} if grid else set())),
        )
        for job_id, status, created_at, grid in rows
    )


def requests_kept(store: Store, cutoff: datetime) -> tuple[str, ...]:
    """The requests (JSON) of the jobs a prune at `cutoff` keeps (newer ones, and queued or
    running ones of any age) that name an image by path: their inputs must stay."""
    _check_aware(cutoff)
    query = sa.select(Job.request).where(
        sa.not_(_old_and_finished(cutoff)), Job.request.contains('"path"')
    )
    with store.reading() as session:
        return tuple(session.scalars(query))


def delete_finished_jobs(store: Store, job_ids: Collection[int], cutoff: datetime) -> int:
    """Delete these jobs' rows (their images go with them; children keep theirs, their parent
    link emptied) where they are still finished and older than `cutoff`; how many went.

    One short transaction per chunk of ids: a running bot's writes wait on each for a moment
    only, never long enough to time out (SQLite has one writer at a time)."""
    _check_aware(cutoff)
    wanted = sorted(set(job_ids))
    deleted = 0
    for start in range(0, len(wanted), ID_CHUNK):
        chunk = wanted[start : start + ID_CHUNK]
        with store.writing() as session:
            result = session.execute(
                sa.delete(Job)
                .where(Job.id.in_(chunk), _old_and_finished(cutoff))
                .execution_options(synchronize_session=False)
            )
            deleted += result.rowcount or 0  # type: ignore[attr-defined]
    return deleted


def _old_and_finished(cutoff: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(Job.created_at < cutoff, Job.status.in_(FINISHED))


def _check_aware(moment: datetime) -> None:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass a timezone-aware one")
