"""What an executor is given (tasks) and what it gives back (outcomes), for any executor.

A task's id is opaque here: the bot uses its job ids, the pipeline only hands them back.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from pipeline.request import GeneratedImage, GenerationRequest, ProgressEvent, UpscaleRequest

Work = GenerationRequest | UpscaleRequest
ProgressSink = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class Task:
    task_id: int
    work: Work


@dataclass(frozen=True)
class PreparedWork:
    """Work checked before it is queued, with its size and seeds fixed, so that a restart
    runs exactly what was promised; tasks with equal `batch_key` may share one pipeline call
    (None: always alone). `cost` is the UNet rows per step relative to one plain image
    (images x (AND parts + negative) x 75-token chunks / 2; see PreparedJob.cost), 1.0 per
    image for an upscale."""

    work: Work
    batch_key: str | None
    notes: tuple[str, ...] = ()
    cost: float = 1.0


class FailureKind(StrEnum):
    OUT_OF_MEMORY = "out_of_memory"
    INVALID = "invalid"  # the request cannot run here (an unknown LoRA, a missing image)
    ERROR = "error"  # anything else; the detail is the first line of the error


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    detail: str
    trace: str | None = None  # ERROR: the traceback, for the operator's log and the job row
    detail_ko: str | None = None  # INVALID: the detail in Korean, where the error carries it


class OutcomeStatus(StrEnum):
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A remote run whose worker was lost: LOST after the worker took it (an attempt spent),
    # NOT_TAKEN before (none spent). The bot queues the job again, or fails it when it is out
    # of attempts.
    LOST = "lost"
    NOT_TAKEN = "not_taken"


@dataclass(frozen=True)
class TaskOutcome:
    task_id: int
    status: OutcomeStatus
    images: tuple[GeneratedImage, ...] = ()
    failure: Failure | None = None
    seconds: float = 0.0


class Executor(Protocol):
    async def prepare(self, work: Work) -> PreparedWork:
        """Check work without running it; raises InvalidRequestError with a clear message."""
        ...

    async def run(
        self,
        tasks: Sequence[Task],
        on_progress: ProgressSink,
        preview_every: float | None = None,
        run_id: str | None = None,
        slot: str | None = None,
    ) -> list[TaskOutcome]:
        """Run tasks that share a batch key as one batch; one outcome per task, in order.
        Never raises for a task's own failure. `preview_every` (seconds; None: never): progress
        events carry a JPEG preview per task, keyed by task id, about that often. `run_id`:
        the id the job rows carry for this run (a remote worker claims the jobs by it).
        `slot`: what `reserve` gave for this batch; the run frees it when it ends."""
        ...

    # Whether runs happen on other machines, under leases in the job rows (a restarted bot
    # leaves leased jobs running and waits for their results).
    remote: bool

    def can_start(self, model: str | None = None) -> bool:
        """Whether a batch for this checkpoint could start now (a free slot that has it)."""
        ...

    def reserve(self, model: str | None = None, loras: Collection[str] = ()) -> str | None:
        """Hold a free slot for a batch on this checkpoint (the best one for these LoRAs)
        until the run given it ends, or `release`; None when none is free. Synchronous, so
        that the next `can_start` already counts it."""
        ...

    def release(self, slot: str) -> None:
        """Free a reserved slot whose batch never ran."""
        ...

    def cancel(self, task_id: int) -> None:
        """Ask a running task to stop; it ends CANCELLED within about one step."""
        ...

    async def close(self) -> None: ...
