"""A crash right after each database commit of a job's life, then a restart: every job is
finished and its result delivered once, and no file of an unfinished attempt stays.

Delivery is at least once, never lost: a result the front end took is recorded as delivered
right after. When the crash falls between the two (the dispatcher runs the next job while it
delivers, so another job's commit can come there), the restart sends that result again; the
test allows exactly that one repeat, for exactly that job.

The crash is simulated in this process (every store call after the chosen commit raises, as
if the process had died there), so each point costs a fraction of a second; the real SIGKILL
test is in test_console.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bot.core.events import EventKind, JobEvent, Origin, UserRef
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from bot.store import Delivery, JobStatus, Store
from pipeline.engine import Engine

ORIGIN = Origin("test", "chat")
USER = UserRef("test", "ann", "Ann", "en")
WRITES = (
    "add_job",
    "mark_running",
    "mark_done",
    "mark_failed",
    "mark_cancelled",
    "requeue",
    "count_delivery_attempt",
    "mark_delivered",
    "set_status_message",
)
JOBS = 2
# Each job commits: running, done, a delivery try, delivered.
COMMITS = JOBS * 4


class Crash(BaseException):
    """The process died here; nothing after it runs."""


def die_after_commit(store: Store, commit: int, state: dict[str, bool]) -> None:
    """From the `commit`-th write on (once it is committed) every store call fails, and
    `state["dead"]` says so."""
    writes = [0]

    def wrap(name: str, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if state["dead"]:
                raise Crash
            result = original(*args, **kwargs)
            if name in WRITES:
                writes[0] += 1
                if writes[0] == commit:
                    state["dead"] = True
                    raise Crash
            return result

        return call

    for name in dir(store):
        if not name.startswith("_") and name not in ("close", "url", "fatal"):
            attribute = getattr(store, name)
            if callable(attribute):
                setattr(store, name, wrap(name, attribute))


def _sent_but_not_recorded(settings: Settings, before: list[JobEvent]) -> list[int]:
    """Jobs whose result the first life sent while their row does not say it was."""
    sent = {event.job_id for event in before if event.kind is EventKind.FINISHED}
    store = open_store(settings)
    try:
        rows = [store.job(job_id) for job_id in sorted(sent)]
    finally:
        store.close()
    return [row.id for row in rows if row is not None and row.delivery is not Delivery.DELIVERED]


def settings_for(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        outputs_dir=tmp_path / "out",
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path}/easel.db",
        progress_interval=0,
        max_batch_images=1,
    )


async def first_life(bot: Bot, state: dict[str, bool], seen: list[JobEvent]) -> None:
    """Queue the jobs, then run until the crash (or the end)."""
    service = bot.service
    for number in range(JOBS):
        options = await service.options(USER, f"a lantern {number} --n 1 --steps 2", ORIGIN)
        await service.imagine(USER, options, ORIGIN)

    async def record(event: JobEvent) -> None:
        seen.append(event)

    service.subscribe(ORIGIN.platform, record)
    dispatcher = service.dispatcher
    await service.start()
    for _ in range(600):
        if state["dead"] or not dispatcher.pending_for(ORIGIN.platform):
            break
        await asyncio.sleep(0.05)
    # The process is gone: nothing it had in hand finishes.
    if dispatcher._loop_task is not None:
        dispatcher._loop_task.cancel()
    for task in list(dispatcher._background):
        task.cancel()
    await asyncio.sleep(0)


async def second_life(bot: Bot, seen: list[JobEvent]) -> None:
    async def record(event: JobEvent) -> None:
        seen.append(event)

    service = bot.service
    service.subscribe(ORIGIN.platform, record)
    await service.start()
    await service.deliver_missed(ORIGIN.platform)
    await asyncio.wait_for(service.wait_until_idle(ORIGIN.platform), 120)
    await service.stop()


@pytest.mark.parametrize("commit", range(1, COMMITS + 1))
def test_a_crash_after_any_commit_loses_nothing_and_delivers_once(
    commit: int, tmp_path: Path, engine: Engine
) -> None:
    settings = settings_for(tmp_path)
    first_store = open_store(settings, hold_bot_lock=True)
    first = build_bot(settings, engine, first_store)
    before: list[JobEvent] = []
    # The jobs are queued before the crash is armed: the user was told they were queued.
    state: dict[str, bool] = {"dead": False}

    async def arm_then_run() -> None:
        service = first.service
        original_start = service.start

        async def start() -> None:
            die_after_commit(first_store, commit, state)
            await original_start()

        service.start = start  # type: ignore[method-assign]
        await first_life(first, state, before)

    asyncio.run(arm_then_run())
    assert state["dead"], f"no crash at commit {commit}"
    first.executor._thread.shutdown(wait=True)  # type: ignore[attr-defined]
    first_store.close()
    sent_not_recorded = _sent_but_not_recorded(settings, before)

    second_store = open_store(settings, hold_bot_lock=True)
    second = build_bot(settings, engine, second_store)
    after: list[JobEvent] = []
    asyncio.run(second_life(second, after))

    finished = Counter(
        event.job_id for event in (*before, *after) if event.kind is EventKind.FINISHED
    )
    expected = Counter({job: 1 for job in range(1, JOBS + 1)})
    expected.update(sent_not_recorded)  # the crash came between sending and recording
    assert finished == expected, commit
    kept = set()
    for job_id in range(1, JOBS + 1):
        job = second_store.job(job_id, with_images=True)
        assert job is not None and job.status is JobStatus.DONE, (commit, job)
        assert len(job.images) == 1 and Path(job.images[0].path).is_file()
        kept.add(Path(job.images[0].path).resolve())
    on_disk = {path.resolve() for path in (tmp_path / "out").rglob("*.png")}
    assert on_disk == kept, commit  # no file of an attempt that never finished
    second_store.close()
