"""Where a batch of jobs runs: the local GPU thread here, remote workers in the scale-out setup."""

from pipeline.executors.work import (
    Executor,
    Failure,
    FailureKind,
    OutcomeStatus,
    PreparedWork,
    Task,
    TaskOutcome,
    Work,
)

__all__ = [
    "Executor",
    "Failure",
    "FailureKind",
    "OutcomeStatus",
    "PreparedWork",
    "Task",
    "TaskOutcome",
    "Work",
]
