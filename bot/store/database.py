"""The bot's durable store. Each write is one short transaction: a crash never leaves half a job."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.pool import StaticPool

from bot.store.faults import (
    BotLock,
    FatalListeners,
    FileWatch,
    StoreError,
    check_sqlite_file,
    sqlite_file,
    translate_errors,
)
from bot.store.masking import TextMask, masked_document, own_password_mask
from bot.store.models import (
    Base,
    Chat,
    Delivery,
    Image,
    Job,
    JobKind,
    JobStatus,
    QueueState,
    Role,
    User,
    UserSettings,
    UTCDateTime,
    utcnow,
)
from bot.store.records import (
    CancelResult,
    ChatRecord,
    ControlState,
    HistoryPage,
    ImageRecord,
    JobFiles,
    JobRecord,
    NewImage,
    NewJob,
    Recovery,
    SettingsRecord,
    UserRecord,
)
from bot.store.threads import SERVER_THREADS, SQLITE_THREADS, StoreThreads

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
)
SETTING_NAMES = frozenset(
    field.name for field in fields(SettingsRecord) if field.name not in {"user_id", "updated_at"}
)
DELIVERABLE = (JobStatus.DONE, JobStatus.FAILED)
NOT_COUNTED = (JobStatus.FAILED, JobStatus.CANCELLED)

R = TypeVar("R", bound="DataclassInstance")
M = TypeVar("M", bound=Base)


QUEUE_STATE_ID = 1  # the one row of queue_state
MAX_ID = 2**63 - 1  # ids are BIGINT on PostgreSQL
ID_CHUNK = 500  # ids per IN (...) query: well under every database's bound-parameter limit
# What a job that stops running leaves of its run on a GPU worker: nothing (the run's fields
# are set only while the job runs).
NO_RUN: Final[dict[str, None]] = {"run_id": None, "worker": None, "lease_until": None}
# A job that ends keeps the name of the worker that ran it (what `easel jobs show` tells).
RUN_OVER: Final[dict[str, None]] = {"run_id": None, "lease_until": None}


class NotFoundError(LookupError):
    """The user or job asked for does not exist."""


class _Unset(Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET


class Store:
    """Users, their settings, chats and jobs, in any database SQLAlchemy speaks (SQLite first)."""

    def __init__(self, url: str, mask: TextMask | None = None) -> None:
        """`mask`: what hides secrets in the failure text written to a job (the logs' masking,
        given by the bot); without one, the database password is masked."""
        parsed = make_url(url)
        self._mask = mask or own_password_mask(parsed)
        self._path = sqlite_file(parsed)
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            check_sqlite_file(self._path)
        # Told when the database cannot go on (deleted, replaced, corrupted): the bot stops.
        self.fatal = FatalListeners()
        self._watch = FileWatch(self._path, self.fatal) if self._path is not None else None
        self._engine = _create_engine(parsed, self._watch)
        translate_errors(self._engine, self._path, self._watch, self.fatal)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._lock = BotLock(self._engine, self._path)
        # Where the bot's core runs its calls, off the event loop (see threads.py).
        sqlite = parsed.get_backend_name() == "sqlite"
        self.threads = StoreThreads(SQLITE_THREADS if sqlite else SERVER_THREADS)

    @property
    def url(self) -> str:
        """The database URL with any password masked: the only form fit for logs."""
        return self._engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def close(self) -> None:
        self.threads.close()
        self._lock.release()
        self._engine.dispose()

    def hold_bot_lock(self) -> BotLock:
        """Claim this database for this bot process until `close()` (or the end of a `with`
        block on the result); `BotAlreadyRunningError` when another bot holds it."""
        return self._lock.acquire()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for queries that only read (the store's query modules use it)."""
        with self._sessions() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A session whose changes commit together when the block ends, or not at all."""
        with self._sessions.begin() as session:
            yield session

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Migrations

    def upgrade(self, through_migrations: bool = False) -> None:
        """Apply the Alembic migrations up to head, on this store's own engine. An empty
        database is created at head in one step (the tables, the control row, the version),
        which is what the migrations arrive at (a test holds them to it) in a fraction of
        the time; `through_migrations` runs every migration even then."""
        with self._migration_connection() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
            if before is None:
                self._refuse_unversioned_tables(connection)
            if before is None and not through_migrations:
                _create_at_head(connection)
            else:
                command.upgrade(_alembic_config(connection), "head")
        after = self.current()
        if before != after:
            log.info("Migrated %s from %s to %s", self.url, before or "empty", after)

    def _refuse_unversioned_tables(self, connection: Connection) -> None:
        """Tables without a migration version: an interrupted first start from before
        migrations ran in one transaction, or another program's database."""
        ours = set(Base.metadata.tables) & set(sa.inspect(connection).get_table_names())
        if ours:
            name = self._path.name if self._path is not None else self.url
            raise StoreError(
                f"{name} has Easel's tables ({', '.join(sorted(ours))}) but no migration "
                "version: an earlier first start was interrupted. Move it away (or delete it) "
                "and start again; if it holds data you need, run `alembic stamp head` on it"
            )

    def current(self) -> str | None:
        with self._engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head(self) -> str:
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        if head is None:
            raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
        return head

    @contextmanager
    def _migration_connection(self) -> Iterator[Connection]:
        with self._engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Batch migrations copy a table and drop the original; with foreign keys on,
                # that drop would cascade into the rows that point at it.
                _pragma(connection, "PRAGMA foreign_keys=OFF")
            try:
                with connection.begin():
                    yield connection
            finally:
                if sqlite:
                    _pragma(connection, "PRAGMA foreign_keys=ON")

    # Users

    def user(
        self,
        platform: str,
        platform_user_id: str,
        display_name: str | None = None,
        locale: str | None = None,
    ) -> UserRecord:
        """The user with this platform id, created on first sight; refreshes name and locale."""
        try:
            return self._get_or_create_user(platform, platform_user_id, display_name, locale)
        except IntegrityError:
            # Another connection created the same user between our read and our insert.
            return self._get_or_create_user(platform, platform_user_id, display_name, locale)

    def _get_or_create_user(
        self, platform: str, platform_user_id: str, display_name: str | None, locale: str | None
    ) -> UserRecord:
        with self._sessions.begin() as session:
            row = session.scalars(
                sa.select(User).where(
                    User.platform == platform, User.platform_user_id == platform_user_id
                )
            ).one_or_none()
            if row is None:
                row = User(platform=platform, platform_user_id=platform_user_id)
                session.add(row)
            if display_name is not None:
                row.display_name = display_name
            if locale is not None:
                row.locale = locale
            session.flush()
            return _record(UserRecord, row)

    def user_by_id(self, user_id: int) -> UserRecord | None:
        with self._sessions() as session:
            row = session.get(User, user_id)
            return None if row is None else _record(UserRecord, row)

    def set_role(self, user_id: int, role: Role) -> UserRecord:
        return self._update_user(user_id, role=role)

    def ban(self, user_id: int, reason: str | None, until: datetime | None = None) -> UserRecord:
        """Ban the user, until `until` (timezone-aware) or, with None, until unbanned."""
        return self._update_user(user_id, banned=True, ban_reason=reason, banned_until=until)

    def unban(self, user_id: int) -> UserRecord:
        return self._update_user(user_id, banned=False, ban_reason=None, banned_until=None)

    def set_quota(
        self,
        user_id: int,
        max_queued: int | None,
        max_running: int | None,
        daily_images: int | None,
    ) -> UserRecord:
        """Per-user overrides of the global limits; None falls back to the global one."""
        return self._update_user(
            user_id, max_queued=max_queued, max_running=max_running, daily_images=daily_images
        )

    def _update_user(self, user_id: int, **values: object) -> UserRecord:
        with self._sessions.begin() as session:
            row = _get(session, User, user_id)
            for name, value in values.items():
                setattr(row, name, value)
            session.flush()
            return _record(UserRecord, row)

    def count_users(self) -> int:
        with self._sessions() as session:
            return session.scalar(sa.select(sa.func.count()).select_from(User)) or 0

    # Settings

    def settings(self, user_id: int) -> SettingsRecord:
        """The user's settings; all unset when they never changed any."""
        with self._sessions() as session:
            row = session.get(UserSettings, user_id)
            return SettingsRecord(user_id) if row is None else _record(SettingsRecord, row)

    def update_settings(self, user_id: int, **changes: str | int | bool | None) -> SettingsRecord:
        """Set the named settings; None clears one (`private` goes back to False, `plain_text`
        to True)."""
        unknown = sorted(set(changes) - SETTING_NAMES)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(unknown)}")
        if "private" in changes and changes["private"] is None:
            changes["private"] = False
        if "plain_text" in changes and changes["plain_text"] is None:
            changes["plain_text"] = True
        try:
            return self._write_settings(user_id, changes)
        except IntegrityError:
            # Another connection inserted this user's row first; now it is an update.
            return self._write_settings(user_id, changes)

    def _write_settings(
        self, user_id: int, changes: dict[str, str | int | bool | None]
    ) -> SettingsRecord:
        with self._sessions.begin() as session:
            _get(session, User, user_id)
            row = session.get(UserSettings, user_id)
            if row is None:
                row = UserSettings(user_id=user_id)
                session.add(row)
            for name, value in changes.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            session.flush()
            return _record(SettingsRecord, row)

    # Chats

    def chat(self, platform: str, chat_id: str) -> ChatRecord:
        """The chat's settings; the defaults when nobody changed any."""
        with self._sessions() as session:
            row = _find_chat(session, platform, chat_id)
            return ChatRecord(platform, chat_id) if row is None else _chat_record(row)

    def update_chat(
        self,
        platform: str,
        chat_id: str,
        *,
        banned_words: Sequence[str] | _Unset = UNSET,
        nsfw_allowed: bool | _Unset = UNSET,
        default_preset: str | _Unset | None = UNSET,
        shared_results: bool | _Unset = UNSET,
    ) -> ChatRecord:
        """Change the settings given; the others keep their value."""
        changes: dict[str, object] = {}
        if not isinstance(shared_results, _Unset):
            changes["shared_results"] = shared_results
        if not isinstance(banned_words, _Unset):
            changes["banned_words"] = list(banned_words)
        if not isinstance(nsfw_allowed, _Unset):
            changes["nsfw_allowed"] = nsfw_allowed
        if not isinstance(default_preset, _Unset):
            changes["default_preset"] = default_preset
        try:
            return self._write_chat(platform, chat_id, changes)
        except IntegrityError:
            return self._write_chat(platform, chat_id, changes)

    def _write_chat(self, platform: str, chat_id: str, changes: dict[str, object]) -> ChatRecord:
        with self._sessions.begin() as session:
            row = _find_chat(session, platform, chat_id)
            if row is None:
                row = Chat(platform=platform, chat_id=chat_id)
                session.add(row)
            for name, value in changes.items():
                setattr(row, name, value)
            session.flush()
            return _chat_record(row)

    # The state every process shares: the pause flag, the chosen checkpoint, the revision

    def control_state(self) -> ControlState:
        with self._sessions() as session:
            row = session.get(QueueState, QUEUE_STATE_ID)
            if row is None:
                return ControlState()
            return _record(ControlState, row)

    def queue_paused(self) -> bool:
        """Whether an admin paused the queue (from this process or another one)."""
        return self.control_state().paused

    def set_queue_paused(self, paused: bool, changed_by: str | None = None) -> None:
        self._change_control(changed_by, paused=paused)

    def set_model(self, model: str | None, changed_by: str | None = None) -> None:
        """The checkpoint new jobs use (None: the configured one)."""
        self._change_control(changed_by, model=model)

    def request_sources_reload(self, changed_by: str | None = None) -> None:
        """Ask the running bot to read presets.toml and the vocabulary again."""
        self._change_control(changed_by, sources_revision=QueueState.sources_revision + 1)

    def bump_revision(self, changed_by: str | None = None) -> None:
        """Tell a running bot that jobs or users changed under it: it reads them again."""
        self._change_control(changed_by)

    def _change_control(self, changed_by: str | None, **values: object) -> None:
        try:
            self._write_control(changed_by, values)
        except IntegrityError:  # another process inserted the row first
            self._write_control(changed_by, values)

    def _write_control(self, changed_by: str | None, values: dict[str, object]) -> None:
        with self._sessions.begin() as session:
            _touch_control(session, changed_by, **values)

    # Jobs

    def add_job(self, new: NewJob) -> JobRecord:
        with self._sessions.begin() as session:
            row = Job(**asdict(new))
            session.add(row)
            session.flush()
            return _job_record(row)

    def job(self, job_id: int, with_images: bool = False) -> JobRecord | None:
        if not 0 < job_id <= MAX_ID:  # a typed or forged number no database could hold
            return None
        jobs = self._jobs(sa.select(Job).where(Job.id == job_id), with_images)
        return jobs[0] if jobs else None

    def queued_jobs(self) -> list[JobRecord]:
        """Every queued job, oldest first: what the scheduler rebuilds its queue from."""
        return self._jobs(sa.select(Job).where(Job.status == JobStatus.QUEUED).order_by(Job.id))

    def mark_running(self, job_ids: Sequence[int], run_id: str | None = None) -> set[int]:
        """Queued jobs start: one more attempt each. Jobs no longer queued (cancelled from
        another process meanwhile) are left alone: the ids that did start. A job still
        running is one this bot put back in its queue when the database failed mid-batch
        (one bot holds a database): it runs again as the same attempt, or is cancelled when
        someone asked to stop it meanwhile. `run_id`: the run the batch is dispatched as (a
        GPU worker's task), recorded on every job that starts or resumes, none of them
        claimed yet."""
        if not job_ids:
            return set()
        chosen = Job.id.in_(job_ids)
        still_running = Job.status == JobStatus.RUNNING
        this_run = {"run_id": run_id, "worker": None, "lease_until": None}
        with self._sessions.begin() as session:
            _lock_in_order(session, chosen)
            # Conditional writes, not a read and then a write: a cancel committed by another
            # process in between could otherwise be overwritten (PostgreSQL) or fail the
            # write (SQLite).
            session.execute(
                sa.update(Job)
                .where(chosen, still_running, Job.cancel_requested.is_(True))
                .values(status=JobStatus.CANCELLED, finished_at=utcnow(), **NO_RUN)
            )
            resumed = update_jobs(session, (chosen, still_running), **this_run)
            started = update_jobs(
                session,
                (chosen, Job.status == JobStatus.QUEUED),
                status=JobStatus.RUNNING,
                started_at=utcnow(),
                attempts=Job.attempts + 1,
                **this_run,
            )
            return set(started) | set(resumed)

    def mark_done(
        self,
        job_id: int,
        images: Sequence[NewImage],
        grid_path: str | None,
        gpu_seconds: float | None = None,
        run_id: str | None = None,
    ) -> bool:
        """Record the job's images and finish it, both or neither. `gpu_seconds`: the job's
        share of its batch's time. With `run_id` (a result from a GPU worker), only a job
        still running as that run is finished: False, and nothing written, for a result
        that comes too late (the job was requeued, cancelled or finished meanwhile)."""
        values = {
            "status": JobStatus.DONE,
            "finished_at": utcnow(),
            "grid_path": grid_path,
            "gpu_seconds": gpu_seconds,
            **RUN_OVER,
        }
        with self._sessions.begin() as session:
            if run_id is None:
                _get(session, Job, job_id)  # NotFoundError for a job that does not exist
                session.execute(sa.update(Job).where(Job.id == job_id).values(**values))
            elif not update_jobs(session, _in_run(run_id, [job_id]), **values):
                return False
            session.add_all(Image(job_id=job_id, **asdict(image)) for image in images)
            return True

    def mark_failed(
        self, job_id: int, error: str, trace: str | None = None, run_id: str | None = None
    ) -> bool:
        """Finish the job as failed; `error` is the caller's JSON document, kept as is, and
        `trace` the operator's detail (a traceback); secrets in either are masked first.
        With `run_id`, only a job still running as that run fails (False otherwise)."""
        values = {
            "status": JobStatus.FAILED,
            "finished_at": utcnow(),
            "error": masked_document(error, self._mask),
            "failure_trace": None if trace is None else self._mask(trace),
            **RUN_OVER,
        }
        if run_id is None:
            self._update_job(job_id, **values)
            return True
        with self._sessions.begin() as session:
            return bool(update_jobs(session, _in_run(run_id, [job_id]), **values))

    def mark_cancelled(self, job_id: int, run_id: str | None = None) -> bool:
        """Cancel a queued or running job; False when it had already finished. With
        `run_id`, only a job still running as that run is cancelled (False otherwise)."""
        if run_id is None:
            where: Sequence[sa.ColumnElement[bool]] = (
                Job.id == job_id,
                Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
            )
        else:
            where = _in_run(run_id, [job_id])
        with self._sessions.begin() as session:
            if update_jobs(
                session, where, status=JobStatus.CANCELLED, finished_at=utcnow(), **RUN_OVER
            ):
                return True
            if run_id is None:
                _get(session, Job, job_id)  # NotFoundError for a job that does not exist
            return False

    def request_cancel(self, job_id: int, changed_by: str | None = None) -> CancelResult:
        """Cancel a job from any process: a queued one is cancelled here and now; a running
        one is marked, and the bot running it stops it within a sampling step. The running
        bot hears of either through the revision."""
        this = Job.id == job_id
        with self._sessions.begin() as session:
            # Writes that check the status themselves, not a read and then a write: the bot
            # may start or finish the job at any moment.
            cancelled = session.execute(
                sa.update(Job)
                .where(this, Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.CANCELLED, finished_at=utcnow())
            )
            if cancelled.rowcount:  # type: ignore[attr-defined]
                result = CancelResult.CANCELLED
            elif session.execute(
                sa.update(Job)
                .where(this, Job.status == JobStatus.RUNNING)
                .values(cancel_requested=True)
            ).rowcount:  # type: ignore[attr-defined]
                result = CancelResult.STOPPING
            else:
                _get(session, Job, job_id)  # NotFoundError for a job that does not exist
                return CancelResult.NOT_ACTIVE
            _touch_control(session, changed_by)
            return result

    def cancel_requested(self, job_ids: Collection[int]) -> set[int]:
        """Which of these jobs someone asked to stop."""
        if not job_ids:
            return set()
        with self._sessions() as session:
            return set(
                session.scalars(
                    sa.select(Job.id).where(Job.id.in_(job_ids), Job.cancel_requested.is_(True))
                )
            )

    def job_statuses(self, job_ids: Collection[int]) -> dict[int, JobStatus]:
        """The status of each of these jobs that exists."""
        wanted = sorted(set(job_ids))
        found: dict[int, JobStatus] = {}
        with self._sessions() as session:
            for start in range(0, len(wanted), ID_CHUNK):
                chunk = wanted[start : start + ID_CHUNK]
                rows = session.execute(sa.select(Job.id, Job.status).where(Job.id.in_(chunk)))
                found.update((job_id, status) for job_id, status in rows)
        return found

    def requeue(self, job_ids: Sequence[int], refund_attempt: bool = False) -> None:
        """Running jobs go back to the queue, keeping their attempt count unless
        `refund_attempt` (a graceful stop is not a failed attempt)."""
        if not job_ids:
            return
        attempts = _refunded() if refund_attempt else Job.attempts
        with self._sessions.begin() as session:
            session.execute(
                sa.update(Job)
                .where(Job.id.in_(job_ids), Job.status == JobStatus.RUNNING)
                .values(status=JobStatus.QUEUED, started_at=None, attempts=attempts, **NO_RUN)
            )

    def recover(
        self, max_attempts: int, error_for_exhausted: str, keep_leased: bool = False
    ) -> Recovery:
        """After a crash: jobs left running are queued again, or failed once out of attempts;
        one that someone asked to stop is cancelled. With `keep_leased`, a job a GPU worker
        holds under a live lease is left running (`Recovery.leased`): the worker is still at
        it, and the bot re-attaches to its run."""
        with self._sessions.begin() as session:
            now = _database_now(session)
            where: list[sa.ColumnElement[bool]] = [Job.status == JobStatus.RUNNING]
            if keep_leased:
                where.append(_unheld(now))
            _lock_in_order(session, Job.status == JobStatus.RUNNING)
            ended = _requeue_or_end(session, where, now, max_attempts, error_for_exhausted)
            leased = session.scalars(
                sa.select(Job.id).where(Job.status == JobStatus.RUNNING).order_by(Job.id)
            ).all()
        return replace(ended, leased=tuple(leased))

    # Runs on GPU workers (scale-out). A batch dispatched to the workers is a run: its jobs
    # are marked running with its id (`mark_running(ids, run_id)`); the worker that takes it
    # claims it under a lease and renews the lease while it works; its results are written
    # only while the jobs are still running as that run. A run whose lease ran out, or that
    # no worker took, is lost: its jobs are queued again (`requeue_lost`). Every change is
    # one conditional UPDATE, so a claim, a renewal, a result and a requeue racing for the
    # same rows never both take effect. Lease times are the database's clock, not a
    # machine's: the workers' clocks need not agree.

    def claim_run(
        self, run_id: str, job_ids: Sequence[int], worker: str, lease_seconds: float
    ) -> set[int]:
        """The worker takes the run's jobs that are still running as this run and that no
        worker holds (never claimed, or its lease ran out): they are its own until the
        lease ends. The ids it got; an empty set means the run is not this worker's to do."""
        _check_lease(lease_seconds)
        if not job_ids:
            return set()
        with self._sessions.begin() as session:
            now = _database_now(session)
            where = (*_in_run(run_id, job_ids), _unheld(now))
            _lock_in_order(session, Job.id.in_(job_ids))
            return set(
                update_jobs(
                    session,
                    where,
                    worker=worker,
                    lease_until=now + timedelta(seconds=lease_seconds),
                )
            )

    def renew_lease(
        self, run_id: str, job_ids: Sequence[int], worker: str, lease_seconds: float
    ) -> set[int]:
        """The worker still works on the run: its jobs are held `lease_seconds` longer. The
        ids renewed; a job missing from them is no longer this worker's (requeued,
        cancelled, finished, or taken over after its lease ran out)."""
        _check_lease(lease_seconds)
        if not job_ids:
            return set()
        with self._sessions.begin() as session:
            now = _database_now(session)
            where = (*_in_run(run_id, job_ids), Job.worker == worker)
            _lock_in_order(session, Job.id.in_(job_ids))
            return set(
                update_jobs(session, where, lease_until=now + timedelta(seconds=lease_seconds))
            )

    def expired_leases(self, now: datetime | None = None) -> dict[str, list[int]]:
        """Running jobs whose worker's lease ran out (the worker died or lost the database),
        by run id: runs to treat as lost."""
        with self._sessions() as session:
            moment = now or _database_now(session)
            return _by_run(
                session,
                Job.status == JobStatus.RUNNING,
                Job.worker.is_not(None),
                Job.lease_until < moment,
            )

    def leased_runs(self) -> dict[str, list[int]]:
        """Running jobs a worker holds under a live lease, by run id: a restarted bot
        re-attaches to these runs instead of running the jobs again."""
        with self._sessions() as session:
            return _by_run(
                session,
                Job.status == JobStatus.RUNNING,
                Job.worker.is_not(None),
                Job.lease_until >= _database_now(session),
            )

    def requeue_lost(
        self,
        run_id: str,
        job_ids: Sequence[int],
        max_attempts: int,
        error_for_exhausted: str,
        ran: bool,
    ) -> Recovery:
        """The run was lost: its worker died (its lease ran out), or no worker took it.
        Its jobs still running as this run and held by no live lease go back to the queue;
        `ran=False` (it never started) refunds the attempt, `ran=True` counts it, and a job
        out of attempts fails with `error_for_exhausted`. A job someone asked to stop is
        cancelled. A job a worker holds under a live lease is left alone: that worker is not
        lost (and a claim racing this call wins or loses whole)."""
        if not job_ids:
            return Recovery(requeued=(), failed=())
        with self._sessions.begin() as session:
            now = _database_now(session)
            where = (*_in_run(run_id, job_ids), _unheld(now))
            _lock_in_order(session, Job.id.in_(job_ids))
            return _requeue_or_end(
                session, where, now, max_attempts, error_for_exhausted, refund=not ran
            )

    def undelivered(self, platform: str) -> list[JobRecord]:
        """Finished jobs from this platform whose result never reached the chat, oldest first."""
        query = (
            sa.select(Job)
            .where(
                Job.origin_platform == platform,
                Job.delivery == Delivery.PENDING,
                Job.status.in_(DELIVERABLE),
            )
            .order_by(Job.id)
        )
        return self._jobs(query, with_images=True)

    def mark_delivered(self, job_id: int) -> None:
        self._update_job(job_id, delivery=Delivery.DELIVERED)

    def count_delivery_attempt(self, job_id: int) -> int:
        """One more try at delivering the job's result; how many there have been."""
        with self._sessions.begin() as session:
            row = _get(session, Job, job_id)
            row.delivery_attempts = (row.delivery_attempts or 0) + 1
            return row.delivery_attempts

    def last_grid(self, platform: str, chat_id: str) -> JobRecord | None:
        """The newest finished grid posted in a chat (what `/u 2` without a job acts on)."""
        query = (
            sa.select(Job)
            .where(
                Job.origin_platform == platform,
                Job.origin_chat == chat_id,
                Job.status == JobStatus.DONE,
                Job.kind != JobKind.UPSCALE,
            )
            .order_by(Job.id.desc())
            .limit(1)
        )
        jobs = self._jobs(query)
        return jobs[0] if jobs else None

    def set_status_message(self, job_id: int, message_id: str) -> None:
        self._update_job(job_id, status_message=message_id)

    def _update_job(self, job_id: int, **values: object) -> None:
        with self._sessions.begin() as session:
            row = _get(session, Job, job_id)
            for name, value in values.items():
                setattr(row, name, value)

    def history(self, user_id: int, page: int, per_page: int = 5) -> HistoryPage:
        """One page (1-based, clamped to the pages there are) of the user's jobs, newest first."""
        if per_page < 1:
            raise ValueError(f"per_page must be at least 1, not {per_page}")
        mine = Job.user_id == user_id
        with self._sessions() as session:
            total = session.scalar(sa.select(sa.func.count()).select_from(Job).where(mine)) or 0
            pages = max(1, math.ceil(total / per_page))
            page = min(max(page, 1), pages)
            rows = session.scalars(
                sa.select(Job)
                .where(mine)
                .order_by(Job.created_at.desc(), Job.id.desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
                .options(selectinload(Job.images))
            ).all()
            jobs = tuple(_job_record(row, with_images=True) for row in rows)
        return HistoryPage(jobs=jobs, page=page, pages=pages, total=total)

    def children(self, job_id: int) -> list[JobRecord]:
        """The jobs made from this one's buttons (upscales, variations, rerolls), oldest first."""
        return self._jobs(sa.select(Job).where(Job.parent_id == job_id).order_by(Job.id))

    def images_since(self, user_id: int, since: datetime) -> int:
        """Images the user asked for since then, not counting failed or cancelled jobs."""
        if since.tzinfo is None:
            raise ValueError(f"naive datetime {since!r}: pass a timezone-aware one")
        with self._sessions() as session:
            total = session.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(Job.image_count), 0)).where(
                    Job.user_id == user_id,
                    Job.created_at >= since,
                    Job.status.not_in(NOT_COUNTED),
                )
            )
            return int(total or 0)

    def count_queued(self, user_id: int | None = None) -> int:
        return self._count(JobStatus.QUEUED, user_id)

    def count_running(self, user_id: int | None = None) -> int:
        return self._count(JobStatus.RUNNING, user_id)

    def _count(self, status: JobStatus, user_id: int | None) -> int:
        query = sa.select(sa.func.count()).select_from(Job).where(Job.status == status)
        if user_id is not None:
            query = query.where(Job.user_id == user_id)
        with self._sessions() as session:
            return session.scalar(query) or 0

    def recent_durations(self, limit: int = 20) -> list[tuple[float, int]]:
        """(seconds from start to finish, image count) of the latest finished jobs, newest first."""
        query = (
            sa.select(Job.started_at, Job.finished_at, Job.image_count)
            .where(
                Job.status == JobStatus.DONE,
                Job.started_at.is_not(None),
                Job.finished_at.is_not(None),
            )
            .order_by(Job.id.desc())
            .limit(limit)
        )
        with self._sessions() as session:
            rows = session.execute(query).all()
        return [
            ((finished - started).total_seconds(), count)
            for started, finished, count in rows
            if started is not None and finished is not None
        ]

    def job_files(self, job_ids: Collection[int]) -> dict[int, JobFiles]:
        """The recorded files of each of these jobs that exists (jobs not found are left out)."""
        wanted = sorted({job_id for job_id in job_ids if 0 < job_id <= MAX_ID})
        found: dict[int, JobFiles] = {}
        with self._sessions() as session:
            for start in range(0, len(wanted), ID_CHUNK):
                chunk = wanted[start : start + ID_CHUNK]
                rows = session.execute(
                    sa.select(Job.id, Job.status, Job.created_at, Job.grid_path).where(
                        Job.id.in_(chunk)
                    )
                ).all()
                images = session.execute(
                    sa.select(Image.job_id, Image.path).where(Image.job_id.in_(chunk))
                ).all()
                paths: dict[int, set[str]] = {}
                for job_id, path in images:
                    paths.setdefault(job_id, set()).add(path)
                for job_id, status, created_at, grid in rows:
                    mine = paths.get(job_id, set()) | ({grid} if grid else set())
                    found[job_id] = JobFiles(job_id, status, created_at, frozenset(mine))
        return found

    def _jobs(self, query: sa.Select[Any], with_images: bool = False) -> list[JobRecord]:
        if with_images:
            query = query.options(selectinload(Job.images))
        with self._sessions() as session:
            return [_job_record(row, with_images) for row in session.scalars(query)]


def _requeue_or_end(
    session: Session,
    where: Sequence[sa.ColumnElement[bool]],
    now: datetime,
    max_attempts: int,
    error_for_exhausted: str,
    refund: bool = False,
) -> Recovery:
    """Running jobs that stopped without an outcome (`where`): cancelled when someone asked,
    else queued again (`refund`: the attempt did not count), else, out of attempts, failed
    with `error_for_exhausted`. A job that ends keeps the name of its worker."""
    cancelled = update_jobs(
        session,
        (*where, Job.cancel_requested.is_(True)),
        status=JobStatus.CANCELLED,
        finished_at=now,
        **RUN_OVER,
    )
    requeued = update_jobs(
        session,
        where if refund else (*where, Job.attempts < max_attempts),
        status=JobStatus.QUEUED,
        started_at=None,
        attempts=_refunded() if refund else Job.attempts,
        **NO_RUN,
    )
    failed = update_jobs(
        session,
        where,
        status=JobStatus.FAILED,
        finished_at=now,
        error=error_for_exhausted,
        **RUN_OVER,
    )
    return Recovery(
        requeued=tuple(sorted(requeued)),
        failed=tuple(sorted(failed)),
        cancelled=tuple(sorted(cancelled)),
    )


def _create_engine(url: URL, watch: FileWatch | None) -> Engine:
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if _in_memory(url):
        # One connection for everyone, or each would see its own empty database.
        engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        engine = sa.create_engine(url)
    sa.event.listen(engine, "connect", _set_sqlite_pragmas)
    sa.event.listen(engine, "begin", _sqlite_begin(watch))
    return engine


def _sqlite_begin(watch: FileWatch | None) -> Callable[[Connection], None]:
    """Begin each transaction ourselves (the driver's own transaction handling is off), so DDL
    is transactional too: a migration killed halfway leaves nothing behind. Each transaction
    first checks that the database file is still the one opened."""

    def begin(connection: Connection) -> None:
        if watch is not None:
            watch.check()
        connection.exec_driver_sql("BEGIN")

    return begin


def _in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def _set_sqlite_pragmas(dbapi_connection: Any, _connection_record: object) -> None:
    # pysqlite's legacy handling would commit before DDL; the engine's "begin" hook takes over.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _pragma(connection: Connection, pragma: str) -> None:
    # Straight to the driver, outside any transaction: SQLite ignores foreign_keys changes
    # inside one, and the engine's own BEGIN would open one.
    connection.connection.driver_connection.execute(pragma)  # type: ignore[union-attr]


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    # Config values go through configparser, where % starts an interpolation.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _get(session: Session, model: type[M], key: int) -> M:
    row = session.get(model, key)
    if row is None:
        raise NotFoundError(f"no {model.__tablename__} row with id {key}")
    return row


def update_jobs(
    session: Session, where: Sequence[sa.ColumnElement[bool]], **values: object
) -> list[int]:
    """Change the jobs that match, in one statement where the database can say which it
    changed (RETURNING: SQLite, PostgreSQL), else with those rows locked while they change:
    the ids changed."""
    if session.get_bind().dialect.update_returning:
        return list(
            session.scalars(sa.update(Job).where(*where).values(**values).returning(Job.id))
        )
    ids = list(session.scalars(sa.select(Job.id).where(*where).with_for_update()))
    if ids:
        session.execute(sa.update(Job).where(Job.id.in_(ids)).values(**values))
    return ids


def _in_run(run_id: str, job_ids: Sequence[int]) -> tuple[sa.ColumnElement[bool], ...]:
    """These jobs, where they are still running as this run."""
    return (Job.id.in_(job_ids), Job.status == JobStatus.RUNNING, Job.run_id == run_id)


def _unheld(now: datetime) -> sa.ColumnElement[bool]:
    """No worker holds the job: none claimed it, or its lease ran out."""
    return sa.or_(Job.worker.is_(None), Job.lease_until.is_(None), Job.lease_until < now)


def _refunded() -> sa.ColumnElement[int]:
    """One attempt fewer (a run that never started, a graceful stop), never below none."""
    return sa.case((Job.attempts > 0, Job.attempts - 1), else_=0)


def _check_lease(lease_seconds: float) -> None:
    if not (math.isfinite(lease_seconds) and lease_seconds > 0):
        raise ValueError(f"a lease lasts a positive number of seconds, not {lease_seconds!r}")


def _database_now(session: Session) -> datetime:
    """The database server's time where it has one to give (leases are compared across
    machines whose clocks may differ); this machine's for SQLite, which is on this one."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    now = session.scalar(sa.select(sa.func.statement_timestamp(type_=UTCDateTime())))
    if now is None:  # pragma: no cover - PostgreSQL always answers
        raise StoreError("the database did not tell its time")
    return now


def _lock_in_order(session: Session, *where: sa.ColumnElement[bool]) -> None:
    """Lock the rows that a multi-row UPDATE is about to change, in id order, before it
    runs (PostgreSQL). Two such UPDATEs racing on the same rows then never interleave,
    each taking some of the rows, nor deadlock: the second waits for the first and sees
    its result whole. SQLite needs none of it (one writer at a time, and a read before a
    write there would risk SQLITE_BUSY_SNAPSHOT)."""
    if session.get_bind().dialect.name == "sqlite":
        return
    session.execute(sa.select(Job.id).where(*where).order_by(Job.id).with_for_update())


def _by_run(session: Session, *where: sa.ColumnElement[bool]) -> dict[str, list[int]]:
    """The matching jobs' ids (ascending) by their run id."""
    runs: dict[str, list[int]] = {}
    rows = session.execute(
        sa.select(Job.run_id, Job.id)
        .where(*where, Job.run_id.is_not(None))
        .order_by(Job.run_id, Job.id)
    )
    for run_id, job_id in rows:
        runs.setdefault(run_id, []).append(job_id)
    return runs


def _create_at_head(connection: Connection) -> None:
    Base.metadata.create_all(connection)
    connection.execute(
        sa.insert(QueueState).values(
            id=QUEUE_STATE_ID, paused=False, revision=0, sources_revision=0
        )
    )
    command.stamp(_alembic_config(connection), "head")


def _touch_control(session: Session, changed_by: str | None, **values: object) -> None:
    """Change the shared control row (created on first use) and bump its revision. Who
    and when are those of the last change to a setting (pause, checkpoint, reload): a plain
    bump (a job cancelled, a user changed) leaves them, so "paused by" stays true."""
    if values:
        values = {**values, "changed_by": changed_by, "changed_at": utcnow()}
    # An UPDATE first, not a read: it takes SQLite's write lock (waiting for it) at once.
    change = (
        sa.update(QueueState)
        .where(QueueState.id == QUEUE_STATE_ID)
        .values(revision=QueueState.revision + 1, **values)
        .execution_options(synchronize_session=False)
    )
    if not session.execute(change).rowcount:  # type: ignore[attr-defined]
        session.add(QueueState(id=QUEUE_STATE_ID, revision=0, sources_revision=0))
        session.flush()
        session.execute(change)


def _find_chat(session: Session, platform: str, chat_id: str) -> Chat | None:
    return session.scalars(
        sa.select(Chat).where(Chat.platform == platform, Chat.chat_id == chat_id)
    ).one_or_none()


def _record(cls: type[R], row: object, **extra: object) -> R:
    """Copy the row's columns named like the record's fields; `extra` fills or overrides some."""
    values = {
        field.name: getattr(row, field.name) for field in fields(cls) if field.name not in extra
    }
    return cls(**values, **extra)


def _chat_record(row: Chat) -> ChatRecord:
    return _record(ChatRecord, row, banned_words=tuple(row.banned_words))


def _job_record(row: Job, with_images: bool = False) -> JobRecord:
    images = tuple(_record(ImageRecord, image) for image in row.images) if with_images else ()
    return _record(JobRecord, row, images=images)
