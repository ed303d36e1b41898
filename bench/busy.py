"""What the front-end benchmarks share: a bot kept busy (one job held running, many queued
behind it) and latency figures as nearest-rank percentiles."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging as transformers_logging

from bench.common import quiet_diffusers
from bot.core.events import Origin, UserRef
from bot.runtime import Bot
from pipeline.engine import Engine
from pipeline.executors import Task, TaskOutcome
from pipeline.executors.local import LocalExecutor
from pipeline.executors.work import ProgressSink

BENCH_PLATFORM = "bench"  # the busy jobs' platform: no front end posts their messages
START_WAIT_S = 30.0


class HeldExecutor(LocalExecutor):
    """The local executor, whose batches wait while it is held: a held batch is running as far
    as the dispatcher knows (marked running in the store, STARTED sent), and runs on release."""

    def __init__(self, engine: Engine, models_dir: Path) -> None:
        super().__init__(engine, models_dir)
        self._open = asyncio.Event()
        self._open.set()

    def hold(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def run(
        self,
        tasks: Sequence[Task],
        on_progress: ProgressSink,
        preview_every: float | None = None,
        run_id: str | None = None,
        slot: str | None = None,
    ) -> list[TaskOutcome]:
        await self._open.wait()
        return await super().run(tasks, on_progress, preview_every, run_id, slot)


async def keep_one_running(bot: Bot, executor: HeldExecutor) -> None:
    """A job that stays running (its batch waits on the executor) until the bench ends."""
    executor.hold()
    user = UserRef(BENCH_PLATFORM, "runner", "Runner")
    origin = Origin(BENCH_PLATFORM, "bench-chat")
    options = await bot.service.options(user, "a long job --steps 2", origin)
    await bot.service.imagine(user, options, origin)
    deadline = time.monotonic() + START_WAIT_S
    while not bot.service.dispatcher.running_jobs():
        if time.monotonic() > deadline:
            raise RuntimeError("the held job did not start")
        await asyncio.sleep(0.01)


async def queue_jobs(bot: Bot, count: int) -> None:
    """`count` jobs queued behind the running one, each from its own user."""
    origin = Origin(BENCH_PLATFORM, "bench-chat")
    for index in range(count):
        user = UserRef(BENCH_PLATFORM, f"queued-{index}", f"Queued {index}")
        options = await bot.service.options(user, f"a queued job {index} --steps 2", origin)
        await bot.service.imagine(user, options, origin)


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    index = max(0, min(len(sorted_values) - 1, math.ceil(share * len(sorted_values)) - 1))
    return sorted_values[index]


LATENCY_HEADER = ("count", "p50 ms", "p90 ms", "p99 ms", "max ms")


def latency_header(title: str) -> str:
    first, *rest = LATENCY_HEADER
    return f"{title:24} {first:>6} " + " ".join(f"{h:>8}" for h in rest)


def latency_line(label: str, seconds: Sequence[float]) -> str:
    values = sorted(1000 * s for s in seconds)
    if not values:
        return f"{label:24} {0:>6}"
    figures = [percentile(values, share) for share in (0.5, 0.9, 0.99)] + [values[-1]]
    return f"{label:24} {len(values):>6} " + " ".join(f"{f:>8.1f}" for f in figures)


def cpu_line(cpu_s: float, count: int, unit: str, fake: str) -> str:
    """The CPU time per item and the machine's load: on a machine busy with other work the
    bot gets less than its share of a core, and the figures measure the neighbours."""
    per_item = 1000 * cpu_s / max(1, count)
    return (
        f"CPU time: {per_item:.1f} ms per {unit} (the bot and the {fake} together); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )


def run_quietly(
    bench: Callable[[argparse.Namespace, Path], Coroutine[Any, Any, None]],
    args: argparse.Namespace,
) -> None:
    """Run a front-end bench in a scratch folder, without the model libraries' chatter."""
    quiet_diffusers()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(bench(args, Path(scratch)))
