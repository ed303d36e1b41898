"""Faults under the database: a second bot, a full disk, read-only and corrupted files, a
migration killed halfway, and the database file deleted or replaced while the bot runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.store import (
    BotAlreadyRunningError,
    DatabaseReplacedError,
    JobKind,
    JobStatus,
    NewImage,
    NewJob,
    Store,
    StoreError,
)
from tests.test_store import db_path, store

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"users", "user_settings", "jobs", "images", "chats"}
SUBPROCESS_TIMEOUT = 60
__all__ = ["db_path", "store"]  # the store tests' fixtures


def new_job(user_id: int, request: str = '{"prompt": "a castle"}') -> NewJob:
    return NewJob(
        user_id=user_id,
        kind=JobKind.IMAGINE,
        request=request,
        batch_key="k",
        image_count=1,
        origin_platform="console",
        origin_chat="local",
    )


def tables(db_path: Path) -> set[str]:
    engine = sa.create_engine(f"sqlite:///{db_path}")
    try:
        with engine.connect() as connection:
            return set(sa.inspect(connection).get_table_names())
    finally:
        engine.dispose()


def assert_plain(error: BaseException) -> None:
    text = str(error)
    assert "Background on this error" not in text
    assert "sqlalche.me" not in text
    assert "\n" not in text


# --------------------------------------------------------------------------- one bot per database

HOLDER = textwrap.dedent(
    """
    import sys
    from bot.store import Store
    store = Store(sys.argv[1])
    store.hold_bot_lock()
    store.upgrade()
    print("held", flush=True)
    sys.stdin.readline()
    """
)
CONTENDER = textwrap.dedent(
    """
    import sys
    from bot.store import BotAlreadyRunningError, Store
    store = Store(sys.argv[1])
    try:
        store.hold_bot_lock()
    except BotAlreadyRunningError as error:
        print(error, flush=True)
        sys.exit(3)
    print("got it", flush=True)
    """
)


def python(code: str, *args: str, **options: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, text=True, cwd=ROOT, **options
    )


def contend(url: str) -> tuple[int, str]:
    process = python(CONTENDER, url, stdout=subprocess.PIPE)
    out, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    return process.returncode, out.strip()


def test_a_second_bot_on_the_same_database_is_refused_with_the_first_ones_pid(
    db_path: Path,
) -> None:
    url = f"sqlite:///{db_path}"
    holder = python(HOLDER, url, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        code, message = contend(url)
        assert code == 3
        assert message == (
            f"Another Easel bot is already running on easel.db (pid {holder.pid}); "
            "stop it first or set DATABASE_URL"
        )
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock, no stale lock file blocks a restart
        holder.wait(timeout=SUBPROCESS_TIMEOUT)
    assert contend(url) == (0, "got it")


def test_the_lock_is_released_at_close_and_not_needed_for_plain_use(db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    with Store(url) as first:
        first.hold_bot_lock()
        first.upgrade()
        with Store(url) as reader:  # `easel db current` and the like need no lock
            assert reader.count_queued() == 0
        with Store(url) as second, pytest.raises(BotAlreadyRunningError, match="pid"):
            second.hold_bot_lock()
    with Store(url) as third:
        assert third.hold_bot_lock().held


# --------------------------------------------------------------------------- full disk


def test_a_full_disk_is_a_plain_error_that_keeps_the_queue_and_clears(store: Store) -> None:
    user = store.user("console", "ada").id
    kept = [store.add_job(new_job(user)).id for _ in range(3)]
    store.mark_running([kept[0]])
    engine: sa.Engine = store._engine  # test hook: cap the file at its current size
    with engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()

    def cap(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    sa.event.listen(engine, "connect", cap)
    engine.dispose()
    big = "x" * 200_000
    with pytest.raises(StoreError, match="the database disk is full") as caught:
        store.add_job(new_job(user, request=big))
    assert_plain(caught.value)
    images = [NewImage(0, "/o/1.png", 1, 64, 64, "0" * 64)]
    with pytest.raises(StoreError, match="disk is full"):
        store.mark_done(kept[0], images, "/o/" + "g" * 1000 + big)

    assert [job.id for job in store.queued_jobs()] == kept[1:]  # the queue kept what it had
    running = store.job(kept[0])
    assert running is not None and running.status is JobStatus.RUNNING

    sa.event.remove(engine, "connect", cap)
    engine.dispose()  # the disk has room again
    store.mark_done(kept[0], images, None)
    done = store.job(kept[0])
    assert done is not None and done.status is JobStatus.DONE
    assert store.add_job(new_job(user, request=big)).id > kept[-1]


# --------------------------------------------------------------------------- read-only, corrupted


def test_a_read_only_database_file_is_refused_before_sqlite_maps_it(
    store: Store, db_path: Path
) -> None:
    store.close()
    db_path.chmod(0o444)
    try:
        with pytest.raises(StoreError) as caught:
            Store(f"sqlite:///{db_path}")
        assert str(caught.value).startswith(f"the database file {db_path} is read-only")
        assert_plain(caught.value)
    finally:
        db_path.chmod(0o644)
    with Store(f"sqlite:///{db_path}") as reopened:
        assert reopened.current() == reopened.head()


def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreError, match=r"folder .* of the database is read-only"):
            Store(f"sqlite:///{folder / 'easel.db'}")
    finally:
        folder.chmod(0o755)


def test_a_file_that_is_not_a_database_is_refused_plainly(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is a text file, not a database\n" * 50)
    with pytest.raises(StoreError) as caught:
        Store(f"sqlite:///{db_path}")
    assert str(caught.value) == (
        "easel.db is not a valid database (corrupted?): restore a backup or move it away"
    )


def test_a_corrupted_database_body_is_a_plain_error(store: Store, db_path: Path) -> None:
    store.user("console", "ada")
    store.close()
    data = bytearray(db_path.read_bytes())
    data[100:] = b"\xa5" * (len(data) - 100)  # keep the header, wreck every page
    db_path.write_bytes(bytes(data))
    for sidecar in ("-wal", "-shm"):
        db_path.with_name(db_path.name + sidecar).unlink(missing_ok=True)
    with Store(f"sqlite:///{db_path}") as broken, pytest.raises(StoreError) as caught:
        broken.upgrade()
    assert_plain(caught.value)
    assert "easel.db is not a valid database (corrupted?)" in str(caught.value)


# --------------------------------------------------------------------------- migrations


def test_a_migration_that_fails_halfway_leaves_no_table(db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    with Store(url) as store:

        def fail_at_images(connection: Any, cursor: Any, statement: str, *_: object) -> None:
            if statement.lstrip().upper().startswith("CREATE TABLE IMAGES"):
                raise RuntimeError("injected failure")

        sa.event.listen(store._engine, "before_cursor_execute", fail_at_images)
        with pytest.raises(RuntimeError, match="injected"):
            store.upgrade()
    assert tables(db_path) == set()
    with Store(url) as store:
        store.upgrade()
        assert store.current() == store.head()
    assert tables(db_path) >= TABLES


KILLED_MIGRATION = textwrap.dedent(
    """
    import os, signal, sys
    import sqlalchemy as sa
    from bot.store import Store
    store = Store(sys.argv[1])
    def die(connection, cursor, statement, *args):
        if statement.lstrip().upper().startswith("CREATE TABLE IMAGES"):
            os.kill(os.getpid(), signal.SIGKILL)
    sa.event.listen(store._engine, "before_cursor_execute", die)
    store.upgrade()
    """
)


def test_a_migration_killed_halfway_leaves_nothing_and_the_next_start_migrates(
    db_path: Path,
) -> None:
    url = f"sqlite:///{db_path}"
    killed = python(KILLED_MIGRATION, url)
    assert killed.wait(timeout=SUBPROCESS_TIMEOUT) == -signal.SIGKILL
    assert tables(db_path) == set()
    with Store(url) as store:
        store.upgrade()
        assert store.current() == store.head()
        assert store.user("console", "ada").id == 1


def test_tables_without_a_version_row_say_what_to_do(db_path: Path) -> None:
    from bot.store.models import Base

    db_path.parent.mkdir(parents=True)
    engine = sa.create_engine(f"sqlite:///{db_path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    with Store(f"sqlite:///{db_path}") as store, pytest.raises(StoreError) as caught:
        store.upgrade()
    assert_plain(caught.value)
    assert "no migration version" in str(caught.value)
    assert "Move it away" in str(caught.value)


# --------------------------------------------------------------------------- deleted or replaced


def test_the_database_deleted_while_running_stops_the_store(store: Store, db_path: Path) -> None:
    user = store.user("console", "ada").id
    store.add_job(new_job(user))
    for path in db_path.parent.glob("easel.db*"):
        path.unlink()
    with pytest.raises(DatabaseReplacedError) as caught:
        store.add_job(new_job(user))
    assert str(caught.value).startswith("easel.db was deleted or replaced while the bot ran")
    assert_plain(caught.value)


def test_the_database_replaced_while_running_stops_the_store(
    store: Store, db_path: Path, tmp_path: Path
) -> None:
    user = store.user("console", "ada").id
    store.add_job(new_job(user))
    other = tmp_path / "other.db"
    with Store(f"sqlite:///{other}") as fresh:
        fresh.upgrade()
    shutil.copy(other, tmp_path / "copy.db")
    os.replace(tmp_path / "copy.db", db_path)
    with pytest.raises(DatabaseReplacedError, match="deleted or replaced"):
        store.count_queued()


def test_open_store_can_claim_the_database_before_migrating(db_path: Path) -> None:
    from bot.runtime import open_store
    from bot.settings import Settings

    settings = Settings(database_url=f"sqlite:///{db_path}")
    first = open_store(settings, hold_bot_lock=True)
    try:
        with pytest.raises(BotAlreadyRunningError, match=f"pid {os.getpid()}"):
            open_store(settings, hold_bot_lock=True)
    finally:
        first.close()
    open_store(settings, hold_bot_lock=True).close()


def test_open_store_for_the_bot_removes_what_a_crash_left(db_path: Path, tmp_path: Path) -> None:
    from bot.runtime import open_store
    from bot.settings import Settings

    outputs = tmp_path / "outputs"
    leftover = outputs / "2026-12-02" / ".00001-j1-a-fox.png.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"\x89PNG half")
    settings = Settings(database_url=f"sqlite:///{db_path}", outputs_dir=outputs)

    open_store(settings).close()  # tools that only read the database leave files alone
    assert leftover.exists()
    open_store(settings, hold_bot_lock=True).close()
    assert not leftover.exists()
