"""The history `easel prune` may delete: finished jobs (done, failed, cancelled) asked for
before a cutoff, with the files their rows record, and what newer or unfinished jobs still
name as their input."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bot.store.database import DELIVERABLE, ID_CHUNK, Store
from bot.store.models import Delivery, Image, Job, JobStatus

FINISHED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)
INPUTS_FOLDER = "inputs"  # where the service keeps uploaded images (`_store_input`)


@dataclass(frozen=True)
class OldJob:
    """A finished job asked for before the cutoff, and the image and grid paths it records."""

    job_id: int
    status: JobStatus
    created_at: datetime
    paths: frozenset[str]


def finished_before(store: Store, cutoff: datetime) -> tuple[OldJob, ...]:
    """Finished jobs created before `cutoff`, oldest first; a done or failed job whose result
    was never delivered is not among them (the bot sends it at its next start)."""
    _check_aware(cutoff)
    with store.reading() as session:
        rows = session.execute(
            sa.select(Job.id, Job.status, Job.created_at, Job.grid_path)
            .where(_prunable(cutoff))
            .order_by(Job.id)
        ).all()
        images = session.execute(
            sa.select(Image.job_id, Image.path)
            .join(Job, Job.id == Image.job_id)
            .where(_prunable(cutoff))
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
    """The requests (JSON) of the jobs a prune at `cutoff` keeps (newer ones, queued or
    running ones of any age, and finished ones not yet delivered) that name an image by path:
    their inputs must stay."""
    _check_aware(cutoff)
    with store.reading() as session:
        return requests_naming_images(session, sa.not_(_prunable(cutoff)))


def requests_naming_images(session: Session, *where: sa.ColumnElement[bool]) -> tuple[str, ...]:
    """The requests (JSON) of the jobs that match and may name an image by path (an upscale
    or variation of an earlier image, an uploaded init image): read them with `paths_named`."""
    query = sa.select(Job.request).where(*where, Job.request.contains('"path"'))
    return tuple(session.scalars(query))


def paths_named(requests: Iterable[str]) -> set[str]:
    """The image paths jobs' requests name, as recorded: GenerationRequest.init_image (and
    mask_image, a zoom out's or pan's canvas mask) and UpscaleRequest.image are
    {"path": ...} (or {"data": ...}, inline)."""
    named: set[str] = set()
    for request in requests:
        try:
            payload = json.loads(request)
        except ValueError:
            continue
        if not isinstance(payload, dict):
            continue
        for value in payload.values():
            if isinstance(value, dict) and isinstance(value.get("path"), str):
                named.add(value["path"])
    return named


def delete_finished_jobs(store: Store, job_ids: Collection[int], cutoff: datetime) -> int:
    """Delete these jobs' rows (their images go with them; children keep theirs, their parent
    link emptied) where they are still finished, delivered and older than `cutoff`; how many
    went.

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
                .where(Job.id.in_(chunk), _prunable(cutoff))
                .execution_options(synchronize_session=False)
            )
            deleted += result.rowcount or 0  # type: ignore[attr-defined]
    return deleted


def _prunable(cutoff: datetime) -> sa.ColumnElement[bool]:
    """Finished before the cutoff, and not a result still waiting to be delivered (the bot
    sends those at its next start; a cancelled job has nothing to deliver)."""
    undelivered = sa.and_(Job.status.in_(DELIVERABLE), Job.delivery == Delivery.PENDING)
    return sa.and_(Job.created_at < cutoff, Job.status.in_(FINISHED), sa.not_(undelivered))


def _check_aware(moment: datetime) -> None:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass a timezone-aware one")
