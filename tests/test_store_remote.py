"""Jobs run by GPU workers on other machines: runs, claims, leases, lost runs and late results,
on SQLite and on PostgreSQL (the scale-out database), and the bot lock on PostgreSQL.

Each database is made once per module and emptied before each test. The PostgreSQL cases are
skipped without a PostgreSQL to test against (and fail under CI): `.ci/services start`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bot.store import JobKind, JobStatus, NewImage, NotFoundError, Store
from bot.store.faults import BotAlreadyRunningError
from bot.store.models import Image, Job, QueueState
from tests.services import PostgresDatabases

LEASE = 30.0  # seconds: longer than any test takes
EXHAUSTED = '{"key": "failed_crashed"}'
MAX_ATTEMPTS = 3
TABLES_TO_EMPTY = ("images", "jobs", "user_settings", "chats", "users")


@pytest.fixture(scope="module")
def postgres_module_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """One migrated PostgreSQL database for this module's tests (each empties it first)."""
    url = postgres_databases.create("easel_remote")
    with Store(url) as store:
        store.upgrade()
    yield url
    postgres_databases.drop(url)


def emptied(store: Store) -> Store:
    with store.writing() as session:
        for table in TABLES_TO_EMPTY:
            session.execute(sa.text(f"DELETE FROM {table}"))
        session.execute(sa.update(QueueState).values(paused=False, revision=0, model=None))
    return store


@pytest.fixture(scope="module")
def sqlite_module_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated SQLite file for this module's tests (each empties it first)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('remote') / 'easel.db'}"
    with Store(url) as store:
        store.upgrade()
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    with Store(request.getfixturevalue(f"{request.param}_module_url")) as opened:
        yield emptied(opened)


@pytest.fixture
def postgres_store(postgres_module_url: str) -> Iterator[Store]:
    with Store(postgres_module_url) as opened:
        yield emptied(opened)


def add_jobs(store: Store, count: int) -> list[int]:
    """`count` new queued jobs, written together."""
    user = store.user("discord", "42", "Ada").id
    with store.writing() as session:
        rows = [
            Job(
                user_id=user,
                kind=JobKind.IMAGINE,
                request='{"prompt": "a castle"}',
                batch_key="k",
                image_count=2,
                origin_platform="discord",
                origin_chat="chan",
            )
            for _ in range(count)
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def dispatched(store: Store, count: int, run_id: str) -> list[int]:
    """`count` new jobs, started as one run on the workers (nobody claimed it yet)."""
    ids = add_jobs(store, count)
    assert store.mark_running(ids, run_id) == set(ids)
    return ids


def expire(store: Store, job_ids: list[int]) -> None:
    """The worker's lease on these jobs ran out a minute ago."""
    past = datetime.now(UTC) - timedelta(minutes=1)
    with store.writing() as session:
        session.execute(sa.update(Job).where(Job.id.in_(job_ids)).values(lease_until=past))


def status(store: Store, job_id: int) -> JobStatus:
    job = store.job(job_id)
    assert job is not None
    return job.status


def images(count: int) -> list[NewImage]:
    return [NewImage(i, f"out/{i}.png", 7 + i, 64, 64, "0" * 64) for i in range(count)]


def image_rows(store: Store) -> int:
    with store.reading() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Image)) or 0


# --------------------------------------------------------------------------- runs and claims


def test_a_run_is_recorded_on_the_jobs_it_starts(store: Store) -> None:
    ids = dispatched(store, 2, "run-1")
    for job_id in ids:
        job = store.job(job_id)
        assert job is not None and job.status is JobStatus.RUNNING and job.attempts == 1
        assert (job.run_id, job.worker, job.lease_until) == ("run-1", None, None)
    # Dispatched again (the bot put them back in its queue): the same attempt, a new run.
    assert store.claim_run("run-1", ids, "gpu-a", LEASE) == set(ids)
    assert store.mark_running(ids, "run-2") == set(ids)
    job = store.job(ids[0])
    assert job is not None and job.attempts == 1
    assert (job.run_id, job.worker, job.lease_until) == ("run-2", None, None)


def test_a_worker_claims_a_run_once_and_stale_runs_are_refused(store: Store) -> None:
    ids = dispatched(store, 2, "run-1")
    queued = add_jobs(store, 1)
    before = datetime.now(UTC)
    assert store.claim_run("run-1", [*ids, *queued], "gpu-a", LEASE) == set(ids)
    job = store.job(ids[0])
    assert job is not None and job.worker == "gpu-a" and job.lease_until is not None
    assert job.lease_until > before + timedelta(seconds=LEASE / 2)
    assert status(store, queued[0]) is JobStatus.QUEUED  # not part of any run
    # Held: neither another worker nor the same one takes it again while the lease lives.
    assert store.claim_run("run-1", ids, "gpu-b", LEASE) == set()
    assert store.claim_run("run-1", ids, "gpu-a", LEASE) == set()
    # A run the jobs are no longer part of.
    assert store.mark_running(ids, "run-2") == set(ids)
    assert store.claim_run("run-1", ids, "gpu-b", LEASE) == set()
    assert store.claim_run("run-2", ids, "gpu-b", LEASE) == set(ids)
    with pytest.raises(ValueError):
        store.claim_run("run-2", ids, "gpu-b", 0)


def test_an_expired_lease_is_taken_over_and_the_old_worker_loses_it(store: Store) -> None:
    ids = dispatched(store, 2, "run-1")
    store.claim_run("run-1", ids, "gpu-a", LEASE)
    expire(store, ids)
    assert store.expired_leases() == {"run-1": ids}
    assert store.leased_runs() == {}
    assert store.claim_run("run-1", ids, "gpu-b", LEASE) == set(ids)
    assert store.renew_lease("run-1", ids, "gpu-a", LEASE) == set()  # no longer its own
    assert store.expired_leases() == {}
    assert store.leased_runs() == {"run-1": ids}
    job = store.job(ids[0])
    assert job is not None and job.worker == "gpu-b"


def test_renewals_hold_the_jobs_still_the_workers(store: Store) -> None:
    ids = dispatched(store, 3, "run-1")
    store.claim_run("run-1", ids, "gpu-a", LEASE)
    expire(store, ids)
    # A worker late with its renewal still holds the jobs nobody took over.
    assert store.renew_lease("run-1", ids, "gpu-a", LEASE) == set(ids)
    assert store.expired_leases() == {}
    renewed = store.job(ids[0])
    assert renewed is not None and renewed.lease_until is not None
    assert renewed.lease_until > datetime.now(UTC)
    # One finished, one cancelled: the renewal no longer covers them.
    assert store.mark_done(ids[0], images(2), "out/grid.png", run_id="run-1")
    assert store.mark_cancelled(ids[1], run_id="run-1")
    assert store.renew_lease("run-1", ids, "gpu-a", LEASE) == {ids[2]}
    assert store.renew_lease("run-1", ids, "gpu-b", LEASE) == set()
    assert store.renew_lease("run-0", ids, "gpu-a", LEASE) == set()


def test_expired_and_leased_runs_are_listed_by_run(store: Store) -> None:
    live = dispatched(store, 2, "run-live")
    dead = dispatched(store, 1, "run-dead")
    unclaimed = dispatched(store, 1, "run-unclaimed")
    store.claim_run("run-live", live, "gpu-a", LEASE)
    store.claim_run("run-dead", dead, "gpu-b", LEASE)
    expire(store, dead)
    assert store.leased_runs() == {"run-live": live}
    assert store.expired_leases() == {"run-dead": dead}
    later = datetime.now(UTC) + timedelta(seconds=2 * LEASE)
    assert store.expired_leases(later) == {"run-dead": dead, "run-live": live}
    assert unclaimed[0] not in {i for ids in store.expired_leases(later).values() for i in ids}


# --------------------------------------------------------------------------- lost runs


def test_a_run_nobody_took_goes_back_with_its_attempt_refunded(store: Store) -> None:
    ids = dispatched(store, 2, "run-1")
    recovery = store.requeue_lost("run-1", ids, MAX_ATTEMPTS, EXHAUSTED, ran=False)
    assert (recovery.requeued, recovery.failed, recovery.cancelled) == (tuple(ids), (), ())
    for job_id in ids:
        job = store.job(job_id)
        assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0
        assert (job.run_id, job.worker, job.lease_until, job.started_at) == (None,) * 4
    # Done once: a second call for the same run finds nothing.
    again = store.requeue_lost("run-1", ids, MAX_ATTEMPTS, EXHAUSTED, ran=False)
    assert (again.requeued, again.failed) == ((), ())


def test_a_lost_run_that_ran_counts_the_attempt_and_fails_the_exhausted(store: Store) -> None:
    ids = dispatched(store, 3, "run-1")
    with store.writing() as session:
        session.execute(sa.update(Job).where(Job.id == ids[1]).values(attempts=MAX_ATTEMPTS))
    store.request_cancel(ids[2])
    store.claim_run("run-1", ids, "gpu-a", LEASE)
    # While the worker's lease lives, the run is not lost.
    held = store.requeue_lost("run-1", ids, MAX_ATTEMPTS, EXHAUSTED, ran=True)
    assert (held.requeued, held.failed, held.cancelled) == ((), (), ())
    assert status(store, ids[0]) is JobStatus.RUNNING
    expire(store, ids)
    assert store.requeue_lost("run-0", ids, MAX_ATTEMPTS, EXHAUSTED, ran=True).requeued == ()
    recovery = store.requeue_lost("run-1", ids, MAX_ATTEMPTS, EXHAUSTED, ran=True)
    assert recovery.requeued == (ids[0],)
    assert recovery.failed == (ids[1],)
    assert recovery.cancelled == (ids[2],)
    requeued, failed, cancelled = (store.job(job_id) for job_id in ids)
    assert requeued is not None and requeued.status is JobStatus.QUEUED
    assert requeued.attempts == 1 and requeued.worker is None and requeued.run_id is None
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == EXHAUSTED and failed.finished_at is not None
    assert failed.run_id is None and failed.lease_until is None
    assert cancelled is not None and cancelled.status is JobStatus.CANCELLED
    assert store.expired_leases() == {} and store.leased_runs() == {}


def test_a_late_result_is_dropped(store: Store) -> None:
    ids = dispatched(store, 1, "run-1")
    job_id = ids[0]
    store.claim_run("run-1", ids, "gpu-a", LEASE)
    expire(store, ids)
    store.requeue_lost("run-1", ids, MAX_ATTEMPTS, EXHAUSTED, ran=True)
    store.mark_running(ids, "run-2")
    # The first worker was only slow: its results arrive after the job ran again.
    assert not store.mark_done(job_id, images(2), "out/late.png", 1.0, run_id="run-1")
    assert not store.mark_failed(job_id, '{"key": "failed_internal"}', "trace", run_id="run-1")
    assert not store.mark_cancelled(job_id, run_id="run-1")
    job = store.job(job_id, with_images=True)
    assert job is not None and job.status is JobStatus.RUNNING and job.run_id == "run-2"
    assert job.grid_path is None and job.images == () and image_rows(store) == 0
    # The current run's result is written, and the run is over.
    assert store.mark_done(job_id, images(2), "out/grid.png", 1.5, run_id="run-2")
    done = store.job(job_id, with_images=True)
    assert done is not None and done.status is JobStatus.DONE and len(done.images) == 2
    assert (done.run_id, done.worker, done.lease_until) == (None, None, None)
    assert not store.mark_done(job_id, images(2), "out/again.png", run_id="run-2")
    assert image_rows(store) == 2


def test_results_without_a_run_are_written_as_before(store: Store) -> None:
    done, failed, cancelled = add_jobs(store, 3)
    store.mark_running([done, failed, cancelled], "run-1")
    assert store.mark_done(done, images(1), None) is True
    assert store.mark_failed(failed, '{"key": "failed_internal"}') is True
    assert store.mark_cancelled(cancelled) is True
    assert store.mark_cancelled(done) is False  # already finished
    for job_id in (done, failed, cancelled):
        job = store.job(job_id)
        assert job is not None and job.run_id is None
    with pytest.raises(NotFoundError):
        store.mark_done(10_000, [], None)
    with pytest.raises(NotFoundError):
        store.mark_cancelled(10_000)
    assert store.mark_done(10_000, [], None, run_id="run-1") is False


def test_requeue_ends_the_run(store: Store) -> None:
    ids = dispatched(store, 1, "run-1")
    store.claim_run("run-1", ids, "gpu-a", LEASE)
    store.requeue(ids, refund_attempt=True)
    job = store.job(ids[0])
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0
    assert (job.run_id, job.worker, job.lease_until) == (None, None, None)
    assert store.renew_lease("run-1", ids, "gpu-a", LEASE) == set()


def test_recover_keeps_the_runs_workers_still_hold(store: Store) -> None:
    live = dispatched(store, 2, "run-live")
    dead = dispatched(store, 1, "run-dead")
    unclaimed = dispatched(store, 1, "run-unclaimed")
    local = add_jobs(store, 1)
    store.mark_running(local)  # run by the bot itself: an ordinary crash
    stopping = dispatched(store, 1, "run-stop")
    store.claim_run("run-live", live, "gpu-a", LEASE)
    store.claim_run("run-dead", dead, "gpu-b", LEASE)
    expire(store, dead)
    store.request_cancel(stopping[0])

    recovery = store.recover(MAX_ATTEMPTS, EXHAUSTED, keep_leased=True)
    assert recovery.leased == tuple(live)
    assert recovery.requeued == (*dead, *unclaimed, *local)
    assert recovery.cancelled == tuple(stopping)
    assert recovery.failed == ()
    assert store.leased_runs() == {"run-live": live}
    job = store.job(dead[0])
    assert job is not None and (job.run_id, job.worker, job.lease_until) == (None,) * 3

    # Without keep_leased (one machine, no workers): every running job is recovered.
    everything = store.recover(MAX_ATTEMPTS, EXHAUSTED)
    assert (everything.requeued, everything.leased) == (tuple(live), ())
    assert store.leased_runs() == {}


# --------------------------------------------------------------------------- PostgreSQL races


def race(*calls: Callable[[], object]) -> list[object]:
    """Run the calls at once on threads (released together by a barrier); their results."""
    barrier = threading.Barrier(len(calls), timeout=10)
    results: list[object] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], object]) -> None:
        try:
            barrier.wait()
            results[index] = call()
        except BaseException as error:  # reported by the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a racing call hung"
    if errors:
        raise errors[0]
    return results


def test_claims_racing_a_requeue_never_both_win_on_postgresql(postgres_store: Store) -> None:
    """Two workers claim the same run while the bot gives it up as lost: in every round
    exactly one of the three takes effect, on the whole run."""
    store = postgres_store
    rounds = 20
    every = add_jobs(store, 3 * rounds)
    wins = {"gpu-a": 0, "gpu-b": 0, "requeue": 0}
    for round_number in range(rounds):
        run_id = f"run-{round_number}"
        ids = every[3 * round_number : 3 * round_number + 3]
        assert store.mark_running(ids, run_id) == set(ids)
        results = race(
            lambda: store.claim_run(run_id, ids, "gpu-a", LEASE),  # noqa: B023
            lambda: store.claim_run(run_id, ids, "gpu-b", LEASE),  # noqa: B023
            lambda: set(
                store.requeue_lost(run_id, ids, MAX_ATTEMPTS, EXHAUSTED, ran=False).requeued  # noqa: B023
            ),
        )
        got = dict(zip(wins, results, strict=True))
        winners = [name for name, taken in got.items() if taken]
        assert len(winners) == 1, (round_number, got)
        winner = winners[0]
        assert got[winner] == set(ids)
        wins[winner] += 1
        with store.reading() as session:
            rows = set(session.execute(sa.select(Job.status, Job.worker).where(Job.id.in_(ids))))
        if winner == "requeue":
            assert rows == {(JobStatus.QUEUED, None)}
        else:
            assert rows == {(JobStatus.RUNNING, winner)}
    assert sum(wins.values()) == rounds


# --------------------------------------------------------------------------- the bot lock


def test_one_bot_per_postgresql_database(postgres_module_url: str, postgres_store_url: str) -> None:
    """A second bot on the same database is refused, naming the holder's backend; one on
    another database of the same server is not. The lock goes with the holder: released
    when it stops, and when its connection dies with it."""
    first = Store(postgres_module_url)
    second = Store(postgres_module_url)
    third = Store(postgres_module_url)
    elsewhere = Store(postgres_store_url)
    try:
        first.hold_bot_lock()
        with pytest.raises(BotAlreadyRunningError, match="already running on easel_remote"):
            second.hold_bot_lock()
        with elsewhere.hold_bot_lock():  # advisory locks are per database
            pass
        first.close()  # the bot stopped
        second.hold_bot_lock()
        with pytest.raises(BotAlreadyRunningError) as refused:
            third.hold_bot_lock()
        holder = re.search(r"database backend pid (\d+)", str(refused.value))
        assert holder is not None
        # The bot holding it dies: its database session ends, and the lock with it.
        with elsewhere.writing() as session:
            terminate = sa.text("SELECT pg_terminate_backend(:pid, 5000)")
            session.execute(terminate, {"pid": int(holder[1])})
        third.hold_bot_lock()
    finally:
        for store in (first, second, third, elsewhere):
            store.close()
