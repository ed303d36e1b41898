"""Queue benchmark: what the bot's job path costs around the engine, and what batching buys.

Random-weight models only (nothing is downloaded; see `tests.tiny_models`). Prints three
figures; asserts nothing.

(a) End-to-end overhead. One job through the whole bot - `JobService.options` and `imagine`,
    the store row, the dispatcher's queue, the local executor's GPU thread, the PNGs saved, the
    image rows written and the finished event handed to a subscribed front end - against a bare
    `Engine.generate` of the very request the job stored (same resolved seed and size). The
    `mid` model (SD 1.5's block layout at half width), 20 steps, 1 image; 512x512 on a GPU,
    256x256 on the CPU. Mean seconds of each over `--repeats` runs after a warm-up, run in
    turn. Target: overhead under 3%.
(b) Throughput. 8 users each queue 4 one-image jobs (same settings, their own prompts and
    seeds) before the dispatcher starts; the wall time from the start until all 32 are
    finished, in three set-ups side by side: one job at a time (`max_batch_images` 1, UNet
    calls of 2 rows: one image and its negative, nothing padded), fixed-size batches (the
    default: `max_batch_images` 4 on the CPU, 8 on a GPU, calls of `--rows` rows) and whole
    batches (the same batches, each step's rows in one call). Then the identity check: each
    job's saved image against the same request run alone on an engine of the same set-up.
    `--model tiny` at 64x64 by default; `--model mid --tiny-size 512` on a GPU. Target: fixed
    batches give at least 2x the images per second of one job at a time, every image identical.
(c) Store and scheduler latency, no model. A SQLite file database (WAL) in a temporary folder,
    1,000 users and 10,000 queued jobs of mixed sizes and image counts. Enqueue is what
    `JobService` does per job once it is admitted: `Store.add_job`, then `Dispatcher.enqueue`
    (user lookup, scheduler add, queue position). Dequeue is what the dispatcher loop does per
    batch before the executor: `FairScheduler.next_batch`, then `Store.mark_running`. p50, p99
    and max in milliseconds over every operation. Target: p99 under 5 ms.

    python -m bench.queue                          # all three, CPU-friendly defaults
    python -m bench.queue --part a --device cuda --repeats 10
    python -m bench.queue --part c --jobs 10000 --users 1000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from bench.common import load_shape, synchronize
from bot.core.bus import EventBus
from bot.core.config import DEFAULT_BATCH_IMAGES, CoreConfig
from bot.core.dispatcher import Dispatcher
from bot.core.events import EventKind, JobEvent, Origin, UserRef
from bot.core.work import work_of
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from bot.store import JobKind, JobStatus, NewJob, Store
from bot.store.records import JobRecord
from pipeline.batching import DEFAULT_ROWS, BatchMode, BatchShape
from pipeline.device import DeviceChoice, choose_device
from pipeline.engine import Engine
from pipeline.executors import PreparedWork, Task, TaskOutcome, Work
from pipeline.loading import LoadedModel
from pipeline.request import GenerationRequest

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"  # the presets a real bot reads
PLATFORM = "bench"
WARM_UP_STEPS = 2
PROMPT = "a castle on a hill, watercolor"
PROMPTS = (
    "a castle on a hill, watercolor",
    "a lighthouse in a storm, oil painting",
    "a red fox in the snow, photo",
    "a city street at night, neon",
    "a bowl of ramen, studio lighting",
    "a sailing ship at dawn, pixel art",
    "an old library with tall shelves",
    "a mountain lake in autumn, pastel",
)


# --------------------------------------------------------------------------- shared


def bot_settings(
    folder: Path, max_batch_images: int | None, shape: BatchShape | None = None
) -> Settings:
    shape = shape or BatchShape()
    return Settings(
        _env_file=None,
        DATABASE_URL=f"sqlite:///{folder / 'easel.db'}",
        outputs_dir=folder / "outputs",
        models_dir=MODELS_DIR,
        cache_dir=folder / "cache",
        max_batch_images=max_batch_images,
        batch_mode=shape.mode.value,
        batch_rows=shape.rows,
    )


def engine_for(model: LoadedModel, settings: Settings) -> Engine:
    shape = BatchShape(BatchMode(settings.batch_mode), settings.batch_rows)
    return Engine(model, settings.limits(), batching=shape, models_dir=settings.models_dir)


def start_bot(model: LoadedModel, settings: Settings) -> Bot:
    return build_bot(settings, engine_for(model, settings), open_store(settings))


async def close_bot(bot: Bot) -> None:
    await bot.service.stop()
    await bot.executor.close()
    bot.store.close()


class Finished:
    """A front end that only notes when each job's final event arrived."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        self.kind: dict[int, EventKind] = {}
        self._changed = asyncio.Event()

    async def on_event(self, event: JobEvent) -> None:
        if event.is_final:
            self.at[event.job_id] = time.perf_counter()
            self.kind[event.job_id] = event.kind
            self._changed.set()

    async def wait_for(self, job_ids: Sequence[int]) -> float:
        """When the last of these jobs finished; raises if any did not finish well."""
        while not all(job_id in self.at for job_id in job_ids):
            self._changed.clear()
            await self._changed.wait()
        bad = {job_id: self.kind[job_id] for job_id in job_ids}
        bad = {job_id: kind for job_id, kind in bad.items() if kind is not EventKind.FINISHED}
        if bad:
            raise RuntimeError(f"jobs did not finish: {bad}")
        return max(self.at[job_id] for job_id in job_ids)


def imagine_line(prompt: str, seed: int, steps: int, size: int) -> str:
    return f"{prompt} --seed {seed} --steps {steps} --size {size}x{size} --n 1"


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    index = max(0, min(len(sorted_values) - 1, round(share * len(sorted_values)) - 1))
    return sorted_values[index]


# --------------------------------------------------------------------------- (a) overhead


async def overhead_runs(
    model: LoadedModel, folder: Path, size: int, steps: int, repeats: int
) -> OverheadRuns:
    """Seconds of each service job and of each bare generate of the same request."""
    bot = start_bot(model, bot_settings(folder, None))
    engine = bot.executor.engine  # type: ignore[attr-defined]
    service = bot.service
    finished = Finished()
    service.subscribe(PLATFORM, finished.on_event)
    await service.start()
    user = UserRef(PLATFORM, "alice", "Alice")
    origin = Origin(PLATFORM, "bench-chat")
    inside: list[float] = []  # seconds in engine.run_batch, service and bare alike
    run_batch = engine.run_batch

    def timed_run_batch(*arguments: Any, **keywords: Any) -> Any:
        started = time.perf_counter()
        try:
            return run_batch(*arguments, **keywords)
        finally:
            synchronize()
            inside.append(time.perf_counter() - started)

    engine.run_batch = timed_run_batch  # type: ignore[method-assign]

    async def through_service(seed: int, steps: int) -> tuple[float, GenerationRequest]:
        synchronize()
        started = time.perf_counter()
        options = await service.options(user, imagine_line(PROMPT, seed, steps, size), origin)
        ticket = await service.imagine(user, options, origin)
        done = await finished.wait_for([ticket.job_id])
        job = bot.store.job(ticket.job_id, with_images=True)
        assert job is not None and job.status is JobStatus.DONE and len(job.images) == 1
        request = work_of(job)
        assert isinstance(request, GenerationRequest)
        return done - started, request

    def bare(request: GenerationRequest) -> float:
        synchronize()
        started = time.perf_counter()
        engine.generate(request)
        synchronize()
        return time.perf_counter() - started

    runs = OverheadRuns()
    try:
        # Warm-up, a few steps each way: kernels, allocator, lazy imports, first queries.
        _, request = await through_service(seed=1, steps=WARM_UP_STEPS)
        bare(request)
        for repeat in range(repeats):
            seconds, request = await through_service(seed=100 + repeat, steps=steps)
            runs.service_s.append(seconds)
            runs.service_outside_s.append(seconds - inside[-1])
            seconds = bare(request)
            runs.bare_s.append(seconds)
            runs.bare_outside_s.append(seconds - inside[-1])
    finally:
        await close_bot(bot)
    return runs


@dataclass
class OverheadRuns:
    """Seconds per run, and the part of them outside `engine.run_batch` (which the GPU's
    run-to-run noise does not touch)."""

    service_s: list[float] = field(default_factory=list)
    service_outside_s: list[float] = field(default_factory=list)
    bare_s: list[float] = field(default_factory=list)
    bare_outside_s: list[float] = field(default_factory=list)


def part_a(args: argparse.Namespace, device: DeviceChoice, scratch: Path) -> None:
    size = args.size or (256 if device.is_cpu else 512)
    model = load_shape("mid", device, scratch)
    runs = asyncio.run(overhead_runs(model, scratch / "a", size, args.steps, args.repeats))
    print(
        f"\n(a) end-to-end overhead: mid model, {size}x{size}, {args.steps} steps, 1 image, "
        f"{args.repeats} runs each after a warm-up"
    )
    print(f"{'path':44} {'mean s':>8} {'stdev s':>8} {'min s':>8} {'outside ms':>10}")
    for label, values, outside in (
        ("bare engine.generate(request)", runs.bare_s, runs.bare_outside_s),
        ("service: imagine -> ... -> finished event", runs.service_s, runs.service_outside_s),
    ):
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"{label:44} {statistics.mean(values):>8.3f} {spread:>8.3f} {min(values):>8.3f} "
            f"{1000 * statistics.mean(outside):>10.1f}"
        )
    bare_mean = statistics.mean(runs.bare_s)
    by_means = statistics.mean(runs.service_s) / bare_mean - 1
    added = statistics.mean(runs.service_outside_s) - statistics.mean(runs.bare_outside_s)
    print(f"{'overhead, from the means':44} {by_means:>8.2%}")
    print(
        f"{'overhead, from the time outside the engine':44} {added / bare_mean:>8.2%}  "
        f"({1000 * added:+.1f} ms a job; target under 3%)",
        flush=True,
    )


# --------------------------------------------------------------------------- (b) throughput


@dataclass(frozen=True)
class SetUp:
    label: str
    max_batch_images: int
    shape: BatchShape


@dataclass(frozen=True)
class Throughput:
    wall_s: float
    batches: int
    identical: int  # images equal to their request run alone on an engine of the same set-up
    images: int


async def throughput_run(
    model: LoadedModel, folder: Path, set_up: SetUp, args: argparse.Namespace
) -> Throughput:
    """Wall seconds from the dispatcher's start until every job finished, the batches, and
    how many images equal their request run alone."""
    settings = bot_settings(folder, set_up.max_batch_images, set_up.shape)
    bot = start_bot(model, settings)
    engine = bot.executor.engine  # type: ignore[attr-defined]
    size, steps = args.tiny_size, args.steps
    # Warm-up at this batch size (and the row check of its call shape), outside the timing.
    engine.run_batch(
        [
            engine.prepare(
                GenerationRequest(PROMPT, seeds=(seed,), width=size, height=size, steps=steps)
            )
            for seed in range(set_up.max_batch_images)
        ]
    )
    service = bot.service
    finished = Finished()
    service.subscribe(PLATFORM, finished.on_event)
    origin = Origin(PLATFORM, "bench-chat")
    job_ids = []
    try:
        for number in range(args.users_b):
            user = UserRef(PLATFORM, f"user-{number}", f"User {number}")
            prompt = PROMPTS[number % len(PROMPTS)]
            for index in range(args.jobs_per_user):
                line = imagine_line(f"{prompt}, take {index}", 1000 * number + index, steps, size)
                ticket = await service.imagine(
                    user, await service.options(user, line, origin), origin
                )
                job_ids.append(ticket.job_id)
        synchronize()
        started = time.perf_counter()
        await service.start()
        done = await finished.wait_for(job_ids)
        wall = done - started
    finally:
        await close_bot(bot)
    store = Store(settings.database_url)
    try:
        jobs = [store.job(job_id, with_images=True) for job_id in job_ids]
    finally:
        store.close()
    finished_jobs = [job for job in jobs if job is not None]
    alone = engine_for(model, settings)
    identical = sum(_equals_alone(alone, job) for job in finished_jobs)
    # One mark_running per batch, so the jobs of a batch share their start time.
    batches = len({job.started_at for job in finished_jobs})
    return Throughput(wall, batches, identical, sum(len(job.images) for job in finished_jobs))


def _equals_alone(engine: Engine, job: JobRecord) -> bool:
    request = work_of(job)
    assert isinstance(request, GenerationRequest)
    alone = engine.generate(request)
    return all(
        np.array_equal(np.asarray(Image.open(saved.path).convert("RGB")), np.asarray(fresh.image))
        for saved, fresh in zip(job.images, alone.images, strict=True)
    )


def part_b(args: argparse.Namespace, device: DeviceChoice, scratch: Path) -> None:
    model = load_shape(args.model_b, device, scratch)
    batch_on = args.batch_images or DEFAULT_BATCH_IMAGES["cpu" if device.is_cpu else "gpu"]
    images = args.users_b * args.jobs_per_user
    print(
        f"\n(b) throughput: {args.model_b} model, {args.tiny_size}x{args.tiny_size}, "
        f"{args.steps} steps; {args.users_b} users x {args.jobs_per_user} one-image jobs, all "
        "queued before the start"
    )
    set_ups = (
        SetUp("one at a time", 1, BatchShape(BatchMode.FIXED, 2)),
        SetUp(f"fixed, {args.rows} rows", batch_on, BatchShape(BatchMode.FIXED, args.rows)),
        SetUp("whole", batch_on, BatchShape(BatchMode.WHOLE)),
    )
    print(
        f"{'set-up':>16} {'max imgs':>8} {'batches':>7} {'wall s':>8} {'images/s':>9} "
        f"{'vs one':>7} {'identical':>9}"
    )
    first: float | None = None
    for number, set_up in enumerate(set_ups):
        run = asyncio.run(throughput_run(model, scratch / f"b-{number}", set_up, args))
        rate = images / run.wall_s
        first = first or rate
        print(
            f"{set_up.label:>16} {set_up.max_batch_images:>8} {run.batches:>7} "
            f"{run.wall_s:>8.2f} {rate:>9.2f} {rate / first:>6.2f}x "
            f"{run.identical:>4}/{run.images}",
            flush=True,
        )
    print(
        "vs one: images/s over one job at a time (target at least 2x for fixed batches on a "
        "GPU). identical: images equal to their job run alone on an engine of the same set-up."
    )


# --------------------------------------------------------------------------- (c) latency


class NoExecutor:
    """Part (c) never runs a batch; the dispatcher only needs something in the slot."""

    async def prepare(self, work: Work) -> PreparedWork:
        raise NotImplementedError

    async def run(
        self,
        tasks: Sequence[Task],
        on_progress: object,
        preview_every: float | None = None,
        run_id: str | None = None,
        slot: str | None = None,
    ) -> list[TaskOutcome]:
        raise NotImplementedError

    remote = False

    def can_start(self, model: str | None = None) -> bool:
        return False

    def reserve(self, model: str | None = None, loras: Collection[str] = ()) -> str | None:
        return None

    def release(self, slot: str) -> None:
        pass

    def cancel(self, task_id: int) -> None:
        pass

    async def close(self) -> None:
        pass


def queued_jobs(user_ids: Sequence[int], count: int, seed: int = 0) -> list[NewJob]:
    """`count` jobs spread evenly over the users in random order, of mixed sizes and counts."""
    chooser = random.Random(seed)
    owners = [user_ids[index % len(user_ids)] for index in range(count)]
    chooser.shuffle(owners)
    sizes, steps, counts = (512, 768), (20, 30), (1, 1, 2, 4)
    jobs = []
    for index, owner in enumerate(owners):
        size, step, images = chooser.choice(sizes), chooser.choice(steps), chooser.choice(counts)
        request = GenerationRequest(
            prompt=f"{PROMPTS[index % len(PROMPTS)]}, job {index}",
            width=size,
            height=size,
            steps=step,
            seeds=tuple(chooser.randrange(1 << 32) for _ in range(images)),
        )
        jobs.append(
            NewJob(
                user_id=owner,
                kind=JobKind.IMAGINE,
                request=request.to_json(),
                batch_key=f"{size}x{size}-{step}",
                image_count=images,
                origin_platform=PLATFORM,
                origin_chat=f"chat-{owner % 50}",
                origin_message=str(index),
            )
        )
    return jobs


def latency_line(label: str, seconds: list[float]) -> str:
    ms = sorted(value * 1000 for value in seconds)
    return (
        f"{label:50} {len(ms):>6} {percentile(ms, 0.50):>8.3f} {percentile(ms, 0.99):>8.3f} "
        f"{ms[-1]:>8.3f}"
    )


def part_c(args: argparse.Namespace, device: DeviceChoice, scratch: Path) -> None:
    folder = scratch / "c"
    path = folder / "queue.db"
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    batch = args.batch_images or DEFAULT_BATCH_IMAGES["cpu" if device.is_cpu else "gpu"]
    config = CoreConfig(outputs_dir=folder / "outputs", max_batch_images=batch)
    dispatcher = Dispatcher(store, NoExecutor(), config, EventBus())  # type: ignore[arg-type]
    scheduler = dispatcher.scheduler
    owners = {
        record.id: record
        for record in (store.user(PLATFORM, f"user-{i}", f"User {i}") for i in range(args.users))
    }
    jobs = queued_jobs(list(owners), args.jobs)

    enqueue_s = []
    for new in jobs:
        started = time.perf_counter()
        job = store.add_job(new)  # then as JobService._enqueue: queue, position and ETA
        position = dispatcher.enqueue(job, owners[new.user_id])
        dispatcher.eta_seconds(job.id, position)
        enqueue_s.append(time.perf_counter() - started)

    def running_cap(user_id: int) -> int:
        user = dispatcher.user(user_id)
        return config.running_cap(user.role, user.max_running)

    dequeue_s, dequeued = [], 0
    while len(scheduler):
        started = time.perf_counter()
        taken = scheduler.next_batch(Counter(), running_cap, None)
        store.mark_running([item.job_id for item in taken])
        dequeue_s.append(time.perf_counter() - started)
        if not taken:
            raise RuntimeError("the scheduler gave no batch with jobs queued")
        dequeued += len(taken)
    running = store.count_running()
    store.close()
    with sqlite3.connect(path) as connection:
        journal = connection.execute("PRAGMA journal_mode").fetchone()[0]

    print(
        f"\n(c) store + scheduler: SQLite file (journal_mode={journal}), {args.users} users, "
        f"{args.jobs} jobs of 1-4 images in 4 batch keys, max {batch} images a batch"
    )
    print(f"{'operation':50} {'ops':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(latency_line("enqueue: add_job + enqueue + position", enqueue_s))
    print(latency_line(f"dequeue: next_batch + mark_running ({dequeued} jobs)", dequeue_s))
    print(f"target: p99 under 5 ms; {running} jobs marked running", flush=True)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("a", "b", "c", "all"), default="all")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5, help="(a) runs of each path")
    parser.add_argument("--steps", type=int, default=20, help="(a) and (b)")
    parser.add_argument("--size", type=int, default=0, help="(a) 0: 512 on a GPU, 256 on CPU")
    parser.add_argument("--tiny-size", type=int, default=64, help="(b) image size")
    parser.add_argument(
        "--batch-images", type=int, default=0, help="(b), (c) 0: 4 on the CPU, 8 on a GPU"
    )
    parser.add_argument("--users-b", type=int, default=8, help="(b) users")
    parser.add_argument("--model-b", choices=("tiny", "mid"), default="tiny", help="(b) model")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="(b) fixed call rows")
    parser.add_argument("--jobs-per-user", type=int, default=4, help="(b) jobs per user")
    parser.add_argument("--users", type=int, default=1000, help="(c) users")
    parser.add_argument("--jobs", type=int, default=10_000, help="(c) queued jobs")
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    device = choose_device(args.device)
    print(device.describe(), flush=True)
    parts = "abc" if args.part == "all" else args.part
    with tempfile.TemporaryDirectory() as scratch:
        for part in parts:
            runner = {"a": part_a, "b": part_b, "c": part_c}[part]
            runner(args, device, Path(scratch))


if __name__ == "__main__":
    main()
