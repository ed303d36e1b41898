"""The durable store: migrations, users, settings, chats and the job lifecycle, on SQLite files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

from bot.store import (
    SETTING_NAMES,
    ControlState,
    Delivery,
    JobKind,
    JobStatus,
    NewImage,
    NewJob,
    NotFoundError,
    Role,
    SettingsRecord,
    Store,
)
from bot.store.models import Base

TABLES = {"users", "user_settings", "jobs", "images", "chats", "queue_state"}
MAX_SEED = 2**32 - 1


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "easel.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{db_path}") as store:
        store.upgrade()
        yield store


@pytest.fixture
def user_id(store: Store) -> int:
    return store.user("discord", "42", "Ada").id


def new_job(user_id: int, **changes: object) -> NewJob:
    job = NewJob(
        user_id=user_id,
        kind=JobKind.IMAGINE,
        request='{"prompt": "a castle on a hill"}',
        batch_key="sd1-512x512-20",
        image_count=4,
        origin_platform="discord",
        origin_chat="chan-1",
        origin_message="msg-1",
    )
    return replace(job, **changes)  # type: ignore[arg-type]


def new_images(count: int, seed: int = 1) -> list[NewImage]:
    return [
        NewImage(
            index=i, path=f"out/{i}.png", seed=seed + i, width=512, height=768, sha256="a" * 64
        )
        for i in range(count)
    ]


def finished(store: Store, user_id: int, **changes: object) -> int:
    job = store.add_job(new_job(user_id, **changes))
    store.mark_running([job.id])
    store.mark_done(job.id, new_images(job.image_count), grid_path="out/grid.png")
    return job.id


# Migrations and connections


def test_upgrade_creates_every_table_and_is_idempotent(db_path: Path) -> None:
    with Store(f"sqlite:///{db_path}") as store:
        assert store.current() is None
        store.upgrade(through_migrations=True)
        assert store.current() == store.head() == "0007"
        user = store.user("telegram", "7")
        store.upgrade()
        assert store.current() == store.head()
        assert store.user_by_id(user.id) == user
    engine = sa.create_engine(f"sqlite:///{db_path}")
    try:
        assert set(sa.inspect(engine).get_table_names()) == {*TABLES, "alembic_version"}
    finally:
        engine.dispose()


@pytest.mark.parametrize("through_migrations", [True, False])
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_models_and_migration_agree(
    request: pytest.FixtureRequest, db_path: Path, database: str, through_migrations: bool
) -> None:
    """Every migration from an empty database, and the one-step creation of an empty one,
    give the models' schema and the control row: on SQLite, and on PostgreSQL (a fresh
    database; skipped without one, see tests/services.py)."""
    if database == "sqlite":
        url = f"sqlite:///{db_path}"
    else:
        url = request.getfixturevalue("postgres_store_url")
    with Store(url) as store:
        assert store.current() is None
        store.upgrade(through_migrations=through_migrations)
        assert store.current() == store.head()
        assert store.control_state() == ControlState()
        store.upgrade()  # at head: nothing to do
        assert store.current() == store.head()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_file_databases_use_wal_and_enforce_foreign_keys(store: Store, db_path: Path) -> None:
    with sqlite3.connect(db_path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with pytest.raises(IntegrityError):
        store.add_job(new_job(user_id=999))


def test_in_memory_database_is_shared_between_sessions() -> None:
    with Store("sqlite://") as store:
        store.upgrade()
        assert store.current() == store.head()
        user = store.user("console", "me")
        assert store.user_by_id(user.id) == user
        assert "sqlite://" in repr(store)


def test_data_survives_reopening(db_path: Path) -> None:
    with Store(f"sqlite:///{db_path}") as store:
        store.upgrade()
        user = store.user("discord", "1", "Ada")
        job_id = finished(store, user.id)
        store.update_settings(user.id, style="anime")
    with Store(f"sqlite:///{db_path}") as reopened:
        assert reopened.current() == reopened.head()
        assert reopened.user("discord", "1") == user
        job = reopened.job(job_id, with_images=True)
        assert job is not None and job.status is JobStatus.DONE and len(job.images) == 4
        assert reopened.settings(user.id).style == "anime"


# Users


def test_user_get_or_create_is_idempotent_and_per_platform(store: Store) -> None:
    first = store.user("discord", "42", "Ada")
    assert store.user("discord", "42") == first
    assert store.user("telegram", "42").id != first.id
    assert store.count_users() == 2
    assert (first.locale, first.role, first.banned) == ("en", Role.USER, False)
    assert first.created_at.tzinfo is not None


def test_user_refreshes_name_and_locale(store: Store) -> None:
    first = store.user("discord", "42", "Ada")
    renamed = store.user("discord", "42", "Ada L.", locale="fr")
    assert (renamed.id, renamed.display_name, renamed.locale) == (first.id, "Ada L.", "fr")
    assert store.user("discord", "42").display_name == "Ada L."


def test_role_ban_and_quota_round_trip(store: Store, user_id: int) -> None:
    assert store.set_role(user_id, Role.VIP).role is Role.VIP
    store.ban(user_id, "spam")
    banned = store.user_by_id(user_id)
    assert banned is not None and (banned.banned, banned.ban_reason) == (True, "spam")
    store.unban(user_id)
    store.set_quota(user_id, max_queued=5, max_running=2, daily_images=100)
    user = store.user_by_id(user_id)
    assert user is not None
    assert (user.banned, user.ban_reason, user.role) == (False, None, Role.VIP)
    assert (user.max_queued, user.max_running, user.daily_images) == (5, 2, 100)
    assert store.user_by_id(999) is None
    with pytest.raises(NotFoundError):
        store.set_role(999, Role.ADMIN)


# Settings and chats


def test_settings_defaults_update_and_clear(store: Store, user_id: int) -> None:
    assert store.settings(user_id) == SettingsRecord(user_id)
    updated = store.update_settings(user_id, style="anime", steps=30, aspect_ratio="3:2")
    assert (updated.style, updated.steps, updated.aspect_ratio, updated.private) == (
        "anime",
        30,
        "3:2",
        False,
    )
    assert updated.updated_at is not None
    store.update_settings(user_id, private=True, sampler="euler_a")
    cleared = store.update_settings(user_id, style=None, private=None)
    assert (cleared.style, cleared.steps, cleared.sampler, cleared.private) == (
        None,
        30,
        "euler_a",
        False,
    )
    assert store.settings(user_id) == cleared
    assert "private" in SETTING_NAMES and "user_id" not in SETTING_NAMES


def test_settings_reject_unknown_fields_and_users(store: Store, user_id: int) -> None:
    with pytest.raises(ValueError, match="colour"):
        store.update_settings(user_id, colour="red")
    with pytest.raises(NotFoundError):
        store.update_settings(999, style="anime")


def test_chat_settings_round_trip(store: Store) -> None:
    default = store.chat("telegram", "-100")
    assert (default.banned_words, default.nsfw_allowed, default.default_preset) == ((), False, None)
    store.update_chat("telegram", "-100", banned_words=["gore", "blood"], nsfw_allowed=True)
    chat = store.update_chat("telegram", "-100", default_preset="photo")
    assert chat.banned_words == ("gore", "blood")
    assert (chat.nsfw_allowed, chat.default_preset) == (True, "photo")
    assert store.chat("telegram", "-100") == chat
    assert store.chat("discord", "-100").banned_words == ()
    assert store.update_chat("telegram", "-100", default_preset=None).default_preset is None


# Jobs


def test_job_lifecycle(store: Store, user_id: int) -> None:
    job = store.add_job(new_job(user_id))
    assert (job.status, job.attempts, job.delivery) == (JobStatus.QUEUED, 0, Delivery.PENDING)
    assert [queued.id for queued in store.queued_jobs()] == [job.id]

    store.mark_running([job.id])
    running = store.job(job.id)
    assert running is not None and running.status is JobStatus.RUNNING
    assert running.attempts == 1 and running.started_at is not None
    assert store.queued_jobs() == []

    store.set_status_message(job.id, "bot-msg-9")
    images = new_images(4)
    store.mark_done(job.id, list(reversed(images)), grid_path="out/grid.png")
    done = store.job(job.id, with_images=True)
    assert done is not None and done.status is JobStatus.DONE
    assert done.finished_at is not None and done.grid_path == "out/grid.png"
    assert done.status_message == "bot-msg-9"
    assert [image.index for image in done.images] == [0, 1, 2, 3]
    assert done.images[2].path == "out/2.png" and done.images[2].job_id == job.id
    assert store.job(job.id) == replace(done, images=())

    assert [pending.id for pending in store.undelivered("discord")] == [job.id]
    assert store.undelivered("discord")[0].images == done.images
    assert store.undelivered("telegram") == []
    store.mark_delivered(job.id)
    assert store.undelivered("discord") == []
    assert store.job(999) is None


def test_failed_jobs_are_delivered_and_cancel_only_unfinished(store: Store, user_id: int) -> None:
    failed = store.add_job(new_job(user_id))
    store.mark_failed(failed.id, '{"code": "oom"}')
    cancelled = store.add_job(new_job(user_id))
    assert store.mark_cancelled(cancelled.id) is True
    assert store.mark_cancelled(failed.id) is False
    undelivered = store.undelivered("discord")
    assert [job.id for job in undelivered] == [failed.id]
    assert undelivered[0].error == '{"code": "oom"}'
    assert undelivered[0].status is JobStatus.FAILED
    with pytest.raises(NotFoundError):
        store.mark_failed(999, "{}")


def test_requeue_keeps_attempts(store: Store, user_id: int) -> None:
    job = store.add_job(new_job(user_id))
    store.mark_running([job.id])
    store.requeue([job.id])
    requeued = store.job(job.id)
    assert requeued is not None
    assert (requeued.status, requeued.attempts, requeued.started_at) == (JobStatus.QUEUED, 1, None)
    store.mark_running([job.id])
    again = store.job(job.id)
    assert again is not None and again.attempts == 2


def test_recover_requeues_or_fails_by_attempts(store: Store, user_id: int) -> None:
    fresh, retried, exhausted, waiting = (store.add_job(new_job(user_id)) for _ in range(4))
    store.mark_running([fresh.id, retried.id, exhausted.id])
    for _ in range(2):
        store.requeue([retried.id, exhausted.id])
        store.mark_running([retried.id, exhausted.id])
    store.requeue([retried.id])

    recovery = store.recover(max_attempts=3, error_for_exhausted='{"code": "crashed"}')

    assert recovery.requeued == (fresh.id,)
    assert recovery.failed == (exhausted.id,)
    back, lost = store.job(fresh.id), store.job(exhausted.id)
    assert back is not None and (back.status, back.started_at) == (JobStatus.QUEUED, None)
    assert lost is not None and lost.status is JobStatus.FAILED
    assert lost.error == '{"code": "crashed"}' and lost.finished_at is not None
    assert store.job(waiting.id) == waiting
    assert [job.id for job in store.queued_jobs()] == [fresh.id, retried.id, waiting.id]


def test_history_pages_newest_first(store: Store, user_id: int) -> None:
    other = store.user("discord", "43").id
    store.add_job(new_job(other))
    ids = [finished(store, user_id, image_count=1) for _ in range(12)]

    first = store.history(user_id, page=1, per_page=5)
    assert (first.page, first.pages, first.total) == (1, 3, 12)
    assert [job.id for job in first.jobs] == ids[::-1][:5]
    assert all(len(job.images) == 1 for job in first.jobs)
    last = store.history(user_id, page=3, per_page=5)
    assert [job.id for job in last.jobs] == ids[1::-1]
    assert store.history(user_id, page=99).page == 3
    assert store.history(user_id, page=0).page == 1
    empty = store.history(store.user("discord", "44").id, page=1)
    assert (empty.jobs, empty.page, empty.pages, empty.total) == ((), 1, 1, 0)


def test_children_of_a_job(store: Store, user_id: int) -> None:
    parent = finished(store, user_id)
    upscale = store.add_job(new_job(user_id, kind=JobKind.UPSCALE, parent_id=parent, image_index=2))
    vary = store.add_job(
        new_job(user_id, kind=JobKind.VARY_STRONG, parent_id=parent, image_index=0)
    )
    children = store.children(parent)
    assert [job.id for job in children] == [upscale.id, vary.id]
    assert (children[0].kind, children[0].image_index) == (JobKind.UPSCALE, 2)
    assert children[1].kind == "vary-strong"


def test_images_since_counts_recent_jobs_that_did_not_fail(store: Store, user_id: int) -> None:
    finished(store, user_id, image_count=4)
    since = datetime.now(UTC)
    finished(store, user_id, image_count=2)
    store.add_job(new_job(user_id, image_count=3))
    store.mark_failed(store.add_job(new_job(user_id, image_count=4)).id, "{}")
    store.mark_cancelled(store.add_job(new_job(user_id, image_count=4)).id)
    store.add_job(new_job(store.user("discord", "43").id, image_count=4))
    assert store.images_since(user_id, since) == 5
    assert store.images_since(user_id, since - timedelta(days=1)) == 9
    assert store.images_since(user_id, datetime.now(UTC) + timedelta(hours=1)) == 0
    with pytest.raises(ValueError, match="naive"):
        store.images_since(user_id, datetime.now())


def test_counts_of_queued_and_running(store: Store, user_id: int) -> None:
    other = store.user("telegram", "9").id
    mine = [store.add_job(new_job(user_id)).id for _ in range(3)]
    store.add_job(new_job(other))
    store.mark_running(mine[:2])
    assert (store.count_queued(), store.count_running()) == (2, 2)
    assert (store.count_queued(user_id), store.count_running(user_id)) == (1, 2)
    assert (store.count_queued(other), store.count_running(other)) == (1, 0)


def test_recent_durations(store: Store, user_id: int) -> None:
    assert store.recent_durations() == []
    one = finished(store, user_id, image_count=1)
    four = finished(store, user_id, image_count=4)
    store.mark_failed(store.add_job(new_job(user_id)).id, "{}")
    durations = store.recent_durations()
    assert [count for _, count in durations] == [4, 1]
    for (seconds, _), job_id in zip(durations, (four, one), strict=True):
        job = store.job(job_id)
        assert job is not None and job.started_at is not None and job.finished_at is not None
        assert seconds == (job.finished_at - job.started_at).total_seconds() >= 0
    assert len(store.recent_durations(limit=1)) == 1


def test_seeds_up_to_two_to_the_32_round_trip(store: Store, user_id: int) -> None:
    job = store.add_job(new_job(user_id, image_count=2))
    store.mark_done(job.id, new_images(2, seed=MAX_SEED - 1), grid_path=None)
    done = store.job(job.id, with_images=True)
    assert done is not None and [image.seed for image in done.images] == [MAX_SEED - 1, MAX_SEED]


def test_missing_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "easel.db"
    with Store(f"sqlite:///{path}") as store:
        store.upgrade()
    assert path.exists()


def test_the_migrated_database_has_its_one_control_row(store: Store) -> None:
    with store.reading() as session:
        rows = session.execute(sa.text("SELECT id, paused, revision FROM queue_state")).all()
    assert [tuple(row) for row in rows] == [(1, 0, 0)]
    store.set_queue_paused(True, "cli:op")
    state = store.control_state()
    assert state.paused and state.revision == 1 and state.changed_by == "cli:op"
