"""Scale-out benchmark: GPU workers through Celery and Redis, on the CPU tiny model.

(a) Throughput with one worker against two, in the same run: `--jobs` grids (`--n 4`) from
`--users` users, all queued at once, the workers started as `easel worker` processes. Prints
images/s for each and the ratio.
(b) Latency from enqueue to the batch starting: `--latency-jobs` one-image jobs queued one at a
time on an idle bot, the time from `imagine` returning to the first progress event (the batch's
first step done), for the local executor (the engine in the bot's process) and for a remote
worker. Prints p50 and p99 in ms.

Needs a Redis and a PostgreSQL: EASEL_TEST_REDIS_URL and EASEL_TEST_DATABASE_URL, as
`eval "$(.ci/services start)"` sets them. Asserts nothing.

    python -m bench.scaleout
    python -m bench.scaleout --jobs 24 --steps 20 --latency-jobs 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot.core.events import EventKind, JobEvent, Origin, UserRef
from bot.runtime import Bot, build_bot, build_remote_bot, open_store
from bot.settings import Settings
from tests.cluster import Cluster, cluster_models
from tests.services import PostgresDatabases
from tests.tiny_models import build_random_pipeline

ORIGIN = Origin("bench", "scaleout")
TIMEOUT = 600.0


async def run_jobs(bot: Bot, users: int, jobs: int, text: str) -> float:
    """Queue `jobs` at once from `users` users; seconds until all are done."""
    people = [UserRef("bench", f"user-{index}", f"User {index}") for index in range(users)]
    started = time.perf_counter()
    for index in range(jobs):
        user = people[index % users]
        await bot.service.imagine(user, await bot.service.options(user, text, ORIGIN), ORIGIN)
    await asyncio.wait_for(bot.service.wait_until_idle(ORIGIN.platform), TIMEOUT)
    return time.perf_counter() - started


async def first_step_latency(bot: Bot, count: int) -> list[float]:
    """Seconds from `imagine` returning to the first progress event, one job at a time."""
    seen: dict[int, float] = {}

    async def on_event(event: JobEvent) -> None:
        if event.kind is EventKind.PROGRESS and event.job_id not in seen:
            seen[event.job_id] = time.perf_counter()

    bot.service.subscribe(ORIGIN.platform, on_event)
    user = UserRef("bench", "latency", "Latency")
    delays = []
    for _ in range(count):
        options = await bot.service.options(user, "a quiet lake --steps 2 --n 1", ORIGIN)
        queued = time.perf_counter()
        job = (await bot.service.imagine(user, options, ORIGIN)).job_id
        await asyncio.wait_for(bot.service.wait_until_idle(ORIGIN.platform), TIMEOUT)
        delays.append(seen[job] - queued)
    return delays


@contextlib.asynccontextmanager
async def serving(bot: Bot) -> AsyncIterator[Bot]:
    """The bot started, then stopped with its executor and database closed."""
    await bot.service.start()
    try:
        yield bot
    finally:
        await bot.service.stop()
        await bot.executor.close()
        bot.store.close()


def remote_bot(cluster: Cluster) -> Bot:
    settings = cluster.settings()
    return build_remote_bot(settings, open_store(settings, hold_bot_lock=True))


async def remote(cluster: Cluster, jobs: int, users: int, steps: int) -> float:
    async with serving(remote_bot(cluster)) as bot:
        return await run_jobs(bot, users, jobs, f"a harbour at dusk --steps {steps} --n 4")


async def remote_latency(cluster: Cluster, count: int) -> list[float]:
    async with serving(remote_bot(cluster)) as bot:
        return await first_step_latency(bot, count)


async def local_latency(root: Path, models: Path, count: int) -> list[float]:
    from bot.cli.common import _load_engine

    settings = Settings(
        _env_file=None,
        outputs_dir=root / "local-outputs",
        models_dir=models,
        model="tiny-sd1",
        database_url=f"sqlite:///{root}/local.db",
        device="cpu",
        progress_interval=0,
    )
    engine = _load_engine(settings, None, quiet=True)
    async with serving(
        build_bot(settings, engine, open_store(settings, hold_bot_lock=True))
    ) as bot:
        return await first_step_latency(bot, count)


def percentiles(delays: Sequence[float]) -> str:
    ordered = sorted(delays)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=16, help="grids per throughput run")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--latency-jobs", type=int, default=20)
    args = parser.parse_args()
    redis_url = os.environ.get("EASEL_TEST_REDIS_URL")
    database_url = os.environ.get("EASEL_TEST_DATABASE_URL")
    if not redis_url or not database_url:
        raise SystemExit(
            'Set EASEL_TEST_REDIS_URL and EASEL_TEST_DATABASE_URL: eval "$(.ci/services start)"'
        )
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    databases = PostgresDatabases(database_url)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        pipe = build_random_pipeline("sd1")
        pipe.save_pretrained(root / "tiny-sd1")
        models = cluster_models(root, root / "tiny-sd1", pipe)
        url = databases.create("easel_bench")
        cluster = Cluster(root, models, url, redis_url, batch_images=4)
        open_store(cluster.settings()).close()
        try:
            cluster.start_worker("bench-a")
            cluster.wait_announced(("bench-a",))
            one = asyncio.run(remote(cluster, args.jobs, args.users, args.steps))
            cluster.start_worker("bench-b")
            cluster.wait_announced(("bench-a", "bench-b"))
            two = asyncio.run(remote(cluster, args.jobs, args.users, args.steps))
            remote_delays = asyncio.run(remote_latency(cluster, args.latency_jobs))
        finally:
            cluster.stop()
            databases.drop(url)
            databases.close()
        local_delays = asyncio.run(local_latency(root, models, args.latency_jobs))
    images = args.jobs * 4
    print(f"(a) {args.jobs} grids of 4 from {args.users} users, {args.steps} steps, 64 px")
    print(f"    1 worker : {images / one:6.2f} images/s ({one:.1f} s)")
    print(f"    2 workers: {images / two:6.2f} images/s ({two:.1f} s)   ratio {one / two:.2f}x")
    print(f"(b) enqueue to the first step, {args.latency_jobs} jobs one at a time")
    print(f"    local executor : {percentiles(local_delays)}")
    print(f"    remote worker  : {percentiles(remote_delays)}")


if __name__ == "__main__":
    main()
