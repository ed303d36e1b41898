"""A worker's side of a remote run: claim it, keep its lease, run it, report.

Why a batch never runs twice, whatever the broker does (a task given again after its worker
died, a stale task from before a restart): the bot writes a fresh run id into the rows of the
jobs it sends, and a worker runs a job only after claiming it, in one conditional write, while
the row is running under that run id and no live lease holds it (`LeaseKeeper.claim`). The
lease is renewed while the batch runs; a job whose renewal fails (the bot gave the run up as
lost and queued the job again) is stopped at once. A task nobody can claim is dropped and
logged, and stores no result.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from pipeline.executors.remote.app import RESULT_SECONDS, worker_queue
from pipeline.executors.remote.channels import (
    CANCEL_CHANNEL,
    WORKERS_SET,
    RunEvent,
    RunEventKind,
    WorkerInfo,
    cancel_key,
    run_channel,
    worker_key,
)
from pipeline.executors.remote.wire import DEFAULT_MAX_BYTES, RunOrder, RunReport, too_large
from pipeline.executors.work import OutcomeStatus, TaskOutcome
from pipeline.request import ProgressEvent

if TYPE_CHECKING:
    import redis

    from pipeline.executors.local import LocalExecutor

log = logging.getLogger(__name__)
ANNOUNCE_SECONDS = 1.0  # how often a worker says what it holds (one small SET)
ANNOUNCE_TTL = 3 * ANNOUNCE_SECONDS  # after this without a word, a worker is gone
CANCEL_POLL_SECONDS = 0.5  # cancels are published at once; the keys catch a missed message


class LeaseKeeper(Protocol):
    """The job rows' side of a run (the database both machines share)."""

    def claim(
        self, run_id: str, job_ids: Sequence[int], worker: str, lease_seconds: float
    ) -> set[int]: ...

    def renew(
        self, run_id: str, job_ids: Sequence[int], worker: str, lease_seconds: float
    ) -> set[int]: ...


class RunDropped(Exception):
    """No job of the run can be claimed: finished, queued again or held by another worker."""


class WorkerNode:
    """One `easel worker` process: its engines (one per slot, each running one batch at a
    time), its announcement, and the runs Celery hands it."""

    def __init__(
        self,
        name: str,
        client: redis.Redis,
        leases: LeaseKeeper,
        executors: Sequence[LocalExecutor],
        device: str,
        models: Callable[[], Collection[str]],
        lora_files: Callable[[], Collection[str]] = tuple,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.name = name
        self.client = client
        self.leases = leases
        self.executors = tuple(executors)
        self.device = device
        self.models = models
        self.lora_files = lora_files
        self.max_bytes = max_bytes
        self._runs: set[str] = set()
        self._free: queue.Queue[LocalExecutor] = queue.Queue()
        for executor in self.executors:
            self._free.put(executor)
        self._running: dict[int, LocalExecutor] = {}  # job id -> the engine running it
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.announce()
        for target, label in ((self._announce_loop, "announce"), (self._cancel_loop, "cancel")):
            thread = threading.Thread(target=target, name=f"easel-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        try:
            self.client.delete(worker_key(self.name))
            self.client.srem(WORKERS_SET, self.name)
        except Exception as error:  # the broker may be what stopped us
            log.warning("Could not withdraw this worker's announcement: %s", error)

    def info(self) -> WorkerInfo:
        loaded = tuple(executor.engine.model_name for executor in self.executors)
        loras = sorted(
            {name for executor in self.executors for name in executor.engine.loras.resident()}
        )
        return WorkerInfo(
            name=self.name,
            queue=worker_queue(self.name),
            device=self.device,
            slots=len(self.executors),
            busy=len(self.executors) - self._free.qsize(),
            loaded=loaded,
            models=tuple(sorted(set(self.models()) | set(loaded))),
            loras=tuple(loras),
            lora_files=tuple(sorted(self.lora_files())),
            runs=tuple(sorted(self._runs)),
            free_memory=_free_memory(self.device),
        )

    def announce(self) -> None:
        pipe = self.client.pipeline()
        pipe.set(worker_key(self.name), self.info().to_json(), px=int(ANNOUNCE_TTL * 1000))
        pipe.sadd(WORKERS_SET, self.name)
        pipe.execute()

    def _announce_loop(self) -> None:
        while not self._stop.wait(ANNOUNCE_SECONDS):
            try:
                self.announce()
            except Exception as error:  # the broker is away: say so, try again
                log.warning("Announcing this worker failed: %s", error)

    def _cancel_loop(self) -> None:
        """Cancels published by the bot reach the engine running the job within a step."""
        while not self._stop.is_set():
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CANCEL_CHANNEL)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=CANCEL_POLL_SECONDS)
                    if message is not None:
                        self._cancel(int(message["data"]))
                    self._poll_cancel_keys()
                pubsub.close()
            except Exception as error:
                log.warning("Listening for cancels failed: %s", error)
                self._stop.wait(CANCEL_POLL_SECONDS)

    def _poll_cancel_keys(self) -> None:
        with self._lock:
            running = list(self._running)
        if not running:
            return
        flags = self.client.mget([cancel_key(job_id) for job_id in running])
        for job_id, flag in zip(running, flags, strict=True):
            if flag is not None:
                self._cancel(job_id)

    def _cancel(self, job_id: int) -> None:
        with self._lock:
            executor = self._running.get(job_id)
        if executor is not None:
            executor.cancel(job_id)

    # ------------------------------------------------------------------ a run

    def execute(self, order_text: str) -> str:
        """Run one batch (a Celery task's body); the report as JSON. RunDropped when there
        is nothing of it to run here."""
        order = RunOrder.from_json(order_text)
        ids = [task.task_id for task in order.tasks]
        claimed = self.leases.claim(order.run_id, ids, self.name, order.lease_seconds)
        if not claimed:
            log.warning(
                "Run %s (jobs %s) dropped: its jobs were finished, queued again or taken by "
                "another worker",
                order.run_id,
                ", ".join(map(str, ids)),
            )
            self._publish(order.run_id, RunEvent(RunEventKind.DROPPED, self.name))
            raise RunDropped(order.run_id)
        tasks = [task for task in order.tasks if task.task_id in claimed]
        log.info("Run %s: jobs %s", order.run_id, ", ".join(str(task.task_id) for task in tasks))
        self._publish(order.run_id, RunEvent(RunEventKind.CLAIMED, self.name))
        executor = self._free.get()
        finished = threading.Event()
        renewal = threading.Thread(
            target=self._keep_lease,
            args=(order, sorted(claimed), executor, finished),
            name="easel-lease",
            daemon=True,
        )
        with self._lock:
            self._runs.add(order.run_id)
            for task in tasks:
                self._running[task.task_id] = executor
        try:
            renewal.start()
            cancelled = self._cancels_already(claimed)

            def progress(event: ProgressEvent) -> None:
                step = RunEvent(
                    RunEventKind.PROGRESS, self.name, event.step, event.total, event.previews
                )
                self._publish(order.run_id, step)

            outcomes = executor.run_blocking(tasks, progress, order.preview_every, cancelled)
            self._hold_for_report(order, sorted(claimed))
        finally:
            finished.set()
            with self._lock:
                self._runs.discard(order.run_id)
                for task in tasks:
                    self._running.pop(task.task_id, None)
            self._free.put(executor)
        report = fit_report(RunReport(order.run_id, self.name, tuple(outcomes)), self.max_bytes)
        try:  # what it holds now, before the bot hears DONE and picks a worker for the next
            self.announce()
        except Exception as error:
            log.warning("Announcing this worker failed: %s", error)
        self._publish(order.run_id, RunEvent(RunEventKind.DONE, self.name))
        return report

    def _keep_lease(
        self,
        order: RunOrder,
        job_ids: list[int],
        executor: LocalExecutor,
        finished: threading.Event,
    ) -> None:
        """Renew the run's lease at a third of its length until the batch ends; a job that is
        no longer this worker's stops."""
        every = max(0.2, order.lease_seconds / 3)
        held = set(job_ids)
        while held and not self._stop.is_set():
            if finished.wait(every):
                return
            with self._lock:
                running = [job_id for job_id in held if job_id in self._running]
            if not running:
                return
            try:
                renewed = self.leases.renew(order.run_id, running, self.name, order.lease_seconds)
            except Exception as error:  # the database is away: the lease may still hold
                log.warning("Renewing the lease of run %s failed: %s", order.run_id, error)
                continue
            for job_id in set(running) - renewed:
                log.warning("Job %s is no longer this worker's: stopping it", job_id)
                executor.cancel(job_id)
                held.discard(job_id)

    def _hold_for_report(self, order: RunOrder, job_ids: list[int]) -> None:
        """The batch is over; its report waits in the result backend for the bot, which may be
        restarting: the lease now lasts as long as the report is kept, so that no restart
        takes the run for lost and runs it again."""
        try:
            self.leases.renew(order.run_id, job_ids, self.name, RESULT_SECONDS)
        except Exception as error:
            log.warning("Holding run %s for its report failed: %s", order.run_id, error)

    def _cancels_already(self, job_ids: Collection[int]) -> set[int]:
        ordered = sorted(job_ids)
        flags = self.client.mget([cancel_key(job_id) for job_id in ordered])
        return {job_id for job_id, flag in zip(ordered, flags, strict=True) if flag is not None}

    def _publish(self, run_id: str, event: RunEvent) -> None:
        try:
            self.client.publish(run_channel(run_id), event.to_json())
        except Exception as error:  # progress is best effort; the report is what counts
            log.warning("Publishing an event of run %s failed: %s", run_id, error)


def fit_report(report: RunReport, max_bytes: int) -> str:
    """The report as JSON, within `max_bytes`: the outcomes that do not fit (the largest
    first) fail with a clear message instead of their images."""
    outcomes = list(report.outcomes)
    text = report.to_json()
    while len(text) > max_bytes:
        sizes = [
            (len(RunReport(report.run_id, report.worker, (outcome,)).to_json()), index)
            for index, outcome in enumerate(outcomes)
            if outcome.images
        ]
        if not sizes:
            break
        size, index = max(sizes)
        failure = too_large(size, max_bytes)
        outcomes[index] = TaskOutcome(
            outcomes[index].task_id, OutcomeStatus.FAILED, failure=failure
        )
        text = RunReport(report.run_id, report.worker, tuple(outcomes)).to_json()
    return text


def _free_memory(device: str) -> int | None:
    """Free bytes on the device (the GPU's own memory), or the machine's for the CPU."""
    try:
        if device.startswith("cuda"):
            import torch

            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, RuntimeError):
        return None
