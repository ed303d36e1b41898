"""Scale-out for real: two `easel worker` processes on the tiny model, a real Redis and a real
PostgreSQL, and the bot's dispatcher in this process (`EASEL_EXECUTOR=celery`, no weights).

The workers start once for the module (importing torch and loading the model is most of the
cost). The destructive test, a SIGKILL, runs last.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from diffusers import StableDiffusionPipeline

from bot.core.events import EventKind, JobEvent, Origin, UserRef
from bot.runtime import Bot, build_remote_bot, open_store
from bot.store import JobRecord, JobStatus, Store
from tests.cluster import Cluster, cluster_models, weightless_models
from tests.services import PostgresDatabases

pytestmark = pytest.mark.heavy  # started first: see conftest.py

WORKERS = ("gpu-a", "gpu-b")
JOB_TIMEOUT = 120.0
ORIGIN = Origin("test", "chat-scale")
USERS = [UserRef("test", f"user-{index}", f"User {index}", "en") for index in range(4)]
LONG = "--steps 60 --n 1"  # seconds on the tiny model: long enough to act while it runs


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    models_dir: Path,
    random_sd1: StableDiffusionPipeline,
    redis_url: str,
    postgres_databases: PostgresDatabases,
) -> Iterator[Cluster]:
    import redis as redis_library

    redis_library.Redis.from_url(redis_url).flushdb()
    root = tmp_path_factory.mktemp("scaleout")
    checkpoint = models_dir / "stable-diffusion" / "tiny-sd1"
    models = cluster_models(root, checkpoint, random_sd1)
    url = postgres_databases.create("easel_scaleout")
    # The bot holds no weights: it checks jobs from the checkpoint's configs and tokenizer.
    made = Cluster(root, models, url, redis_url, bot_models=weightless_models(root, checkpoint))
    open_store(made.settings()).close()  # migrated before any worker connects
    try:
        for name in WORKERS:
            made.start_worker(name)
        made.wait_announced(WORKERS)
        yield made
    finally:
        made.stop()
        postgres_databases.drop(url)


class Events:
    def __init__(self) -> None:
        self.seen: list[JobEvent] = []

    async def __call__(self, event: JobEvent) -> None:
        self.seen.append(event)

    def of(self, kind: EventKind, job_id: int) -> list[JobEvent]:
        return [event for event in self.seen if event.kind is kind and event.job_id == job_id]


async def started_bot(cluster: Cluster) -> tuple[Bot, Events]:
    settings = cluster.settings()
    bot = build_remote_bot(settings, open_store(settings, hold_bot_lock=True))
    events = Events()
    bot.service.subscribe(ORIGIN.platform, events)
    await bot.service.start()
    return bot, events


async def stopped(bot: Bot) -> None:
    await bot.service.stop()
    await bot.executor.close()
    bot.store.close()


async def imagine(bot: Bot, user: UserRef, text: str) -> int:
    options = await bot.service.options(user, text, ORIGIN)
    return (await bot.service.imagine(user, options, ORIGIN)).job_id


async def until(condition: Callable[[], Any], timeout: float = JOB_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.05)
    return found


async def idle(bot: Bot) -> None:
    await asyncio.wait_for(bot.service.wait_until_idle(ORIGIN.platform), JOB_TIMEOUT)


def row(bot: Bot, job_id: int) -> JobRecord:
    found = bot.store.job(job_id, with_images=True)
    assert found is not None
    return found


def claimed_by(store: Store, job_id: int) -> str | None:
    job = store.job(job_id)
    return job.worker if job is not None and job.status is JobStatus.RUNNING else None


def runs_of(cluster: Cluster, job_id: int) -> int:
    """How many times the workers started the job (their logs name each run's jobs)."""
    runs = re.compile(r"Run \w+: jobs ([\d, ]+)$")
    return sum(
        str(job_id) in found.group(1).split(", ")
        for name in WORKERS
        for found in map(runs.search, cluster.log(name).splitlines())
        if found is not None
    )


# ---------------------------------------------------------------------------------------


def test_jobs_of_several_users_spread_over_both_workers(cluster: Cluster) -> None:
    async def scenario() -> list[JobRecord]:
        bot, events = await started_bot(cluster)
        try:
            jobs = [
                await imagine(bot, user, f"a lighthouse {user.platform_user_id} --steps 8 --n 1")
                for user in USERS
            ]
            await idle(bot)
            assert all(events.of(EventKind.FINISHED, job) for job in jobs)
            # Each report leaves Redis once recorded (no growing pile of images there).
            await until(lambda: not cluster.reports())
            return [row(bot, job) for job in jobs]
        finally:
            await stopped(bot)

    rows = asyncio.run(scenario())
    assert [job.status for job in rows] == [JobStatus.DONE] * len(USERS)
    assert all(len(job.images) == 1 and Path(job.images[0].path).is_file() for job in rows)
    assert {job.worker for job in rows} == set(WORKERS)  # both took work
    assert all(job.attempts == 1 for job in rows)


def test_cancel_stops_a_remote_job_within_a_step_and_the_worker_stays(cluster: Cluster) -> None:
    async def scenario() -> tuple[JobRecord, int, JobRecord]:
        bot, events = await started_bot(cluster)
        try:
            job = await imagine(bot, USERS[0], f"a slow river {LONG}")
            await until(lambda: events.of(EventKind.PROGRESS, job))
            await bot.service.cancel(USERS[0], job, ORIGIN)
            await idle(bot)
            steps = max(event.step or 0 for event in events.of(EventKind.PROGRESS, job))
            after = await imagine(bot, USERS[0], "a quick river --steps 4 --n 1")
            await idle(bot)
            return row(bot, job), steps, row(bot, after)
        finally:
            await stopped(bot)

    cancelled, steps, after = asyncio.run(scenario())
    assert cancelled.status is JobStatus.CANCELLED and cancelled.images == ()
    assert steps < 60
    assert after.status is JobStatus.DONE  # the worker that held the model runs on
    assert all(cluster.processes[name].poll() is None for name in WORKERS)


def test_a_worker_holding_the_loras_gets_the_next_lora_batch(cluster: Cluster) -> None:
    async def scenario() -> tuple[str | None, str | None]:
        bot, _ = await started_bot(cluster)
        try:
            # gpu-a (first by name) is busy, so the first LoRA batch goes to gpu-b ...
            busy = await imagine(bot, USERS[0], f"a long plain field {LONG}")
            await until(lambda: claimed_by(bot.store, busy))
            first = await imagine(bot, USERS[1], "an ink drawing <lora:ink:0.8> --steps 4 --n 1")
            await idle(bot)
            # ... and with both free, the next one goes where the LoRA is resident.
            second = await imagine(bot, USERS[2], "an ink sketch <lora:ink:0.8> --steps 4 --n 1")
            await idle(bot)
            return row(bot, first).worker, row(bot, second).worker
        finally:
            await stopped(bot)

    first, second = asyncio.run(scenario())
    assert first == "gpu-b"
    assert second == "gpu-b"
    info = cluster.info("gpu-b")
    assert info is not None and "ink" in info.loras


def test_a_bot_restart_while_a_worker_runs_does_not_run_its_job_twice(cluster: Cluster) -> None:
    async def first_bot() -> int:
        bot, _ = await started_bot(cluster)
        try:
            job = await imagine(bot, USERS[3], f"a restless sea {LONG}")
            await until(lambda: claimed_by(bot.store, job))
            return job
        finally:
            await stopped(bot)  # while the worker runs it

    async def second_bot(job: int) -> JobRecord:
        bot, events = await started_bot(cluster)
        try:
            await until(lambda: events.of(EventKind.FINISHED, job))
            return row(bot, job)
        finally:
            await stopped(bot)

    job = asyncio.run(first_bot())
    with Store(cluster.database_url) as store:
        held = store.job(job)
        assert held is not None and held.status is JobStatus.RUNNING and held.worker in WORKERS
    done = asyncio.run(second_bot(job))
    assert done.status is JobStatus.DONE and done.attempts == 1 and len(done.images) == 1
    assert runs_of(cluster, job) == 1


def test_sigkill_of_a_worker_mid_batch_and_every_job_completes_exactly_once(
    cluster: Cluster,
) -> None:
    async def scenario() -> list[JobRecord]:
        bot, events = await started_bot(cluster)
        try:
            jobs = [
                await imagine(bot, user, f"a storm {index} {LONG}")
                for index, user in enumerate(USERS[:2])
            ]
            # One job on each worker, both running: then gpu-a dies mid-batch.
            await until(lambda: {claimed_by(bot.store, job) for job in jobs} == set(WORKERS))
            cluster.kill("gpu-a")
            await idle(bot)
            assert all(len(events.of(EventKind.FINISHED, job)) == 1 for job in jobs)
            return [row(bot, job) for job in jobs]
        finally:
            await stopped(bot)

    rows = asyncio.run(scenario())
    assert [job.status for job in rows] == [JobStatus.DONE, JobStatus.DONE]
    assert all(len(job.images) == 1 for job in rows)  # one result each, recorded once
    assert all(job.worker == "gpu-b" for job in rows)  # the killed one's job ran again there
    assert sorted(job.attempts for job in rows) == [1, 2]
