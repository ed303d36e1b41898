"""Races and leftovers around bans, forgetting a user, pruning and the usage report: a job the
bot starts meanwhile is never cancelled or deleted under it, forgetting someone leaves the
files other users' jobs still need and takes their uploads, and a prune keeps what the bot
has yet to deliver."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bot import retention
from bot.cli import app
from bot.store import JobKind, JobStatus, NewImage, NewJob, Store, reports
from bot.store.models import Job
from bot.store.people import UserBusyError, ban_user, forget_user, plan_forget


@dataclass(frozen=True)
class Place:
    store: Store
    outputs: Path


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Place]:
    url = f"sqlite:///{tmp_path}/easel.db"
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(outputs))
    monkeypatch.setenv("EASEL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("EASEL_LANG", "en")
    monkeypatch.setenv("COLUMNS", "200")
    with Store(url) as store:
        store.upgrade()
        yield Place(store, outputs)


def _queued(store: Store, user_id: int, request: dict[str, Any] | None = None) -> int:
    text = json.dumps(request or {"prompt": "a castle"})
    return store.add_job(NewJob(user_id, JobKind.IMAGINE, text, None, 1, "discord", "c")).id


def _done(store: Store, job_id: int, files: list[Path], delivered: bool = True) -> None:
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")
    store.mark_running([job_id])
    images = [NewImage(i, str(path), i, 64, 64, "0" * 64) for i, path in enumerate(files)]
    store.mark_done(job_id, images, None)
    if delivered:
        store.mark_delivered(job_id)


def _status(store: Store, job_id: int) -> JobStatus | None:
    job = store.job(job_id)
    return None if job is None else job.status


def _started_before(
    store: Store, statement: str, job_id: int
) -> Callable[..., None]:  # the listener, to remove
    """Starts `job_id` (as the bot would, from its own connection) just before the first
    statement that begins with `statement` runs: the moment between a read and a write."""
    fired: list[bool] = []

    def start(conn: Any, cursor: Any, sql: str, *_: Any) -> None:
        if fired or not sql.lstrip().upper().startswith(statement):
            return
        fired.append(True)
        cursor.connection.execute("UPDATE jobs SET status = 'running' WHERE id = ?", (job_id,))

    sa.event.listen(store._engine, "before_cursor_execute", start)
    return start


# ---------------------------------------------------------------------------- bans


def test_a_job_started_just_before_a_ban_cancels_stays_running(place: Place) -> None:
    store = place.store
    user = store.user("discord", "1", "Alice")
    starting, waiting = _queued(store, user.id), _queued(store, user.id)
    listener = _started_before(store, "UPDATE JOBS", starting)
    try:
        result = ban_user(store, user.id, "spam")
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", listener)
    assert result.cancelled == (waiting,)
    assert _status(store, starting) is JobStatus.RUNNING
    assert _status(store, waiting) is JobStatus.CANCELLED


# ---------------------------------------------------------------------------- forgetting


def test_a_job_started_just_before_forget_deletes_is_kept_and_forget_refused(
    place: Place,
) -> None:
    store = place.store
    user = store.user("discord", "1", "Alice")
    starting = _queued(store, user.id)
    listener = _started_before(store, "DELETE FROM JOBS", starting)
    try:
        with pytest.raises(UserBusyError) as refused:
            forget_user(store, user.id, place.outputs)
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", listener)
    assert refused.value.running == (starting,)
    # Everything rolled back: the user and their job are there, queued as before.
    assert store.user_by_id(user.id) is not None
    assert _status(store, starting) is JobStatus.QUEUED


def test_forget_reads_the_users_jobs_locked_and_never_updates_from_a_subquery(
    place: Place,
) -> None:
    store = place.store
    user = store.user("discord", "1", "Alice")
    _done(store, _queued(store, user.id), [place.outputs / "day" / "a.png"])
    seen: list[str] = []

    def record(conn: Any, cursor: Any, sql: str, *_: Any) -> None:
        seen.append(" ".join(sql.split()).upper())

    sa.event.listen(store._engine, "before_cursor_execute", record)
    try:
        forget_user(store, user.id, place.outputs)
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", record)
    # MySQL refuses UPDATE jobs ... WHERE parent_id IN (SELECT ... FROM jobs): error 1093.
    assert not any(sql.startswith("UPDATE JOBS") and "SELECT" in sql for sql in seen)
    # SQLite has no FOR UPDATE; the statement asks for it (PostgreSQL locks the rows).
    compiled = str(
        sa.select(Job.id).with_for_update().compile(dialect=sa.dialects.postgresql.dialect())
    )
    assert compiled.endswith("FOR UPDATE")


def test_forget_keeps_files_other_users_jobs_name_and_deletes_own_uploads(
    place: Place,
) -> None:
    store, outputs = place.store, place.outputs
    alice = store.user("discord", "1", "Alice")
    bob = store.user("discord", "2", "Bob")
    day = outputs / "2026-12-01"
    inputs = outputs / "inputs"
    inputs.mkdir()
    own_upload, shared_upload = inputs / "a1.img", inputs / "b2.img"
    for upload in (own_upload, shared_upload):
        upload.write_bytes(b"upload")
    grid_job = _queued(store, alice.id, {"prompt": "fox", "init_image": {"path": str(own_upload)}})
    _done(store, grid_job, [day / "fox-0.png", day / "fox-1.png"])
    second = _queued(store, alice.id, {"prompt": "owl", "init_image": {"path": str(shared_upload)}})
    _done(store, second, [day / "owl-0.png"])
    # Bob pressed U2 on Alice's grid in a shared chat, and used the same upload as she did.
    store.add_job(
        NewJob(
            bob.id,
            JobKind.UPSCALE,
            json.dumps({"image": {"path": str(day / "fox-1.png")}, "scale": 2}),
            None,
            1,
            "discord",
            "c",
            parent_id=grid_job,
            image_index=1,
        )
    )
    _queued(store, bob.id, {"prompt": "cat", "init_image": {"path": str(shared_upload)}})

    dry = CliRunner().invoke(app, ["users", "forget", "discord:1"])
    assert dry.exit_code == 0, dry.output
    assert "3 file(s)" in dry.stdout
    assert "2 file(s) stay: other users' jobs use them." in dry.stdout

    result = CliRunner().invoke(app, ["users", "forget", "discord:1", "--yes"])
    assert result.exit_code == 0, result.output
    assert "3 file(s)" in result.stdout
    assert not (day / "fox-0.png").exists() and not (day / "owl-0.png").exists()
    assert not own_upload.exists()
    assert (day / "fox-1.png").read_bytes() == b"png"
    assert shared_upload.read_bytes() == b"upload"


def test_forget_never_deletes_an_upload_outside_the_inputs_folder(place: Place) -> None:
    store, outputs = place.store, place.outputs
    alice = store.user("discord", "1", "Alice")
    elsewhere = outputs.parent / "mine.png"
    elsewhere.write_bytes(b"keep")
    _queued(store, alice.id, {"prompt": "fox", "init_image": {"path": str(elsewhere)}})
    plan = plan_forget(store, alice.id, outputs)
    assert plan.files == ()
    forget_user(store, alice.id, outputs)
    assert elsewhere.exists()


# ---------------------------------------------------------------------------- prune


def _aged(store: Store, job_id: int, days: int) -> None:
    with store.writing() as session:
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id)
            .values(created_at=datetime.now(UTC) - timedelta(days=days))
        )


def test_prune_keeps_an_old_result_not_yet_delivered(place: Place) -> None:
    store, outputs = place.store, place.outputs
    user = store.user("discord", "1", "Alice")
    delivered, pending = _queued(store, user.id), _queued(store, user.id)
    _done(store, delivered, [outputs / "day" / "sent.png"])
    _done(store, pending, [outputs / "day" / "unsent.png"], delivered=False)
    for job_id in (delivered, pending):
        _aged(store, job_id, 40)
    result = CliRunner().invoke(app, ["prune", "--older-than", "30d", "--yes", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"]["jobs"] == 1
    assert store.job(delivered) is None
    assert _status(store, pending) is JobStatus.DONE
    assert (outputs / "day" / "unsent.png").exists()
    assert not (outputs / "day" / "sent.png").exists()


def test_an_upload_reused_between_plan_and_apply_stays(place: Place) -> None:
    store, outputs = place.store, place.outputs
    upload = outputs / "inputs" / "c3.img"
    upload.parent.mkdir()
    upload.write_bytes(b"upload")
    long_ago = (datetime.now(UTC) - timedelta(days=90)).timestamp()
    os.utime(upload, (long_ago, long_ago))
    cutoff = datetime.now(UTC) - timedelta(days=30)
    plan = retention.plan_prune(store, outputs, cutoff)
    assert plan.inputs == (str(upload),)
    os.utime(upload)  # used again: the service touches a stored upload it reuses
    result = retention.apply_prune(store, plan)
    assert result.files == 0
    assert upload.read_bytes() == b"upload"


# ---------------------------------------------------------------------------- reports


def test_the_usage_report_leaves_out_a_user_forgotten_while_it_reads(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = place.store
    alice = store.user("discord", "1", "Alice")
    bob = store.user("discord", "2", "Bob")
    _done(store, _queued(store, alice.id), [])
    _done(store, _queued(store, bob.id), [])
    read_rows = reports._rows

    def rows_then_forget(*args: Any) -> Any:
        rows = read_rows(*args)
        forget_user(store, alice.id, place.outputs)
        return rows

    monkeypatch.setattr(reports, "_rows", rows_then_forget)
    report = reports.usage_report(store, 7)
    assert [user.platform_user_id for user in report.users] == ["2"]


# ---------------------------------------------------------------------------- sizes


def test_every_command_prints_sizes_one_way() -> None:
    from bot.cli.output import human_bytes

    assert [human_bytes(size) for size in (0, 1023, 1536, 5 * 1024**2, 1024**4)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
        "1.0 TiB",
    ]
