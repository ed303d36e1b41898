"""The queue's engine room: picks batches, runs them on the executor, records and delivers.

The job row is the truth. At start, jobs a crash left running go back to the queue (or fail
after `max_attempts`), the in-memory scheduler is rebuilt from the rows, and results that were
never delivered are delivered once a front end for their platform subscribes.

Every store call runs on the store's own threads (`Store.threads`), never on the event loop: a
slow database must not stall the chats. The scheduler, the job owners read so far, the pause
flag as last read and the event lanes stay in memory on the loop. Where an in-memory change
must go with a database write or read, the comments say how the order keeps them together
(an await lets other coroutines run, and they may look at the same jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from bot.core import lifecycle
from bot.core.bus import EventBus
from bot.core.buttons import ButtonRows, grid_buttons, upscale_buttons
from bot.core.config import TIERS, CoreConfig
from bot.core.errors import log_unexpected, trace_of
from bot.core.events import (
    EventKind,
    JobEvent,
    Origin,
    Reply,
    UserRef,
    message_from_json,
    message_to_json,
)
from bot.core.messages import Key, Localized, Message, error_text, normalise_locale
from bot.core.scheduler import FairScheduler, QueuedJob
from bot.core.shown_maps import control_map_file
from bot.core.words import nsfw_word
from bot.core.work import KIND_KEYS, lora_names, lora_signature, prompt_preview, work_of
from bot.outputs import DISK_FULL, NOT_WRITABLE, OutputsError, SavedImages, prompt_stem, save_images
from bot.store import (
    ControlState,
    DatabaseCorruptError,
    DatabaseReplacedError,
    Delivery,
    JobKind,
    JobRecord,
    JobStatus,
    Store,
    StoreError,
    UserRecord,
)
from bot.store.threads import StoreThreads
from pipeline.errors import InvalidRequestError, first_line
from pipeline.executors import Executor, Failure, FailureKind, OutcomeStatus, Task, TaskOutcome
from pipeline.images import format_infotext, read_infotext
from pipeline.request import GenerationRequest, ProgressEvent

log = logging.getLogger(__name__)
RECENT_JOBS = 20  # finished jobs the ETA is drawn from
# How long a job's next event waits for the previous one's handlers (a hung front end must
# not hold up the others).
LANE_TIMEOUT = 10.0
STORE_RETRY_DELAYS = (1.0, 5.0, 15.0, 30.0)  # seconds between batches while the database fails
# While paused the loop re-reads the database's flag this often: another process (the admin
# command line) may resume it. Replies take the flag as last read (by the loop, the control
# poll, or this process's own pause), at most about this old.
PAUSE_POLL_SECONDS = 0.5
# The shared control row is read this often: a change made by another process (the admin
# command line cancels a job, bans a user, clears the queue) takes effect within it.
CONTROL_POLL_SECONDS = 0.5
# With jobs queued and no slot free for them, the loop looks again this often: a remote worker
# that comes up frees slots without anything in this process waking the loop.
SLOT_POLL_SECONDS = 0.5
ControlListener = Callable[[ControlState, ControlState], None]


class _LostJob(StrEnum):
    """What became of a job whose worker was lost."""

    PENDING = "pending"  # queued again, or waiting for its lease to run out
    DELIVER = "deliver"  # failed: its failure is to be delivered
    SETTLED = "settled"  # cancelled, or finished elsewhere


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # it was queued; it is cancelled now
    STOPPING = "stopping"  # it is running; it stops within a step
    NOT_ACTIVE = "not_active"  # it had already ended


class Dispatcher:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        config: CoreConfig,
        bus: EventBus,
        loaded_model: str | None = None,
    ) -> None:
        """`loaded_model`: the checkpoint loaded at start, preferred until a batch runs."""
        self.store = store
        self.db: StoreThreads = store.threads  # where every store call of the bot runs
        self.executor = executor
        self.config = config
        self.bus = bus
        self.scheduler = FairScheduler(config.max_batch_images)
        self._users: dict[int, UserRecord] = {}
        self._running: dict[int, JobRecord] = {}
        self._wake = asyncio.Event()
        # The database's pause flag as last read (by the loop, the control poll, a pause):
        # what replies say, without a query each.
        self._paused = False
        # Held while a job's row is written and the job joins the queue (and while the queue
        # takes jobs queued by another process): the admission checks and the write go
        # together, and a sync with the store in between would take the new row for one
        # queued elsewhere.
        self.queue_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._shutting_down = False
        self._active_loras: str | None = None
        self._active_model = loaded_model  # the checkpoint the last batch ran on
        self._pending: dict[int, str] = {}  # queued or running job -> its platform
        self._delivering: set[int] = set()
        self._cancel_requested: set[int] = set()  # running jobs a user cancelled
        # Jobs of batches taken from the queue whose rows are being marked running: not in
        # the queue, not running yet (a cancel then ends them before they run).
        self._starting: set[int] = set()
        self._recent: deque[tuple[float, int]] | None = None  # (seconds, images) of done jobs
        self._background: set[asyncio.Future[Any]] = set()
        # Each job's events go out in order, one after the other: a STARTED event is built
        # only once the QUEUED handlers are done, so it carries the status message they bound.
        self._lanes: dict[int, asyncio.Future[Any]] = {}
        self._status_messages: dict[int, str] = {}
        self._previews: dict[int, bytes] = {}  # running job -> its newest preview
        self._retries: dict[int, asyncio.Task[None]] = {}  # job -> its next delivery try
        self._store_failures = 0
        self._control: ControlState | None = None  # the shared row as last read
        self._control_listeners: list[ControlListener] = []
        self._watch_task: asyncio.Task[None] | None = None
        self._fatal = asyncio.Event()
        self.fatal_error: StoreError | None = None  # the database cannot go on
        # Batches started and not yet ended (several at once with remote workers), with their
        # jobs as they were queued: their users count as running from the moment they start.
        self._batches: dict[asyncio.Task[None], Sequence[QueuedJob]] = {}
        self._runs: dict[int, str] = {}  # running job -> its run id
        self._store_retry_at = 0.0  # after a database error, no batch starts before this
        self._detaching = False  # stopping with remote runs left to their workers
        self._pauses = 0  # pauses and resumes made here (which readings of the flag are older)
        self._lease_task: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None  # the one `start` ran on
        store.fatal.add(self._fatal_heard)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        exhausted = message_to_json(
            Message(Key.FAILED_CRASHED, {"attempts": self.config.max_attempts})
        )
        remote = self.executor.remote
        if remote:  # its workers' announcements, before the first batch is placed
            await self.executor.start()  # type: ignore[attr-defined]
        recovery = await self.db.run(
            self.store.recover, self.config.max_attempts, exhausted, keep_leased=remote
        )
        if recovery.requeued or recovery.failed:
            log.info(
                "Recovered after a stop: %d job(s) queued again, %d failed",
                len(recovery.requeued),
                len(recovery.failed),
            )
        queued = await self.db.run(self.store.queued_jobs)
        await self._read_owners(job.user_id for job in queued)
        for job in queued:
            try:
                self.scheduler.add(self.queued_job(job))
            except ValueError as error:  # a request this version cannot read
                log.warning("Job %s cannot be read and fails: %s", job.id, error)
                text = error_text(error) if isinstance(error, InvalidRequestError) else None
                detail = Message(Key.FAILED_INVALID, {"detail": text or first_line(error)})
                await self.db.run(self.store.mark_failed, job.id, message_to_json(detail))
                continue
            self._pending[job.id] = job.origin_platform
            if job.id in recovery.requeued:
                lifecycle.requeued(job, self.user)
        recent = await self.db.run(self.store.recent_durations, RECENT_JOBS)
        self._recent = deque(recent, maxlen=RECENT_JOBS)
        self._control = await self._read_control()
        if self.paused():
            log.warning("The queue is paused: no job starts until an admin resumes it")
        if remote:
            await self._adopt_leased_runs()
            self._lease_task = asyncio.create_task(self._watch_leases(), name="easel-leases")
        self._loop_task = asyncio.create_task(self._loop(), name="easel-dispatcher")
        self._watch_task = asyncio.create_task(self._watch_control(), name="easel-control")

    async def _adopt_leased_runs(self) -> None:
        """Runs that remote workers still hold under a live lease (this bot restarted while
        they ran): follow them to their results instead of running them again."""
        for run_id, job_ids in (await self.db.run(self.store.leased_runs)).items():
            jobs = await self.db.run(jobs_by_id, self.store, job_ids)
            if not jobs:
                continue
            await self._read_owners(job.user_id for job in jobs)
            worker = jobs[0].worker or ""
            log.info(
                "Run %s (jobs %s) is still on worker %s: waiting for its result",
                run_id,
                ", ".join(str(job.id) for job in jobs),
                worker,
            )
            queued = {job.id: self.queued_job(job) for job in jobs}
            for job in jobs:
                self._pending[job.id] = job.origin_platform
            tasks = [Task(job.id, work_of(job)) for job in jobs]
            sink = self._progress_sink(jobs, await self._flags(jobs))
            adoption = self.executor.adopt(  # type: ignore[attr-defined]
                tasks, sink, self._preview_interval(jobs), run_id, worker
            )
            task = asyncio.create_task(self._guarded(self._follow(jobs, run_id, queued, adoption)))
            self._batches[task] = list(queued.values())
            task.add_done_callback(self._batch_ended)

    async def _watch_leases(self) -> None:
        """Leases that ran out (their worker died without a word) give their runs up: the
        jobs go back to the queue, or fail once out of attempts."""
        every = max(0.2, self.config.lease_seconds / 3)
        while not self._stopping:
            await asyncio.sleep(every)
            try:
                expired = await self.db.run(self.store.expired_leases)
            except StoreError as error:
                log.warning("Cannot read the remote runs' leases: %s", error)
                continue
            for run_id, job_ids in expired.items():
                followed = [job_id for job_id in job_ids if self._runs.get(job_id) == run_id]
                if followed:
                    self.executor.abandon(run_id)  # type: ignore[attr-defined]
                    continue
                await self._requeue_unfollowed(run_id, job_ids)

    async def _requeue_unfollowed(self, run_id: str, job_ids: Sequence[int]) -> None:
        """A lost run this bot does not follow (it was another bot's, before a restart)."""
        async with self.queue_lock:  # rows queued again and the queue's jobs, together
            recovery = await self.db.run(
                self.store.requeue_lost,
                run_id,
                job_ids,
                self.config.max_worker_losses,
                self._worker_lost_text(),
                ran=True,
            )
            requeued = await self.db.run(jobs_by_id, self.store, recovery.requeued)
            await self._read_owners(job.user_id for job in requeued)
            for job in requeued:
                if job.id not in self.scheduler:
                    self.enqueue(job)
                    lifecycle.requeued(job, self.user)
        for job_id in recovery.failed:
            self._in_background(self._deliver_final(job_id))
        self._wake.set()

    def _fatal_heard(self, error: StoreError) -> None:
        """The store says that the database cannot go on, on the thread its call ran on (one
        of the store's own): acted on on the event loop."""
        loop = self._event_loop
        if loop is None or loop.is_closed() or _running_loop() is loop:
            self._database_failed(error)
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to stop
            loop.call_soon_threadsafe(self._database_failed, error)

    def _database_failed(self, error: StoreError) -> None:
        """The database cannot go on: take no new batch, and let the bot stop saying why."""
        if self.fatal_error is None:
            log.error("Stopping: %s", error)
            self.fatal_error = error
        self._stopping = True
        self._wake.set()
        self._fatal.set()

    async def failed(self) -> StoreError:
        """Wait until the database fails for good (deleted, replaced, corrupted)."""
        await self._fatal.wait()
        assert self.fatal_error is not None
        return self.fatal_error

    async def stop(self) -> int:
        """Take no new batch; let the running one finish within the timeout, else stop it
        (its jobs go back to the queue). Queued jobs stay queued in the database. How many
        running jobs the timeout stopped (0: the batch finished in time, or there was none).
        Remote runs are left to their workers: their leases keep them, and the next start
        waits for their results."""
        self._stopping = True
        self._wake.set()
        for task in (self._watch_task, self._lease_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, LANE_TIMEOUT)
        self._watch_task = self._lease_task = None
        if self.executor.remote:
            self._detaching = True
            for batch in list(self._batches):
                batch.cancel()
        stopped = 0
        if self._loop_task is None:
            return stopped
        try:
            await asyncio.wait_for(asyncio.shield(self._loop_task), self.config.shutdown_timeout)
        except TimeoutError:
            self._shutting_down = True
            stopped = len(self._running)
            for job_id in list(self._running):
                self.executor.cancel(job_id)
            try:
                # A cancelled batch stops within a step; a hung front end must not hold us.
                await asyncio.wait_for(self._loop_task, max(10.0, self.config.shutdown_timeout))
            except TimeoutError:
                log.warning("The running batch did not stop; it runs again at the next start")
        self._loop_task = None
        for retry in self._retries.values():  # an undelivered result goes at the next start
            retry.cancel()
        if self._background:  # results being delivered; an undelivered one goes at next start
            await asyncio.wait(
                set(self._background), timeout=max(10.0, self.config.shutdown_timeout)
            )
        return stopped

    def stop_now(self) -> int:
        """Stop the running batch at once (during `stop`); its jobs go back to the queue
        without using up an attempt. Remote runs stay with their workers (see `stop`)."""
        if self.executor.remote:
            self._stopping = self._detaching = True
            self._wake.set()
            for batch in list(self._batches):
                batch.cancel()
            return 0
        self._stopping = True
        self._shutting_down = True
        self._wake.set()
        for job_id in list(self._running):
            self.executor.cancel(job_id)
        return len(self._running)

    async def redeliver(self, platform: str) -> int:
        """Deliver the finished and failed jobs of a platform that no front end took yet."""
        count = 0
        for job in await self.db.run(self.store.undelivered, platform):
            count += await self._deliver_final(job.id)
        return count

    async def _deliver_final(self, job_id: int) -> bool:
        """Publish a job's result once: a job being published is skipped, and the row says
        whether it was already taken. A front end that fails gets it again later, with
        backoff, while the bot runs; each try is counted in the row."""
        if job_id in self._delivering:
            return False
        self._delivering.add(job_id)  # before any await: a second call skips the job
        try:
            job = await self.db.run(self.store.job, job_id, with_images=True)
            if job is None or job.delivery is Delivery.DELIVERED:
                return False
            await self._after_earlier_events(job_id)
            if not self.bus.has_subscribers(job.origin_platform):
                return False  # delivered when a front end for the platform subscribes
            attempt = await self.db.run(self.store.count_delivery_attempt, job_id)
            delivered = await self.bus.publish(await self._final_event(job))
            if delivered:
                await self.db.run(self.store.mark_delivered, job_id)
                self._status_messages.pop(job_id, None)
            else:
                self._retry_delivery(job_id, attempt)
            return delivered
        finally:
            self._delivering.discard(job_id)

    def _retry_delivery(self, job_id: int, attempt: int) -> None:
        delays = self.config.delivery_retry_delays
        if self._stopping or not delays or job_id in self._retries:
            return
        delay = delays[min(attempt, len(delays)) - 1]
        log.warning(
            "Delivering job %s failed (try %d); trying again in %.0f s", job_id, attempt, delay
        )

        async def again() -> None:
            await asyncio.sleep(delay)
            self._retries.pop(job_id, None)
            await self._deliver_final(job_id)

        task = asyncio.create_task(again(), name=f"easel-redeliver-{job_id}")
        self._retries[job_id] = task
        task.add_done_callback(
            lambda _: self._retries.pop(job_id, None) if self._retries.get(job_id) is task else None
        )

    # ------------------------------------------------------------------ the queue

    def user(self, user_id: int) -> UserRecord:
        """A job's owner as last read. Owners are read off the loop before their jobs join
        the queue or their steps are logged (`owner`, `_read_owners`); one that was not is
        read here, on the caller's thread."""
        user = self._users.get(user_id)
        if user is None:
            user = self.store.user_by_id(user_id)
            assert user is not None, f"job owner {user_id} is missing"
            self._users[user_id] = user
        return user

    async def owner(self, user_id: int) -> UserRecord:
        """A job's owner as last read; read now (off the loop) if not read yet."""
        user = self._users.get(user_id)
        if user is None:
            found = await self.db.run(self.store.user_by_id, user_id)
            assert found is not None, f"job owner {user_id} is missing"
            user = self._users.setdefault(user_id, found)
        return user

    async def _read_owners(self, user_ids: Iterable[int]) -> None:
        """Read the users not read yet, in one call off the loop: sync code (the scheduler's
        caps, the queue's tiers, the log lines) then finds them."""
        missing = {user_id for user_id in user_ids if user_id not in self._users}
        if missing:
            for user in await self.db.run(users_by_id, self.store, missing):
                self._users.setdefault(user.id, user)  # one read meanwhile is as fresh

    def remember_user(self, user: UserRecord) -> None:
        """A user's role changed here: their next job takes the new tier."""
        self._users[user.id] = user

    async def _read_owners_again(self) -> None:
        """Another process may have changed users (roles, quotas): the owners of the jobs
        queued, starting or running are read again; others are read when next needed."""
        before = dict(self._users)
        read = {
            user.id: user for user in await self.db.run(users_by_id, self.store, self._owners_now())
        }
        users: dict[int, UserRecord] = {}
        for user_id in self._owners_now():  # jobs may have joined during the read
            current = self._users.get(user_id)
            # One written here during the read (a role an admin set) is newer than the read.
            if current is not None and current is not before.get(user_id):
                users[user_id] = current
            elif (user := read.get(user_id, current)) is not None:
                users[user_id] = user
        self._users = users

    def _owners_now(self) -> set[int]:
        return (
            {item.user_id for item in self.scheduler.jobs()}
            | {item.user_id for batch in self._batches.values() for item in batch}
            | {job.user_id for job in self._running.values()}
        )

    def queued_job(self, job: JobRecord) -> QueuedJob:
        work = work_of(job)
        return QueuedJob(
            job_id=job.id,
            user_id=job.user_id,
            tier=TIERS[self.user(job.user_id).role],
            images=max(job.image_count, math.ceil(job.cost)),
            batch_key=job.batch_key,
            lora_set=lora_signature(work),
            model=work.model or "",
            lora_names=lora_names(work),
        )

    def enqueue(self, job: JobRecord, owner: UserRecord | None = None) -> int:
        """Queue a stored job; its 1-based position. `owner`, when given, is the job's user
        as just read (their role decides the tier)."""
        if owner is not None:
            self._users[owner.id] = owner
        self.scheduler.add(self.queued_job(job))
        self._pending[job.id] = job.origin_platform
        return self.scheduler.position(job.id) + 1

    def announce_queued(self, job: JobRecord, reply: Reply, position: int) -> None:
        """Send the queued event, then let the loop take the job: front ends see "queued"
        before "started"."""
        lifecycle.queued(job, self.user, position)
        self._emit(job, EventKind.QUEUED, reply, position=position)
        self._wake.set()

    async def bind_status_message(self, job_id: int, message_id: str) -> None:
        """The front end's own message about a job (to edit with progress and the result);
        every later event of the job carries it (at once: the row is written after)."""
        self._status_messages[job_id] = message_id
        await self.db.run(self.store.set_status_message, job_id, message_id)

    async def cancel(self, job: JobRecord) -> CancelOutcome:
        """Cancel a queued job (its row and its chat's message change together) or ask a
        running one to stop (it ends cancelled within a step)."""
        if self.scheduler.remove(job.id) is not None:
            # Out of the queue before any await: the loop cannot start it now. Until its row
            # says cancelled the job stays pending here, so a sync with the store does not
            # take the still-queued row for one queued by another process.
            self._cancel_requested.discard(job.id)
            await self.db.run(self.store.mark_cancelled, job.id)
            await self.owner(job.user_id)  # for the log line
            lifecycle.cancelled(job, self.user)
            self._emit(job, EventKind.CANCELLED, Reply(Message(Key.CANCELLED, {"job": job.id})))
            await self._settled(job.id)
            return CancelOutcome.CANCELLED
        if job.id in self._running or job.id in self._starting:
            # A starting job (its batch taken, its rows being marked running) is not run:
            # `_execute` ends it cancelled.
            self._cancel_requested.add(job.id)
            self.executor.cancel(job.id)
            return CancelOutcome.STOPPING
        return CancelOutcome.NOT_ACTIVE

    def running_jobs(self) -> list[JobRecord]:
        return list(self._running.values())

    def pending_for(self, platform: str) -> bool:
        """Whether a job of this platform is still queued or running."""
        return platform in self._pending.values()

    async def wait_until_idle(self, platform: str) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: not self.pending_for(platform))

    async def wait_until_idle_or_paused(self, platform: str) -> int:
        """Wait until no job of `platform` is queued or running, or until the queue is paused
        and none of them runs (a paused queue would wait for ever): how many stay queued."""
        while True:
            running = any(job.origin_platform == platform for job in self._running.values())
            queued = sum(1 for pending in self._pending.values() if pending == platform)
            if not queued or (not running and self.paused()):
                return queued
            # A pause (maybe by another process) does not wake the condition: look again.
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), PAUSE_POLL_SECONDS)

    def eta_seconds(self, job_id: int, position: int) -> float | None:
        """A rough wait at recent seconds per image: the jobs ahead (each the queue's average
        size, a job of many AND parts counting as more images) and this job's own. None
        while the queue is paused: nothing starts until an admin resumes it."""
        if self.paused() or self._recent is None:  # None: read at `start`
            return None
        total_images = sum(count for _, count in self._recent)
        queued = len(self.scheduler)
        if not total_images or not queued or job_id not in self.scheduler:
            return None
        per_image = sum(seconds for seconds, _ in self._recent) / total_images
        own = self.scheduler.images_of(job_id)
        ahead = (position - 1) * self.scheduler.queued_images() / queued
        return per_image * (ahead + own)

    # ------------------------------------------------------------------ other processes

    def on_control_change(self, listener: ControlListener) -> None:
        """Call `listener(before, after)` whenever the shared control row changes (another
        process chose a checkpoint, asked for a reload, ...), on the event loop."""
        self._control_listeners.append(listener)

    async def _read_control(self) -> ControlState:
        pauses = self._pauses
        state = await self.db.run(self.store.control_state)
        self._note_paused(state.paused, pauses)
        return state

    async def _watch_control(self) -> None:
        """Poll the shared control row; when its revision moved, bring the queue in line
        with the database, the truth that another process may have changed."""
        while not self._stopping:
            await asyncio.sleep(CONTROL_POLL_SECONDS)
            try:
                state = await self._read_control()
            except StoreError as error:  # the loop says so too, and stops when it is fatal
                log.warning("Cannot read the shared control row: %s", error)
                continue
            before = self._control
            if before is not None and state.revision == before.revision:
                continue
            try:
                await self.sync_with_store()
            except StoreError as error:  # the loop says so too, and stops when it is fatal
                # This revision is not taken as seen: the sync runs again at the next poll.
                log.warning("Cannot read what other processes changed: %s", error)
                continue
            except Exception:  # a bug; retrying it at every poll would not help
                log.exception("Acting on a change from another process failed")
            self._control = state
            if before is None or state.paused != before.paused:
                self._wake.set()  # a resume starts the next batch now, not at the loop's poll
            if before is not None:
                self._tell_listeners(before, state)

    def _tell_listeners(self, before: ControlState, after: ControlState) -> None:
        """Each listener hears of the change, whatever an earlier one raised."""
        for listener in self._control_listeners:
            try:
                listener(before, after)
            except Exception:
                log.exception("A listener of the shared control row failed")

    async def sync_with_store(self) -> None:
        """Another process changed jobs or users: owners are read again (roles, quotas);
        running jobs someone asked to stop stop within a step; queued jobs cancelled or
        deleted leave the queue (the chat is told of a cancel); jobs queued by another
        process (a retry) join it."""
        await self._read_owners_again()
        # Starting jobs too: their rows may say running already (a cancel for them is
        # applied when their batch starts, see `_execute`).
        taken = [*self._running, *(self._starting - self._running.keys())]
        for job_id in await self.db.run(self.store.cancel_requested, taken):
            if job_id not in self._cancel_requested:
                log.info("Job %s: stopping, as asked from another process", job_id)
                self._cancel_requested.add(job_id)
                self.executor.cancel(job_id)
        queued = [item.job_id for item in self.scheduler.jobs()]
        statuses = await self.db.run(self.store.job_statuses, queued)
        for job_id in queued:
            status = statuses.get(job_id)
            # A running row in the queue is one put back when the database failed mid-batch:
            # it runs again. One the loop took meanwhile (an await lets it run) is the
            # batch's to report: it is not started, and said to be cancelled, there.
            if status in (JobStatus.QUEUED, JobStatus.RUNNING):
                continue
            if self.scheduler.remove(job_id) is None:
                continue
            await self._left_queue_elsewhere(job_id)
        async with self.queue_lock:  # no job of this process is being queued meanwhile
            joined = [
                job for job in await self.db.run(self.store.queued_jobs) if not self._holds(job.id)
            ]
            await self._read_owners(job.user_id for job in joined)
            for job in joined:
                if self._holds(job.id):  # taken meanwhile (an await above)
                    continue
                try:
                    position = self.enqueue(job)
                except ValueError as error:
                    log.warning("Job %s cannot be read and is left alone: %s", job.id, error)
                    continue
                log.info("Job %s joined the queue from another process", job.id)
                # Its own key: no chat command made it, so no ticket said it (the console,
                # which shows no QUEUED event of its own jobs, shows this one).
                message = Message(Key.QUEUED_BY_OPERATOR, {"job": job.id, "position": position})
                self.announce_queued(job, Reply(message), position)

    def _holds(self, job_id: int) -> bool:
        """Whether this process has the job: queued, starting, running, or on its way out
        (being cancelled, delivered): a queued row of it is not a job from elsewhere."""
        return job_id in self.scheduler or job_id in self._running or job_id in self._pending

    # ------------------------------------------------------------------ the loop

    def paused(self) -> bool:
        """Whether the queue is paused (the database's flag, shared with other processes), as
        last read: by the loop before each batch (PAUSE_POLL_SECONDS apart while paused), by
        the control poll (every CONTROL_POLL_SECONDS), and at once by a pause or resume made
        here. Replies (the queued message, the ETA) ask it without a query: every queued
        reply asks, and a busy bot would otherwise spend one on each."""
        return self._paused

    async def _read_paused(self) -> bool:
        """The flag read now, for starting a batch. A database that cannot be read counts
        as not paused: the batch then says why."""
        pauses = self._pauses
        try:
            paused = await self.db.run(self.store.queue_paused)
        except StoreError as error:
            log.warning("Cannot read the queue's pause flag: %s", error)
            return False
        self._note_paused(paused, pauses)
        return paused

    def _note_paused(self, paused: bool, pauses: int) -> None:
        """A reading of the flag that began when `pauses` pauses had been made here; one that
        began before this process's latest pause or resume is older than what it wrote."""
        if pauses == self._pauses:
            self._paused = paused

    async def set_paused(self, paused: bool, changed_by: str | None = None) -> None:
        """Pause (no new batch starts; a running one finishes) or resume the queue."""
        await self.db.run(self.store.set_queue_paused, paused, changed_by)
        self._pauses += 1
        self._paused = paused
        self._wake.set()

    async def _loop(self) -> None:
        """Start batches while slots are free (one with the local executor; one per free
        engine of the remote workers), fairly; each runs as its own task."""
        try:
            while not self._stopping:
                # Cleared before looking: whatever happens while the flag is read (a job
                # queued, a batch ended, a stop) cuts the nap below short.
                self._wake.clear()
                paused = await self._read_paused()
                if self._stopping:  # asked to stop during the read
                    break
                if paused:
                    await self._nap(PAUSE_POLL_SECONDS)
                    continue
                wait = self._store_retry_at - time.monotonic()
                if wait > 0:  # the database failed: the jobs went back to the queue
                    await self._nap(wait)
                    continue
                batch = self.scheduler.next_batch(
                    self._running_users(),
                    self._running_cap,
                    self._active_loras,
                    self._active_model,
                    runnable=lambda job: self.executor.can_start(job.model or None),
                )
                if not batch:
                    await self._nap(SLOT_POLL_SECONDS if len(self.scheduler) else None)
                    continue
                slot = self.executor.reserve(batch[0].model or None, _lora_names(batch))
                if slot is None:  # taken meanwhile (can_start said otherwise): next time
                    for item in batch:
                        self.scheduler.add(item)
                    await self._nap(SLOT_POLL_SECONDS)
                    continue
                task = asyncio.create_task(self._guarded(self._run_batch(batch, slot)))
                self._batches[task] = batch
                # Out of the queue and not running yet: a cancel from now on finds it starting.
                self._starting.update(item.job_id for item in batch)
                task.add_done_callback(self._batch_ended)
        finally:
            if self._batches:
                await asyncio.gather(*self._batches, return_exceptions=True)

    async def _nap(self, seconds: float | None) -> None:
        """Wait for something to do: a job queued, a batch ended, a resume (or `seconds`),
        since the loop last looked (it clears `_wake` first)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _batch_ended(self, task: asyncio.Task[None]) -> None:
        self._batches.pop(task, None)
        self._wake.set()

    def _running_users(self) -> Counter[int]:
        """Each user's jobs in batches that started (counted before their rows say so)."""
        return Counter(item.user_id for batch in self._batches.values() for item in batch)

    async def _guarded(self, run: Coroutine[Any, Any, None]) -> None:
        """One batch; whatever it raises stays here: the loop outlives any batch."""
        try:
            await run
            self._store_failures = 0
        except (DatabaseReplacedError, DatabaseCorruptError):
            return  # the store told `_database_failed`
        except StoreError as error:
            # The jobs went back to the queue; the database may recover (space freed).
            self._store_failures += 1
            delay = STORE_RETRY_DELAYS[min(self._store_failures, len(STORE_RETRY_DELAYS)) - 1]
            log.error("The database failed: %s; trying again in %.0f s", error, delay)
            self._store_retry_at = time.monotonic() + delay
        except asyncio.CancelledError:
            if not self._detaching:
                raise
        except Exception:
            log.exception("A batch failed outside the executor")

    async def _settled(self, job_id: int) -> None:
        """A job left the queue for good (or until the next start)."""
        self._pending.pop(job_id, None)
        async with self._changed:
            self._changed.notify_all()

    def _running_cap(self, user_id: int) -> int:
        user = self.user(user_id)
        return self.config.running_cap(user.role, user.max_running)

    async def _run_batch(self, batch: Sequence[QueuedJob], slot: str) -> None:
        """Run one batch in the slot reserved for it. Every job ends recorded (done,
        failed, cancelled, or queued again for a shutdown or a lost worker) and settled,
        whatever raises on the way."""
        ids = [item.job_id for item in batch]
        queued = {item.job_id: item for item in batch}
        run_id = uuid.uuid4().hex
        try:
            try:
                started = await self.db.run(self.store.mark_running, ids, run_id=run_id)
                jobs = await self.db.run(jobs_by_id, self.store, started)
                await self._read_owners(job.user_id for job in jobs)
            except StoreError:
                self.executor.release(slot)
                for item in batch:  # a cancel asked meanwhile applies when it starts again
                    self.scheduler.add(item)
                raise
            execution = self._execute(jobs, run_id, slot) if jobs else None
            if execution is None:
                self.executor.release(slot)
            for job_id in set(ids) - {job.id for job in jobs}:  # not started: no cancel to apply
                self._cancel_requested.discard(job_id)
            await self._follow(jobs, run_id, queued, execution, set(ids))
        finally:
            self._starting.difference_update(ids)

    async def _follow(
        self,
        jobs: Sequence[JobRecord],
        run_id: str,
        queued: dict[int, QueuedJob],
        execution: Coroutine[Any, Any, list[TaskOutcome]] | None,
        asked: set[int] | None = None,
    ) -> None:
        """Await a run's outcomes and record them. `asked`: the ids the batch was started
        with (a missing one was cancelled or deleted from another process just before)."""
        for job in jobs:  # before any await: a cancel from now on finds the job running
            self._running[job.id] = job
            self._runs[job.id] = run_id
            self._starting.discard(job.id)
            lifecycle.started(job, self.user)
        for gone in (asked or set()) - {job.id for job in jobs}:
            await self._left_queue_elsewhere(gone)
        recorded: set[int] = set()
        delivering: set[int] = set()
        requeued: set[int] = set()
        store_failed = False
        try:
            outcomes = await execution if execution is not None else []
            if jobs:
                self._active_loras = lora_signature(work_of(jobs[0]))
            model = work_of(jobs[0]).model if jobs else None
            if model and any(o.status is OutcomeStatus.DONE for o in outcomes):
                self._active_model = model
            images = sum(max(1, len(outcome.images)) for outcome in outcomes) or 1
            for job, outcome in zip(jobs, outcomes, strict=True):
                share = outcome.seconds * max(1, len(outcome.images)) / images
                if outcome.status in (OutcomeStatus.LOST, OutcomeStatus.NOT_TAKEN):
                    fate = await self._lost(job, outcome, run_id)
                    if fate is _LostJob.DELIVER:
                        delivering.add(job.id)
                    elif fate is _LostJob.PENDING:
                        requeued.add(job.id)
                elif await self._record_safely(job, outcome, share, run_id):
                    # Uploads can take seconds: the next batch need not wait for them.
                    delivering.add(job.id)
                if job.id in delivering:
                    self._in_background(self._deliver_and_settle(job.id))
                recorded.add(job.id)
            if jobs and self.executor.remote:
                self.executor.recorded(run_id)  # type: ignore[attr-defined]
        except StoreError:
            store_failed = True
            raise
        finally:
            for job in jobs:
                again = job.id not in recorded
                if again and store_failed:  # runs again once the database is back
                    # As it was queued: rebuilding it would read its owner from the
                    # database that just failed.
                    self.scheduler.add(queued[job.id])
                elif again and not self._detaching:  # the loop is being torn down mid-batch
                    await self.db.run(self.store.requeue, [job.id], refund_attempt=True)
                self._running.pop(job.id, None)
                self._runs.pop(job.id, None)
                self._previews.pop(job.id, None)
                self._cancel_requested.discard(job.id)
                settle = not (again and store_failed) and job.id not in requeued
                if job.id not in delivering and settle and not (again and self._detaching):
                    await self._settled(job.id)

    def _worker_lost_text(self) -> str:
        losses = self.config.max_worker_losses
        return message_to_json(Message(Key.FAILED_WORKER_LOST, {"attempts": losses}))

    async def _lost(self, job: JobRecord, outcome: TaskOutcome, run_id: str) -> _LostJob:
        """The worker running the job was lost: it goes back to the queue (no attempt spent
        when the worker never took it), or fails once out of attempts (its failure is then to
        be delivered), or ends cancelled when someone asked. While its lease still holds, it
        stays as it is until the lease runs out (`_watch_leases`)."""
        ran = outcome.status is OutcomeStatus.LOST
        recovery = await self.db.run(
            self.store.requeue_lost,
            run_id,
            [job.id],
            self.config.max_worker_losses,
            self._worker_lost_text(),
            ran=ran,
        )
        if job.id in recovery.requeued:
            log.warning("Job %s: its GPU worker was lost; it is queued again", job.id)
            fresh = await self.db.run(self.store.job, job.id)
            if fresh is not None:
                self.scheduler.add(self.queued_job(fresh))
                lifecycle.requeued(fresh, self.user)
            return _LostJob.PENDING
        if job.id in recovery.failed:
            log.error("Job %s: its GPU worker was lost %d times; it fails", job.id, job.attempts)
            lifecycle.failed(job, self.user, "worker_lost")
            return _LostJob.DELIVER
        if job.id in recovery.cancelled:
            lifecycle.cancelled(job, self.user)
            self._emit(job, EventKind.CANCELLED, Reply(Message(Key.CANCELLED, {"job": job.id})))
            return _LostJob.SETTLED
        row = await self.db.run(self.store.job, job.id)
        if row is not None and row.status is JobStatus.RUNNING and row.run_id == run_id:
            log.warning(
                "Job %s: its GPU worker %s is silent; it runs again once its lease ends",
                job.id,
                row.worker,
            )
            return _LostJob.PENDING
        log.warning("Job %s: run %s was lost, and the job had moved on", job.id, run_id)
        return _LostJob.SETTLED

    async def _left_queue_elsewhere(self, job_id: int) -> None:
        job = await self.db.run(self.store.job, job_id)
        if job is not None and job.status is JobStatus.CANCELLED:
            await self.owner(job.user_id)  # for the log line
            lifecycle.cancelled(job, self.user)
            self._emit(job, EventKind.CANCELLED, Reply(Message(Key.CANCELLED, {"job": job_id})))
        await self._settled(job_id)

    async def _deliver_and_settle(self, job_id: int) -> None:
        try:
            await self._deliver_final(job_id)
        finally:
            await self._settled(job_id)

    async def _execute(
        self, jobs: Sequence[JobRecord], run_id: str, slot: str
    ) -> list[TaskOutcome]:
        """The executor's outcomes; anything that goes wrong before or inside it fails the
        batch's jobs with the error, never the loop. A job cancelled while its batch started
        (before the executor knew it) ends cancelled without running; during an immediate
        stop, none runs (they go back to the queue, see `_record`)."""
        try:
            flagged = await self._flags(jobs)
            # From here to the executor's run, no await: a cancel before it is seen here,
            # one after it reaches the executor.
            stopped = {
                job.id for job in jobs if self._shutting_down or job.id in self._cancel_requested
            }
            running = [job for job in jobs if job.id not in stopped]
            tasks = [Task(job.id, work_of(job)) for job in running]
            for job in running:
                self._emit(job, EventKind.STARTED, Reply(Message(Key.STARTED, self._about(job))))
            previews = self._preview_interval(jobs)
            if not stopped:
                return await self.executor.run(
                    tasks, self._progress_sink(jobs, flagged), previews, run_id=run_id, slot=slot
                )
            outcomes: list[TaskOutcome] = []
            if tasks:
                sink = self._progress_sink(running, flagged)
                outcomes = await self.executor.run(tasks, sink, previews, run_id=run_id, slot=slot)
            else:
                self.executor.release(slot)
            ended = {outcome.task_id: outcome for outcome in outcomes}
            ended.update(
                {job_id: TaskOutcome(job_id, OutcomeStatus.CANCELLED) for job_id in stopped}
            )
            return [ended[job.id] for job in jobs]
        except Exception as error:
            failure = Failure(FailureKind.ERROR, first_line(error), trace_of(error))
            return [TaskOutcome(job.id, OutcomeStatus.FAILED, failure=failure) for job in jobs]

    def _preview_interval(self, jobs: Sequence[JobRecord]) -> float | None:
        """Previews cost a little GPU time: they are made only for a front end that shows
        them, at most one per progress interval."""
        if any(self.bus.wants_previews(job.origin_platform) for job in jobs):
            return self.config.progress_interval
        return None

    async def _record_safely(
        self, job: JobRecord, outcome: TaskOutcome, seconds: float, run_id: str
    ) -> bool:
        """Record one job; an error here (a full disk under the outputs) fails that job, not
        the batch. A database that fails is the loop's to handle: nothing can be recorded."""
        try:
            return await self._record(job, outcome, seconds, run_id)
        except StoreError:
            raise
        except OutputsError as error:
            log.error("Saving job %s failed: %s", job.id, error.detail)
            key = _OUTPUTS_REASONS.get(error.reason)
            if key is None:
                return await self._record(job, _failed_outcome(job, error), seconds, run_id)
            message = message_to_json(Message(key))
            marked = await self.db.run(
                self.store.mark_failed, job.id, message, error.detail, run_id=run_id
            )
            if not marked:
                return self._dropped(job, run_id)
            lifecycle.failed(job, self.user, error.reason)
            return True
        except Exception as error:
            return await self._record(job, _failed_outcome(job, error), seconds, run_id)

    def _dropped(self, job: JobRecord, run_id: str) -> bool:
        """A result for a job that is no longer this run's (finished, cancelled or queued
        again meanwhile: a worker given up as lost came back) is not recorded."""
        log.warning(
            "Job %s: a result from run %s arrived after the job had moved on; dropped",
            job.id,
            run_id,
        )
        return False

    def _progress_sink(
        self, jobs: Sequence[JobRecord], flagged: dict[int, bool]
    ) -> Callable[[ProgressEvent], None]:
        """`flagged`: the jobs whose previews go behind spoilers too (`_flags`)."""

        def on_progress(event: ProgressEvent) -> None:
            self._previews.update(dict(event.previews))
            for job in jobs:
                message = Message(
                    Key.PROGRESS, {"job": job.id, "step": event.step, "total": event.total}
                )
                self._emit(
                    job,
                    EventKind.PROGRESS,
                    Reply(message, flagged=flagged[job.id]),
                    step=event.step,
                    total=event.total,
                    preview=self._previews.get(job.id),
                )

        return on_progress

    async def _record(
        self, job: JobRecord, outcome: TaskOutcome, seconds: float, run_id: str
    ) -> bool:
        """Write the outcome to the job's row, if the row is still this run's; True when a
        result (done or failed) is to be delivered. `seconds`: this job's share of the
        batch's time, for the ETA."""
        if outcome.status is OutcomeStatus.DONE:
            saved = await asyncio.to_thread(self._save, job, outcome)
            grid = _text(saved.grid)
            marked = await self.db.run(
                self.store.mark_done, job.id, saved.records, grid, seconds, run_id=run_id
            )
            if not marked:
                await asyncio.to_thread(_remove_saved, saved)
                return self._dropped(job, run_id)
            if self._recent is not None:
                self._recent.append((seconds, max(1, len(outcome.images))))
            lifecycle.finished(job, self.user, len(outcome.images), seconds)
        elif outcome.status is OutcomeStatus.FAILED:
            assert outcome.failure is not None
            message = self._failure_message(job, outcome.failure)
            trace = outcome.failure.trace
            marked = await self.db.run(
                self.store.mark_failed, job.id, message_to_json(message), trace, run_id=run_id
            )
            if not marked:
                return self._dropped(job, run_id)
            lifecycle.failed(job, self.user, outcome.failure.kind)
        elif self._shutting_down and job.id not in self._cancel_requested:
            # Stopped by the shutdown, not by anyone's choice: it runs again at the next start.
            await self.db.run(self.store.requeue, [job.id], refund_attempt=True)
            lifecycle.requeued(job, self.user)
            return False
        else:
            if not await self.db.run(self.store.mark_cancelled, job.id, run_id=run_id):
                return self._dropped(job, run_id)
            lifecycle.cancelled(job, self.user)
            self._emit(job, EventKind.CANCELLED, Reply(Message(Key.CANCELLED, {"job": job.id})))
            return False
        return True

    def _failure_message(self, job: JobRecord, failure: Failure) -> Message:
        """What the user is told. An unexpected error is logged with its traceback under a
        reference that the user sees instead of the error itself."""
        if failure.kind is FailureKind.ERROR:
            owner = _user_ref(self.user(job.user_id))
            trace = failure.trace or failure.detail
            reference = log_unexpected(f"Job {job.id}", owner, job.id, trace=trace)
            return Message(Key.FAILED_INTERNAL, {"reference": reference})
        key = {
            FailureKind.OUT_OF_MEMORY: Key.FAILED_OUT_OF_MEMORY,
            FailureKind.INVALID: Key.FAILED_INVALID,
        }[failure.kind]
        detail: Localized | str = failure.detail
        if failure.detail_ko is not None:
            detail = Localized(failure.detail, failure.detail_ko)
        return Message(key, {"detail": detail})

    def _save(self, job: JobRecord, outcome: TaskOutcome) -> SavedImages:
        stem = prompt_stem(outcome.images[0].infotext.prompt) if outcome.images else "image"
        if job.kind is JobKind.UPSCALE:
            stem = f"upscaled-{stem}"
        return save_images(outcome.images, self.config.outputs_dir, stem, job_id=job.id)

    # ------------------------------------------------------------------ events

    def _in_background(self, update: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(update)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _emit(self, job: JobRecord, kind: EventKind, reply: Reply, **fields: Any) -> None:
        """Publish an event of the job after its earlier ones, without waiting for it."""
        earlier = self._lanes.get(job.id)

        async def publish() -> None:
            await _after(earlier)
            await self.bus.publish(await self._event(job, kind, reply, **fields))

        task = self._in_background(publish())
        self._lanes[job.id] = task

        def forget(_: asyncio.Future[Any]) -> None:
            if self._lanes.get(job.id) is task:
                del self._lanes[job.id]

        task.add_done_callback(forget)

    async def _after_earlier_events(self, job_id: int) -> None:
        await _after(self._lanes.get(job_id))

    async def _final_event(self, job: JobRecord) -> JobEvent:
        if job.status is JobStatus.FAILED:
            return await self._event(job, EventKind.FAILED, Reply(self.failure_message(job)))
        return await self._event(job, EventKind.FINISHED, await self.result_reply(job))

    def failure_message(self, job: JobRecord) -> Message:
        stored = message_from_json(job.error) if job.error else Message(Key.FAILED_ERROR)
        return Message(stored.key, {"detail": "", "reference": "", **stored.args, "job": job.id})

    async def result_reply(self, job: JobRecord) -> Reply:
        """The grid (or single image) with its buttons and parameters."""
        images = tuple(Path(image.path) for image in job.images)
        parameters = _parameters_of(images[0]) if images else None
        if job.kind is JobKind.UPSCALE:
            first = job.images[0]
            size = {"job": job.id, "width": first.width, "height": first.height}
            if job.parent_id is None:  # an image from a chat message
                message = Message(Key.FINISHED_UPSCALE_IMAGE, size)
            else:
                message = Message(
                    Key.FINISHED_UPSCALE,
                    {**size, "parent": job.parent_id, "index": (job.image_index or 0) + 1},
                )
            # Zoom out and pan need the grid's request: an image from a chat has none.
            buttons: ButtonRows = upscale_buttons(job.id) if job.parent_id is not None else ()
        else:
            seconds = _seconds(job)
            seeds = _seeds_text(job)
            message = Message(
                Key.FINISHED, {**self._about(job), "seconds": seconds, "seeds": seeds}
            )
            buttons = grid_buttons(job.id, len(job.images))
        private = (await self.db.run(self.store.settings, job.user_id)).private
        grid = Path(job.grid_path) if job.grid_path else None
        flagged = await self._flagged(job)
        attachments = await self._shown_map(job)
        return Reply(
            message,
            images,
            grid,
            buttons,
            parameters,
            private,
            flagged=flagged,
            attachments=attachments,
        )

    async def _shown_map(self, job: JobRecord) -> tuple[Path, ...]:
        """The control map of a job run with --cn-show."""
        work = work_of(job)
        control = work.control if isinstance(work, GenerationRequest) else None
        if control is None or not control.show:
            return ()
        outputs, models = self.config.outputs_dir, self.config.models_dir
        path = await asyncio.to_thread(control_map_file, work, outputs, models)
        return (path,) if path is not None else ()

    async def _flags(self, jobs: Sequence[JobRecord]) -> dict[int, bool]:
        return {job.id: await self._flagged(job) for job in jobs}

    async def _flagged(self, job: JobRecord) -> bool:
        """The job's prompt has NSFW words; an upscale has its parent's prompt."""
        current: JobRecord | None = job
        while current is not None and current.kind is JobKind.UPSCALE:
            parent = current.parent_id
            current = await self.db.run(self.store.job, parent) if parent else None
        if current is None:
            return False
        return nsfw_word(getattr(work_of(current), "prompt", "") or "") is not None

    def _about(self, job: JobRecord) -> dict[str, str | int | Message]:
        """The job and what it is: its prompt, or which image of which job it varies."""
        prompt = prompt_preview(job)
        if job.parent_id is None or job.kind in (JobKind.IMAGINE, JobKind.UPSCALE):
            return {"job": job.id, "prompt": prompt}
        what = {"kind": Message(KIND_KEYS[job.kind]), "parent": job.parent_id, "prompt": prompt}
        if job.image_index is None:
            return {"job": job.id, "prompt": Message(Key.ABOUT_CHILD, what)}
        about = Message(Key.ABOUT_IMAGE_CHILD, {**what, "index": job.image_index + 1})
        return {"job": job.id, "prompt": about}

    async def _event(
        self, job: JobRecord, kind: EventKind, reply: Reply, **fields: Any
    ) -> JobEvent:
        owner = await self.owner(job.user_id)
        return JobEvent(
            kind=kind,
            job_id=job.id,
            user_id=job.user_id,
            origin=Origin(job.origin_platform, job.origin_chat, job.origin_message),
            locale=normalise_locale(owner.locale),
            reply=reply,
            owner=_user_ref(owner),
            status_message=self._status_messages.get(job.id, job.status_message),
            **fields,
        )


# What a chat user is told when a job's images could not be saved; the log has the path.
_OUTPUTS_REASONS = {DISK_FULL: Key.FAILED_DISK_FULL, NOT_WRITABLE: Key.FAILED_NOT_WRITABLE}


def _lora_names(batch: Sequence[QueuedJob]) -> tuple[str, ...]:
    """The LoRAs a batch needs (its jobs share one set): a remote worker holding them is
    preferred."""
    return batch[0].lora_names


def jobs_by_id(store: Store, job_ids: Iterable[int]) -> list[JobRecord]:
    """The jobs that still exist, in the order asked (one call on the store's threads)."""
    return [job for job in (store.job(job_id) for job_id in job_ids) if job is not None]


def users_by_id(store: Store, user_ids: Collection[int]) -> list[UserRecord]:
    """The users that still exist (one call on the store's threads)."""
    return [user for user in (store.user_by_id(user_id) for user_id in user_ids) if user]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # none on this thread (one of the store's)
        return None


def _remove_saved(saved: SavedImages) -> None:
    """The files of a result that was dropped: nothing names them."""
    for path in [*(Path(record.path) for record in saved.records), saved.grid]:
        if path is not None:
            path.unlink(missing_ok=True)


def _failed_outcome(job: JobRecord, error: BaseException) -> TaskOutcome:
    failure = Failure(FailureKind.ERROR, first_line(error), trace_of(error))
    return TaskOutcome(job.id, OutcomeStatus.FAILED, failure=failure)


def _seeds_text(job: JobRecord) -> str | Message:
    """The seeds that tell the images apart: a subtle variation's are its variation seeds."""
    seeds = ", ".join(str(image.seed) for image in job.images)
    if job.kind is not JobKind.VARY_SUBTLE:
        return seeds
    work = work_of(job)
    variations = getattr(work, "variation_seeds", ())
    if not variations or not job.images:
        return seeds
    shown = ", ".join(str(seed) for seed in variations)
    return Message(Key.SEEDS_WITH_VARIATIONS, {"seed": job.images[0].seed, "seeds": shown})


def _user_ref(user: UserRecord) -> UserRef:
    return UserRef(user.platform, user.platform_user_id, user.display_name, user.locale)


async def _after(earlier: asyncio.Future[Any] | None) -> None:
    """Wait for an earlier event's handlers; their failure is theirs, not ours."""
    if earlier is None or earlier.done():
        return
    with contextlib.suppress(Exception, TimeoutError):
        await asyncio.wait_for(asyncio.shield(earlier), LANE_TIMEOUT)


def _parameters_of(path: Path) -> str | None:
    info = read_infotext(path) if path.is_file() else None
    return format_infotext(info) if info is not None else None


def _seconds(job: JobRecord) -> str:
    if job.started_at is None or job.finished_at is None:
        return "?"
    return f"{(job.finished_at - job.started_at).total_seconds():.1f}"


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None
