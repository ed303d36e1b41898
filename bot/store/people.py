"""The operator's view of the people who use the bot: who they are, what they made, their bans,
roles and quotas, a copy of everything kept about one of them, and forgetting them.

Every change here bumps the shared revision in the same transaction, so a running bot (another
process) re-reads its users within its poll, and drops queued jobs that were cancelled or
deleted under it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from bot.store.database import (
    ID_CHUNK,
    NOT_COUNTED,
    UNSET,
    NotFoundError,
    Store,
    _get,
    _job_record,
    _record,
    _touch_control,
    _Unset,
    update_jobs,
)
from bot.store.models import Image, Job, JobStatus, Role, User, UserSettings, utcnow
from bot.store.records import JobRecord, SettingsRecord, UserRecord
from bot.store.retention import INPUTS_FOLDER, paths_named, requests_naming_images


@dataclass(frozen=True)
class UserActivity:
    """A user and what they made: jobs and images today (since midnight UTC) and in all; images
    count as the daily quota counts them (asked for, in jobs that neither failed nor were
    cancelled). `last_seen`: when their newest job was made."""

    user: UserRecord
    jobs_today: int = 0
    jobs_total: int = 0
    images_today: int = 0
    images_total: int = 0
    last_seen: datetime | None = None


@dataclass(frozen=True)
class BanResult:
    user: UserRecord
    cancelled: tuple[int, ...]  # the user's queued jobs the ban cancelled


@dataclass(frozen=True)
class UserExport:
    """Everything the database keeps about one user (jobs with their images)."""

    user: UserRecord
    settings: SettingsRecord
    jobs: tuple[JobRecord, ...]


@dataclass(frozen=True)
class ForgetPlan:
    """What forgetting a user deletes: their rows, and the files of their jobs that lie inside
    the outputs folder with the images they uploaded (under its inputs/ folder), less those
    another user's job names (`files`, with `bytes` the size of those that exist)."""

    user: UserRecord
    jobs: int
    images: int
    has_settings: bool
    files: tuple[Path, ...]
    bytes: int
    running: tuple[int, ...]  # jobs running now: forgetting waits until they end
    queued: tuple[int, ...]
    outside: tuple[str, ...]  # recorded paths outside the outputs folder: left alone
    shared: tuple[Path, ...] = ()  # their files other users' jobs name as input: kept


@dataclass(frozen=True)
class ForgetResult:
    plan: ForgetPlan
    files_removed: int
    bytes_removed: int
    failed: tuple[str, ...] = ()  # files that could not be removed, with why


class UserBusyError(RuntimeError):
    """The user has a running job: it must end (or be cancelled) before they are forgotten."""

    def __init__(self, user_id: int, running: tuple[int, ...]) -> None:
        self.user_id = user_id
        self.running = running
        jobs = ", ".join(f"#{job}" for job in running)
        super().__init__(f"user {user_id} has running jobs: {jobs}")


# ---------------------------------------------------------------------------- reading


def find_user(store: Store, platform: str, platform_user_id: str) -> UserRecord | None:
    """The user with this platform id, without creating one."""
    with store.reading() as session:
        row = session.scalars(
            sa.select(User).where(
                User.platform == platform, User.platform_user_id == platform_user_id
            )
        ).one_or_none()
        return None if row is None else _record(UserRecord, row)


def midnight_utc(now: datetime | None = None) -> datetime:
    moment = now or datetime.now(UTC)
    return datetime.combine(moment.astimezone(UTC).date(), time(0), tzinfo=UTC)


def list_users(
    store: Store,
    *,
    role: Role | None = None,
    banned: bool | None = None,
    platform: str | None = None,
    now: datetime | None = None,
) -> list[UserActivity]:
    """Users with their activity, by id. `banned`: only those whose ban is (or is not) in force
    at `now`."""
    now = now or datetime.now(UTC)
    query = sa.select(User).order_by(User.id)
    if role is not None:
        query = query.where(User.role == role)
    if platform is not None:
        query = query.where(User.platform == platform)
    with store.reading() as session:
        users = [_record(UserRecord, row) for row in session.scalars(query)]
        activity = _activity(session, midnight_utc(now))
    if banned is not None:
        users = [user for user in users if user.banned_now(now) is banned]
    return [_with_activity(user, activity.get(user.id)) for user in users]


def user_activity(store: Store, user_id: int, now: datetime | None = None) -> UserActivity:
    with store.reading() as session:
        user = _record(UserRecord, _get(session, User, user_id))
        activity = _activity(session, midnight_utc(now), user_id)
    return _with_activity(user, activity.get(user_id))


def recent_jobs(store: Store, user_id: int, limit: int = 10) -> tuple[JobRecord, ...]:
    """The user's newest jobs, newest first, with their images."""
    return store.history(user_id, page=1, per_page=limit).jobs


def running_jobs(store: Store, user_id: int) -> tuple[int, ...]:
    """The ids of the user's jobs running now."""
    with store.reading() as session:
        return tuple(
            session.scalars(
                sa.select(Job.id)
                .where(Job.user_id == user_id, Job.status == JobStatus.RUNNING)
                .order_by(Job.id)
            )
        )


def export_user(store: Store, user_id: int) -> UserExport:
    with store.reading() as session:
        user = _record(UserRecord, _get(session, User, user_id))
        settings_row = session.get(UserSettings, user_id)
        rows = session.scalars(
            sa.select(Job)
            .where(Job.user_id == user_id)
            .order_by(Job.id)
            .options(selectinload(Job.images))
        ).all()
        jobs = tuple(_job_record(row, with_images=True) for row in rows)
    settings = (
        SettingsRecord(user_id) if settings_row is None else _record(SettingsRecord, settings_row)
    )
    return UserExport(user=user, settings=settings, jobs=jobs)


def request_document(job: JobRecord) -> Any:
    """A job's request as JSON values (the text as it is if it is not JSON)."""
    try:
        return json.loads(job.request)
    except ValueError:
        return job.request


def _activity(
    session: Session, since: datetime, user_id: int | None = None
) -> dict[int, tuple[int, int, int, int, datetime | None]]:
    today = Job.created_at >= since
    counted = Job.status.not_in(NOT_COUNTED)
    images = sa.case((counted, Job.image_count), else_=0)
    query = sa.select(
        Job.user_id,
        sa.func.count(sa.case((today, 1))),
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(sa.case((today, images), else_=0)), 0),
        sa.func.coalesce(sa.func.sum(images), 0),
        sa.func.max(Job.created_at),
    ).group_by(Job.user_id)
    if user_id is not None:
        query = query.where(Job.user_id == user_id)
    found: dict[int, tuple[int, int, int, int, datetime | None]] = {}
    for owner, jobs_today, jobs, images_today, images_total, newest in session.execute(query):
        found[owner] = (jobs_today, jobs, int(images_today), int(images_total), _aware(newest))
    return found


def _aware(moment: datetime | None) -> datetime | None:
    """max() over a column comes back without the column's type: naive on SQLite."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _with_activity(
    user: UserRecord, activity: tuple[int, int, int, int, datetime | None] | None
) -> UserActivity:
    if activity is None:
        return UserActivity(user)
    jobs_today, jobs, images_today, images_total, newest = activity
    return UserActivity(user, jobs_today, jobs, images_today, images_total, newest)


# ---------------------------------------------------------------------------- changing


def ban_user(
    store: Store,
    user_id: int,
    reason: str | None,
    until: datetime | None = None,
    changed_by: str | None = None,
) -> BanResult:
    """Ban the user (until `until`, or until unbanned) and cancel their queued jobs, together;
    a running bot drops those from its queue and tells their chats."""
    if until is not None and until.tzinfo is None:
        raise ValueError(f"naive datetime {until!r}: pass a timezone-aware one")
    with store.writing() as session:
        _hold_write_lock(session, changed_by)
        row = _get(session, User, user_id)
        row.banned, row.ban_reason, row.banned_until = True, reason, until
        cancelled = _cancel_queued(session, user_id)
        session.flush()
        return BanResult(_record(UserRecord, row), cancelled)


def unban_user(store: Store, user_id: int, changed_by: str | None = None) -> UserRecord:
    return _change_user(
        store, user_id, changed_by, banned=False, ban_reason=None, banned_until=None
    )


def set_user_role(
    store: Store, user_id: int, role: Role, changed_by: str | None = None
) -> UserRecord:
    """The running bot reads the owner again: their next batch takes the new tier and caps."""
    return _change_user(store, user_id, changed_by, role=role)


def set_user_quota(
    store: Store,
    user_id: int,
    changed_by: str | None = None,
    *,
    daily_images: int | _Unset | None = UNSET,
    max_queued: int | _Unset | None = UNSET,
    max_running: int | _Unset | None = UNSET,
) -> UserRecord:
    """Per-user overrides of the global limits; None removes one (the global one applies),
    UNSET leaves it. A daily override of 0 means no daily cap for this user."""
    changes = {
        name: value
        for name, value in (
            ("daily_images", daily_images),
            ("max_queued", max_queued),
            ("max_running", max_running),
        )
        if not isinstance(value, _Unset)
    }
    return _change_user(store, user_id, changed_by, **changes)


def _change_user(
    store: Store, user_id: int, changed_by: str | None, **values: object
) -> UserRecord:
    with store.writing() as session:
        _hold_write_lock(session, changed_by)
        row = _get(session, User, user_id)
        for name, value in values.items():
            setattr(row, name, value)
        session.flush()
        return _record(UserRecord, row)


def _hold_write_lock(session: Session, changed_by: str | None) -> None:
    """Bump the shared revision first: the transaction then holds the database's write lock
    (SQLite), so what it reads next cannot change under it (a job starting meanwhile)."""
    _touch_control(session, changed_by)
    session.flush()


def _cancel_queued(session: Session, user_id: int) -> tuple[int, ...]:
    """Cancel the user's jobs that are still queued when the statement runs: one the bot
    started meanwhile (PostgreSQL reads no lock here) is running and stays so."""
    cancelled = update_jobs(
        session,
        (Job.user_id == user_id, Job.status == JobStatus.QUEUED),
        status=JobStatus.CANCELLED,
        finished_at=utcnow(),
    )
    return tuple(sorted(cancelled))


# ---------------------------------------------------------------------------- forgetting


def plan_forget(store: Store, user_id: int, outputs_dir: Path) -> ForgetPlan:
    """What `forget_user` would delete; changes nothing."""
    with store.reading() as session:
        return _plan(session, user_id, outputs_dir)


def forget_user(
    store: Store, user_id: int, outputs_dir: Path, changed_by: str | None = None
) -> ForgetResult:
    """Delete the user's jobs (their images' rows go with them), settings and row, then the
    files of those jobs inside `outputs_dir` (one already gone is fine) and the images they
    uploaded there. Refused with `UserBusyError` while one of their jobs runs; queued ones
    are deleted with the rest, and a running bot drops them. Other users' jobs made from
    theirs stay (their parent is cleared), and so do the files those jobs name."""
    with store.writing() as session:
        _hold_write_lock(session, changed_by)
        plan = _plan(session, user_id, outputs_dir, lock=True)
        if plan.running:  # the revision's bump is rolled back with the rest
            raise UserBusyError(user_id, plan.running)
        _delete_jobs(session, user_id)
        session.execute(sa.delete(UserSettings).where(UserSettings.user_id == user_id))
        session.execute(sa.delete(User).where(User.id == user_id))
    return _remove_files(plan)


def _delete_jobs(session: Session, user_id: int) -> None:
    """Delete the user's jobs that are not running, and refuse (`UserBusyError`, the
    transaction rolled back) when one is: it started after the plan was read. The plan's read
    locked the rows on PostgreSQL (FOR UPDATE), so this is a second guard."""
    mine = list(session.scalars(sa.select(Job.id).where(Job.user_id == user_id)))
    for start in range(0, len(mine), ID_CHUNK):
        chunk = mine[start : start + ID_CHUNK]
        # The database clears parent_id (ON DELETE SET NULL) and deletes images (CASCADE);
        # done here too, so it does not depend on SQLite's foreign_keys pragma. The ids are
        # read first: MySQL refuses an UPDATE of jobs that selects from jobs (error 1093).
        session.execute(sa.update(Job).where(Job.parent_id.in_(chunk)).values(parent_id=None))
        session.execute(sa.delete(Image).where(Image.job_id.in_(chunk)))
    session.execute(
        sa.delete(Job)
        .where(Job.user_id == user_id, Job.status != JobStatus.RUNNING)
        .execution_options(synchronize_session=False)
    )
    running = tuple(
        session.scalars(
            sa.select(Job.id)
            .where(Job.user_id == user_id, Job.status == JobStatus.RUNNING)
            .order_by(Job.id)
        )
    )
    if running:
        raise UserBusyError(user_id, running)


def _plan(session: Session, user_id: int, outputs_dir: Path, lock: bool = False) -> ForgetPlan:
    """`lock`: hold the user's job rows until the transaction ends (FOR UPDATE on PostgreSQL;
    SQLite has no row locks and the write lock taken first already keeps the bot out)."""
    user = _record(UserRecord, _get(session, User, user_id))
    query = sa.select(Job.id, Job.status, Job.grid_path, Job.request).where(Job.user_id == user_id)
    jobs = session.execute((query.with_for_update() if lock else query).order_by(Job.id)).all()
    job_ids = [job.id for job in jobs]
    image_paths = list(
        session.scalars(
            sa.select(Image.path)
            .join(Job, Image.job_id == Job.id)
            .where(Job.user_id == user_id)
            .order_by(Image.id)
        )
    )
    grids = [job.grid_path for job in jobs if job.grid_path]
    made, outside = _split_paths([*image_paths, *grids], outputs_dir)
    uploads, _ = _split_paths(paths_named(job.request for job in jobs), outputs_dir / INPUTS_FOLDER)
    named = paths_named(requests_naming_images(session, Job.user_id != user_id))
    in_use = set(_split_paths(named, outputs_dir)[0])
    candidates = tuple(dict.fromkeys((*made, *uploads)))
    files = tuple(path for path in candidates if path not in in_use)
    return ForgetPlan(
        user=user,
        jobs=len(job_ids),
        images=len(image_paths),
        has_settings=session.get(UserSettings, user_id) is not None,
        files=files,
        bytes=sum(_size(path) for path in files),
        running=tuple(job.id for job in jobs if job.status is JobStatus.RUNNING),
        queued=tuple(job.id for job in jobs if job.status is JobStatus.QUEUED),
        outside=outside,
        shared=tuple(path for path in candidates if path in in_use),
    )


def _split_paths(
    paths: Iterable[str], outputs_dir: Path
) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """The recorded paths inside the outputs folder (resolved, each once), and the others: a
    row pointing elsewhere never makes Easel delete a file there."""
    root = outputs_dir.resolve(strict=False)
    inside: dict[Path, None] = {}
    outside: list[str] = []
    for recorded in paths:
        path = Path(recorded).resolve(strict=False)
        if path != root and path.is_relative_to(root):
            inside.setdefault(path, None)
        else:
            outside.append(recorded)
    return tuple(inside), tuple(outside)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def _remove_files(plan: ForgetPlan) -> ForgetResult:
    removed = removed_bytes = 0
    failed: list[str] = []
    for path in plan.files:
        size = _size(path)
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as error:  # the rows are gone already: say which files stay
            failed.append(f"{path}: {error.strerror or error}")
            continue
        removed += 1
        removed_bytes += size
    return ForgetResult(plan, removed, removed_bytes, tuple(failed))


__all__ = [
    "BanResult",
    "ForgetPlan",
    "ForgetResult",
    "NotFoundError",
    "UserActivity",
    "UserBusyError",
    "UserExport",
    "ban_user",
    "export_user",
    "find_user",
    "forget_user",
    "list_users",
    "plan_forget",
    "recent_jobs",
    "request_document",
    "running_jobs",
    "set_user_quota",
    "set_user_role",
    "unban_user",
    "user_activity",
]
