"""The bot's side of remote runs: `RemoteExecutor`, the executor seam over Celery and Redis.

The bot keeps the fair scheduler; this executor only says which batches could start now (a
live worker with a free engine holds the batch's checkpoint), picks the worker (the one that
already holds the batch's LoRAs, then its checkpoint loaded, then the least busy), sends the
batch to that worker's queue, relays its progress, and waits for its report. A run whose worker
stops announcing itself, or that the bot gives up because its lease ran out (`abandon`), ends
LOST (it had started: an attempt spent) or NOT_TAKEN (it had not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.errors import InvalidRequestError, first_line
from pipeline.executors.remote.app import RUN_TASK, celery_app, worker_queue
from pipeline.executors.remote.channels import (
    CANCEL_CHANNEL,
    CANCEL_KEEP_SECONDS,
    WORKERS_SET,
    RunEvent,
    RunEventKind,
    WorkerInfo,
    cancel_key,
    worker_key,
)
from pipeline.executors.remote.wire import DEFAULT_MAX_BYTES, RunOrder, RunReport, inline_images
from pipeline.executors.work import (
    Failure,
    FailureKind,
    OutcomeStatus,
    PreparedWork,
    ProgressSink,
    Task,
    TaskOutcome,
    Work,
)
from pipeline.request import ProgressEvent

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)
REFRESH_SECONDS = 0.5  # how often the workers' announcements are read
RESULT_POLL_SECONDS = 1.0  # a report is looked for this often without a DONE event
DONE_WAIT_SECONDS = 60.0  # after DONE, the report must be stored within this
UNLISTED_GRACE_SECONDS = 30.0
CLOSE_SECONDS = 5.0  # a live worker that no longer lists a run without a report


class Preparer(Protocol):
    async def prepare(self, work: Work) -> PreparedWork: ...

    def warm_up(self) -> None:
        """Import what the first check needs (blocking: seconds), ahead of the first job."""
        ...


@dataclass
class _Run:
    run_id: str
    worker: str
    sink: ProgressSink
    claimed: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False
    unlisted_since: float | None = None


class RemoteExecutor:
    remote = True

    def __init__(
        self,
        broker_url: str,
        preparer: Preparer,
        lease_seconds: float = 30.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        result_url: str | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.preparer = preparer
        self.lease_seconds = lease_seconds
        self.max_bytes = max_bytes
        self.app = celery_app(broker_url, result_url)
        self.workers: dict[str, WorkerInfo] = {}  # live ones, as last announced
        self._redis: Redis | None = None
        self._inflight: Counter[str] = Counter()  # this bot's runs per worker
        self._runs: dict[str, _Run] = {}
        self._abandoned: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to Redis, read the workers once, and keep following them and the runs."""
        from redis.asyncio import Redis

        self._redis = Redis.from_url(self.broker_url)
        self._spawn(asyncio.to_thread(self.preparer.warm_up), "easel-warm-up")
        await self._refresh()
        self._spawn(self._follow_workers(), "easel-workers")
        self._spawn(self._follow_runs(), "easel-runs")

    async def close(self) -> None:
        """Stop following workers and runs; a Redis that does not answer holds this up for
        at most CLOSE_SECONDS."""
        self._closing = True
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(set(self._background), timeout=CLOSE_SECONDS)
        if self._redis is not None:
            try:
                await asyncio.wait_for(self._redis.aclose(), CLOSE_SECONDS)
            except TimeoutError:
                log.warning("Closing the connection to Redis timed out")
        self.app.close()

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ workers

    async def _follow_workers(self) -> None:
        while not self._closing:
            await asyncio.sleep(REFRESH_SECONDS)
            await self._refresh()

    async def _refresh(self) -> None:
        assert self._redis is not None
        try:
            names = sorted(name.decode() for name in await self._redis.smembers(WORKERS_SET))
            values = await self._redis.mget([worker_key(name) for name in names]) if names else []
        except Exception as error:  # Redis is away: no worker can be reached either
            if self.workers:
                log.warning("Cannot read the workers' announcements: %s", error)
            self.workers = {}
            return
        live = {}
        for name, value in zip(names, values, strict=True):
            if value is not None:
                live[name] = WorkerInfo.from_json(value)
        for name in set(live) - set(self.workers):
            log.info("GPU worker %s is up (%s)", name, live[name].device)
        for name in set(self.workers) - set(live):
            log.warning("GPU worker %s stopped announcing itself", name)
        self.workers = live

    def lora_names(self) -> set[str]:
        """The LoRAs any live worker has a file for."""
        return {name for info in self.workers.values() for name in info.lora_files}

    def _free(self, info: WorkerInfo) -> int:
        return info.slots - self._inflight[info.name]

    def can_start(self, model: str | None = None) -> bool:
        return any(
            self._free(info) > 0 and info.has_model(model or "") for info in self.workers.values()
        )

    def reserve(self, model: str | None = None, loras: Collection[str] = ()) -> str | None:
        """The worker for a batch: free, holding its checkpoint; then the most of its LoRAs
        resident, its checkpoint loaded, the most free engines, the name."""
        wanted = set(loras)
        candidates = [
            info
            for info in self.workers.values()
            if self._free(info) > 0 and info.has_model(model or "")
        ]
        if not candidates:
            return None
        best = min(
            candidates,
            key=lambda info: (
                -len(wanted & set(info.loras)),
                bool(model) and model not in info.loaded,
                -self._free(info),
                info.name,
            ),
        )
        self._inflight[best.name] += 1
        return best.name

    def release(self, slot: str) -> None:
        if self._inflight[slot] > 0:
            self._inflight[slot] -= 1

    # ------------------------------------------------------------------ runs

    async def prepare(self, work: Work) -> PreparedWork:
        return await self.preparer.prepare(work)

    async def run(
        self,
        tasks: Sequence[Task],
        on_progress: ProgressSink,
        preview_every: float | None = None,
        run_id: str | None = None,
        slot: str | None = None,
    ) -> list[TaskOutcome]:
        if slot is None or run_id is None:
            raise ValueError("a remote run needs its run id and a reserved worker")
        try:
            outcomes: dict[int, TaskOutcome] = {}
            sent: list[Task] = []
            for task in tasks:
                try:
                    sent.append(Task(task.task_id, inline_images(task.work, self.max_bytes)))
                except InvalidRequestError as error:
                    failure = Failure(FailureKind.INVALID, first_line(error), None, error.ko)
                    outcomes[task.task_id] = TaskOutcome(
                        task.task_id, OutcomeStatus.FAILED, failure=failure
                    )
            if sent:
                order = RunOrder(run_id, tuple(sent), preview_every, self.lease_seconds)
                state = _Run(run_id, slot, on_progress)
                self._runs[run_id] = state
                try:
                    await asyncio.to_thread(
                        self.app.send_task,
                        RUN_TASK,
                        args=[order.to_json()],
                        task_id=run_id,
                        queue=worker_queue(slot),
                    )
                except Exception as error:  # the broker is away: nothing was sent
                    log.warning("Sending run %s to %s failed: %s", run_id, slot, error)
                    return [_outcome(task, OutcomeStatus.NOT_TAKEN) for task in tasks]
                log.info("Run %s sent to worker %s", run_id, slot)
                outcomes |= await self._wait(state, sent)
                # The worker announced what it holds now (its LoRAs, its checkpoint) before
                # saying DONE: read it before the next batch picks a worker.
                await self._refresh()
            return [outcomes[task.task_id] for task in tasks]
        finally:
            self._runs.pop(run_id, None)
            self._abandoned.discard(run_id)
            self.release(slot)

    async def adopt(
        self,
        tasks: Sequence[Task],
        on_progress: ProgressSink,
        preview_every: float | None,
        run_id: str,
        worker: str,
    ) -> list[TaskOutcome]:
        """Follow a run sent before this bot (re)started, to its report."""
        self._inflight[worker] += 1
        state = _Run(run_id, worker, on_progress, claimed=True)
        self._runs[run_id] = state
        try:
            outcomes = await self._wait(state, tasks)
            return [outcomes[task.task_id] for task in tasks]
        finally:
            self._runs.pop(run_id, None)
            self._abandoned.discard(run_id)
            self.release(worker)

    def abandon(self, run_id: str) -> None:
        """Give a run up as lost (its lease ran out): its `run` ends LOST at once."""
        self._abandoned.add(run_id)
        state = self._runs.get(run_id)
        if state is not None:
            state.done.set()

    def cancel(self, task_id: int) -> None:
        self._spawn(self._send_cancel(task_id), f"easel-cancel-{task_id}")

    async def _send_cancel(self, job_id: int) -> None:
        assert self._redis is not None
        try:
            await self._redis.set(cancel_key(job_id), "1", ex=CANCEL_KEEP_SECONDS)
            await self._redis.publish(CANCEL_CHANNEL, str(job_id))
        except Exception as error:
            log.error("Cancelling job %s on its worker failed: %s", job_id, error)

    async def _wait(self, state: _Run, tasks: Sequence[Task]) -> dict[int, TaskOutcome]:
        """The run's outcomes: its report, or LOST / NOT_TAKEN when its worker is gone."""
        last_poll = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.done.wait(), RESULT_POLL_SECONDS)
            if state.run_id in self._abandoned:
                return self._lost(state, tasks, "its lease ran out")
            if state.dropped:
                return {task.task_id: _outcome(task, OutcomeStatus.NOT_TAKEN) for task in tasks}
            now = time.monotonic()
            if state.done.is_set() or now - last_poll >= RESULT_POLL_SECONDS:
                last_poll = now
                report = await self._report(state.run_id, wait=state.done.is_set())
                if report is not None:
                    return _by_task(report, tasks)
            gone = self._gone(state, now)
            if gone is not None:
                return self._lost(state, tasks, gone)

    def _gone(self, state: _Run, now: float) -> str | None:
        """Why the run's worker is lost, or None while it may still report."""
        info = self.workers.get(state.worker)
        if info is None:
            return f"worker {state.worker} stopped announcing itself"
        if not state.claimed or state.run_id in info.runs:
            state.unlisted_since = None
            return None
        state.unlisted_since = state.unlisted_since or now
        if now - state.unlisted_since > UNLISTED_GRACE_SECONDS:
            return f"worker {state.worker} no longer runs it and sent no report"
        return None

    def _lost(self, state: _Run, tasks: Sequence[Task], why: str) -> dict[int, TaskOutcome]:
        status = OutcomeStatus.LOST if state.claimed else OutcomeStatus.NOT_TAKEN
        log.warning("Run %s is lost: %s", state.run_id, why)
        return {task.task_id: _outcome(task, status) for task in tasks}

    async def _report(self, run_id: str, wait: bool) -> RunReport | TaskFailureReport | None:
        """The run's report from the result backend (None: not there yet). `wait`: the worker
        said DONE, so it is stored within moments."""
        result = self.app.AsyncResult(run_id)
        deadline = time.monotonic() + (DONE_WAIT_SECONDS if wait else 0)
        while True:
            ready = await asyncio.to_thread(result.ready)
            if ready:
                break
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)
        if not await asyncio.to_thread(result.successful):
            trace = result.traceback or repr(result.result)
            return TaskFailureReport(first_line(result.result), trace)
        text = await asyncio.to_thread(result.get, timeout=DONE_WAIT_SECONDS)
        return RunReport.from_json(text)

    def recorded(self, run_id: str) -> None:
        """The bot has recorded the run's outcomes: its report can go (kept until then, so
        that a bot that stops while recording finds it again at the next start)."""
        self._spawn(self._forget(run_id), f"easel-forget-{run_id}")

    async def _forget(self, run_id: str) -> None:
        try:
            await asyncio.to_thread(self.app.AsyncResult(run_id).forget)
        except Exception as error:  # it expires on its own
            log.warning("Removing the report of run %s failed: %s", run_id, error)

    async def _follow_runs(self) -> None:
        """Every run's events, relayed to the run waiting for them."""
        assert self._redis is not None
        while not self._closing:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.psubscribe("easel:run:*")
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    run_id = message["channel"].decode().rsplit(":", 1)[-1]
                    self._relay(run_id, RunEvent.from_json(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self._closing:
                    return
                log.warning("Following the runs' events failed: %s; again in 1 s", error)
                await asyncio.sleep(1.0)

    def _relay(self, run_id: str, event: RunEvent) -> None:
        state = self._runs.get(run_id)
        if state is None:
            return
        if event.kind is RunEventKind.CLAIMED:
            state.claimed = True
        elif event.kind is RunEventKind.PROGRESS:
            state.claimed = True
            state.sink(ProgressEvent(event.step, event.total, event.previews))
        elif event.kind is RunEventKind.DONE:
            state.done.set()
        elif event.kind is RunEventKind.DROPPED:
            state.dropped = True
            state.done.set()


@dataclass(frozen=True)
class TaskFailureReport:
    """The worker's task raised instead of reporting (a bug, or the database away there)."""

    detail: str
    trace: str


def _by_task(
    report: RunReport | TaskFailureReport, tasks: Sequence[Task]
) -> dict[int, TaskOutcome]:
    if isinstance(report, TaskFailureReport):
        failure = Failure(FailureKind.ERROR, report.detail, report.trace)
        return {
            task.task_id: TaskOutcome(task.task_id, OutcomeStatus.FAILED, failure=failure)
            for task in tasks
        }
    got = {outcome.task_id: outcome for outcome in report.outcomes}
    # A task the worker could not claim had moved on (cancelled, finished elsewhere).
    return {
        task.task_id: got.get(task.task_id) or _outcome(task, OutcomeStatus.NOT_TAKEN)
        for task in tasks
    }


def _outcome(task: Task, status: OutcomeStatus) -> TaskOutcome:
    return TaskOutcome(task.task_id, status)
