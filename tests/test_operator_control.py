"""The database as the way another process reaches a running bot: the store's cancel and
start writes cannot undo each other, the control row keeps who changed a setting, and the
bot's sync with the rows survives a database error (in process, on the tiny model)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.core.events import EventKind
from bot.runtime import Bot
from bot.store import CancelResult, JobKind, JobStatus, NewJob, Store, StoreError
from bot.store.listing import retry_job
from tests.test_service import ALICE, ORIGIN, Recorder, imagine, make_bot, run, until

__all__ = ["make_bot"]  # the fixture


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store(f"sqlite:///{tmp_path}/control.db")
    opened.upgrade()
    return opened


def add(store: Store, user_id: int) -> int:
    job = NewJob(user_id, JobKind.IMAGINE, '{"prompt": "x"}', None, 1, "test", "chat")
    return store.add_job(job).id


def test_mark_running_starts_queued_jobs_and_never_a_cancelled_one(store: Store) -> None:
    user = store.user("test", "alice").id
    queued, cancelled_meanwhile = add(store, user), add(store, user)
    assert store.request_cancel(cancelled_meanwhile) is CancelResult.CANCELLED
    assert store.mark_running([queued, cancelled_meanwhile]) == {queued}
    assert store.job(cancelled_meanwhile).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert store.job(queued).attempts == 1  # type: ignore[union-attr]


def test_mark_running_again_after_a_failed_batch(store: Store) -> None:
    """A job the bot put back in its queue when the database failed mid-batch is still
    running in its row: it runs again as the same attempt, unless asked to stop meanwhile."""
    user = store.user("test", "alice").id
    kept, stopped = add(store, user), add(store, user)
    store.mark_running([kept, stopped])
    assert store.request_cancel(stopped) is CancelResult.STOPPING
    assert store.mark_running([kept, stopped]) == {kept}
    again, gone = store.job(kept), store.job(stopped)
    assert again is not None and (again.status, again.attempts) == (JobStatus.RUNNING, 1)
    assert gone is not None and gone.status is JobStatus.CANCELLED


def test_request_cancel_of_each_status(store: Store) -> None:
    user = store.user("test", "alice").id
    queued, running, done = add(store, user), add(store, user), add(store, user)
    store.mark_running([running, done])
    store.mark_done(done, [], None)
    revision = store.control_state().revision
    assert store.request_cancel(queued, "cli:op") is CancelResult.CANCELLED
    assert store.request_cancel(running, "cli:op") is CancelResult.STOPPING
    assert store.request_cancel(done, "cli:op") is CancelResult.NOT_ACTIVE
    assert store.control_state().revision == revision + 2
    from bot.store import NotFoundError

    with pytest.raises(NotFoundError):
        store.request_cancel(99)


def test_a_plain_bump_keeps_who_paused(store: Store) -> None:
    store.set_queue_paused(True, "discord:admin")
    paused = store.control_state()
    store.bump_revision("cli:someone")  # a job cancelled, a user banned
    after = store.control_state()
    assert after.revision == paused.revision + 1
    assert (after.paused, after.changed_by, after.changed_at) == (
        True,
        "discord:admin",
        paused.changed_at,
    )
    store.set_queue_paused(False, "cli:op")
    assert store.control_state().changed_by == "cli:op"


def test_a_sync_the_database_interrupted_runs_again(
    make_bot: Callable[..., Bot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry queued by another process while the bot cannot read its rows still joins the
    queue once the database answers again."""
    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe(ORIGIN.platform, recorder)
    original = bot.store.queued_jobs
    failures = [StoreError("the database is locked")]

    def locked_once() -> Any:
        if failures:
            raise failures.pop()
        return original()

    async def scenario() -> int:
        await bot.service.start()
        job = await imagine(bot, ALICE, "a patient fox --n 1 --steps 2 --seed 3")
        await asyncio.wait_for(until(lambda: recorder.of(EventKind.FINISHED, job)), 60)
        with Store(bot.store.url) as other:
            other.mark_failed(job, '{"key": "failed_error", "args": {}}')
            monkeypatch.setattr(bot.store, "queued_jobs", locked_once)
            retried = retry_job(other, job, "cli:op").id
        await asyncio.wait_for(until(lambda: recorder.of(EventKind.FINISHED, retried)), 60)
        await bot.service.stop()
        return retried

    retried = run(scenario())
    assert not failures  # the first sync did fail
    assert len(recorder.of(EventKind.QUEUED, retried)) == 1
    done = bot.store.job(retried, with_images=True)
    assert done is not None and done.status is JobStatus.DONE and len(done.images) == 1


def test_a_queued_job_cancelled_elsewhere_is_said_once(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe(ORIGIN.platform, recorder)

    async def scenario() -> int:
        await bot.service.start()
        bot.store.set_queue_paused(True, "test")
        job = await imagine(bot, ALICE, "a waiting owl --n 1 --steps 2")
        with Store(bot.store.url) as other:
            assert other.request_cancel(job, "cli:op") is CancelResult.CANCELLED
        await asyncio.wait_for(until(lambda: recorder.of(EventKind.CANCELLED, job)), 30)
        bot.store.set_queue_paused(False, "test")
        later = await imagine(bot, ALICE, "a later owl --n 1 --steps 2")
        await asyncio.wait_for(until(lambda: recorder.of(EventKind.FINISHED, later)), 60)
        await bot.service.stop()
        return job

    job = run(scenario())
    assert len(recorder.of(EventKind.CANCELLED, job)) == 1
    assert not recorder.of(EventKind.STARTED, job)


def test_starting_and_clearing_without_returning(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the database cannot say which rows an UPDATE changed (MySQL), the rows are
    locked, read and changed instead, with the same result."""
    from bot.store.listing import cancel_queued

    with store.reading() as session:
        dialect = session.get_bind().dialect
    monkeypatch.setattr(dialect, "update_returning", False)
    user = store.user("test", "alice").id
    first, second, third = add(store, user), add(store, user), add(store, user)
    assert store.mark_running([first]) == {first}
    assert cancel_queued(store, "cli:op") == [second, third]
    assert store.mark_running([second]) == set()
    statuses = store.job_statuses([first, second, third])
    assert statuses == {
        first: JobStatus.RUNNING,
        second: JobStatus.CANCELLED,
        third: JobStatus.CANCELLED,
    }


def test_a_job_put_back_after_a_database_failure_survives_a_sync_and_runs(
    make_bot: Callable[..., Bot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording fails (the disk is full): the job goes back to the bot's queue while its row
    still says running. Another process changes something meanwhile, so a sync runs while the
    owner cannot be read: the job stays queued in the bot and finishes once the database
    answers."""
    from bot.core import dispatcher as dispatcher_module

    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe(ORIGIN.platform, recorder)
    monkeypatch.setattr(dispatcher_module, "STORE_RETRY_DELAYS", (1.5,))
    original_done, original_user = bot.store.mark_done, bot.store.user_by_id
    failures = [StoreError("the database disk is full (easel.db): free some space")]
    user_failures: list[StoreError] = []

    def full_once(*args: Any, **kwargs: Any) -> bool:
        if failures:
            with Store(bot.store.url) as other:
                other.bump_revision("cli:op")
            user_failures.append(StoreError("the database is locked"))
            raise failures.pop()
        return original_done(*args, **kwargs)

    def user_failing_once(user_id: int) -> Any:
        if user_failures:
            raise user_failures.pop()
        return original_user(user_id)

    monkeypatch.setattr(bot.store, "mark_done", full_once)
    monkeypatch.setattr(bot.store, "user_by_id", user_failing_once)

    async def scenario() -> int:
        await bot.service.start()
        job = await imagine(bot, ALICE, "a stubborn fox --n 1 --steps 2")
        await asyncio.wait_for(until(lambda: recorder.of(EventKind.FINISHED, job)), 60)
        await bot.service.stop()
        return job

    job = run(scenario())
    assert not failures
    done = bot.store.job(job, with_images=True)
    assert done is not None and done.status is JobStatus.DONE and len(done.images) == 1
