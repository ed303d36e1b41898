"""Keeping and letting go: `easel db backup` (a consistent copy while the bot writes) and
`easel prune` (old finished jobs, their files and forgotten uploads; a dry run unless --yes)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bot.cli import app
from bot.cli.retention import parse_age
from bot.store import JobKind, JobStatus, NewImage, NewJob, Store, UserRecord
from bot.store.models import Image, Job

FILE_BYTES = 100


@dataclass(frozen=True)
class Place:
    store: Store
    database: Path
    outputs: Path


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Place]:
    database = tmp_path / "easel.db"
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(outputs))
    monkeypatch.setenv("EASEL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("EASEL_LANG", "en")
    with Store(f"sqlite:///{database}") as store:
        store.upgrade()
        yield Place(store, database, outputs)


# ----------------------------------------------------------------------------------- backup


def _finished_job(store: Store, user: UserRecord, number: int) -> int:
    job = store.add_job(NewJob(user.id, JobKind.IMAGINE, "{}", None, 2, "discord", "chat"))
    store.mark_running([job.id])
    images = [NewImage(i, f"/x/{number}-{i}.png", i, 64, 64, "0" * 64) for i in range(2)]
    store.mark_done(job.id, images, f"/x/{number}-grid.png", gpu_seconds=0.1)
    return job.id


def _done_ids(store: Store) -> set[int]:
    with store.reading() as session:
        return set(session.scalars(sa.select(Job.id).where(Job.status == JobStatus.DONE)))


def test_a_backup_while_jobs_are_written_is_whole_and_consistent(place: Place) -> None:
    user = place.store.user("discord", "1", "Writer")
    stop = threading.Event()
    written = threading.Event()
    count = [0]
    failures: list[BaseException] = []

    def keep_writing() -> None:
        try:
            while not stop.is_set():
                _finished_job(place.store, user, count[0])
                count[0] += 1
                if count[0] >= 30:
                    written.set()
        except BaseException as error:  # reported by the test, not lost in the thread
            failures.append(error)
            written.set()

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        assert written.wait(60), "the writer did not get going"
        finished_before = _done_ids(place.store)
        copy = place.database.parent / "backups" / "copy.db"
        copy.parent.mkdir()
        result = CliRunner().invoke(app, ["db", "backup", str(copy)])
        written_during = count[0]
    finally:
        stop.set()
        writer.join(30)
    assert not failures, failures
    assert not writer.is_alive()
    assert result.exit_code == 0, result.output
    assert written_during >= 30

    assert os.listdir(copy.parent) == ["copy.db"]  # no temporary file left, no WAL
    with sqlite3.connect(copy) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        jobs = connection.execute("SELECT id, status, image_count, grid_path FROM jobs").fetchall()
        images = dict(
            connection.execute("SELECT job_id, count(*) FROM images GROUP BY job_id").fetchall()
        )
    assert revision == (place.store.head(),)
    ids = {job_id for job_id, *_ in jobs}
    assert finished_before <= ids
    for job_id, status, image_count, grid in jobs:
        if status == "done":  # a finished job has all its images and its grid
            assert images.get(job_id) == image_count and grid is not None
        else:  # a job caught between steps has none
            assert job_id not in images
    size = copy.stat().st_size
    assert f"Backed up to {copy}" in result.stdout
    assert f"({size} bytes), {len(jobs)} jobs, revision {place.store.head()}" in result.stdout


def test_a_backup_never_overwrites_without_force(place: Place) -> None:
    user = place.store.user("discord", "1", "Someone")
    _finished_job(place.store, user, 1)
    target = place.database.parent / "mine.db"
    target.write_text("something precious")

    refused = CliRunner().invoke(app, ["db", "backup", str(target)])
    assert refused.exit_code == 1
    assert "already exists" in refused.output and "--force" in refused.output
    assert target.read_text() == "something precious"

    forced = CliRunner().invoke(app, ["db", "backup", str(target), "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    document = json.loads(forced.stdout)
    assert document == {
        "path": str(target),
        "bytes": target.stat().st_size,
        "jobs": 1,
        "revision": place.store.head(),
    }
    with sqlite3.connect(target) as connection:
        assert connection.execute("SELECT count(*) FROM images").fetchone() == (2,)
    assert sorted(path.name for path in target.parent.iterdir() if "mine" in path.name) == [
        "mine.db"
    ]


def test_a_backup_refuses_the_database_itself_and_a_missing_folder(place: Place) -> None:
    itself = CliRunner().invoke(app, ["db", "backup", str(place.database), "--force"])
    assert itself.exit_code == 1
    assert "the database itself" in itself.output
    nowhere = place.database.parent / "no" / "such" / "copy.db"
    missing = CliRunner().invoke(app, ["db", "backup", str(nowhere)])
    assert missing.exit_code == 1
    assert "does not exist" in missing.output
    assert not nowhere.parent.exists()


def test_a_postgresql_database_is_sent_to_pg_dump(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://easel:secret@db.example/easel")
    result = CliRunner().invoke(app, ["db", "backup", str(place.database.parent / "copy.db")])
    assert result.exit_code == 1
    assert "PostgreSQL" in result.stderr and "pg_dump" in result.stderr
    assert "secret" not in result.output
    assert not (place.database.parent / "copy.db").exists()


# ------------------------------------------------------------------------------------ prune


@dataclass(frozen=True)
class History:
    old_done: int
    old_failed: int
    old_cancelled: int
    old_running: int
    new_done: int
    child: int  # newer, queued: an upscale of old_done's first image
    old_files: tuple[Path, ...]  # what a prune deletes: old_done's images and grid
    kept_files: tuple[Path, ...]  # what it must leave
    old_input: Path  # an upload only old jobs used
    outside: Path  # a recorded file outside the outputs folder


def _write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * FILE_BYTES)
    return path


def _aged(store: Store, job_id: int, created: datetime) -> None:
    with store.writing() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(created_at=created))


def _request(path: Path | None = None, upscale: bool = False) -> str:
    if upscale:
        assert path is not None
        return json.dumps({"image": {"path": str(path)}, "scale": 2})
    image = {"path": str(path)} if path is not None else None
    return json.dumps({"prompt": "a cat", "init_image": image})


def _history(place: Place) -> History:
    store, outputs = place.store, place.outputs
    user = store.user("discord", "1", "Someone")
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=40), now - timedelta(days=1)
    old_day, new_day = outputs / old.date().isoformat(), outputs / recent.date().isoformat()
    old_input = _write(outputs / "inputs" / "a1b2.img")
    shared_input = _write(outputs / "inputs" / "c3d4.img")
    for upload in (old_input, shared_input):
        os.utime(upload, (old.timestamp(), old.timestamp()))

    def job(request: str, kind: JobKind = JobKind.IMAGINE, parent: int | None = None) -> int:
        new = NewJob(user.id, kind, request, None, 2, "discord", "chat", parent_id=parent)
        return store.add_job(new).id

    def done(job_id: int, paths: list[Path], grid: Path | None) -> None:
        store.mark_running([job_id])
        made = [NewImage(i, str(p), i, 64, 64, "0" * 64) for i, p in enumerate(paths)]
        store.mark_done(job_id, made, str(grid) if grid else None)
        store.mark_delivered(job_id)

    old_done = job(_request(old_input))
    old_images = [_write(old_day / f"0000{i}-j{old_done}-a-cat.png") for i in range(2)]
    old_grid = _write(old_day / f"00002-j{old_done}-grid-a-cat.png")
    done(old_done, old_images, old_grid)
    old_failed = job(_request(shared_input))
    store.mark_running([old_failed])
    store.mark_failed(old_failed, '{"key": "failed_internal", "args": {}}')
    store.mark_delivered(old_failed)
    old_cancelled = job(_request())
    assert store.mark_cancelled(old_cancelled)
    outside = _write(place.database.parent / "elsewhere" / "kept.png")
    old_elsewhere = job(_request())
    done(old_elsewhere, [outside], None)
    old_running = job(_request())
    store.mark_running([old_running])
    running_file = _write(old_day / f"00003-j{old_running}-a-cat.png")
    for job_id in (old_done, old_failed, old_cancelled, old_elsewhere, old_running):
        _aged(store, job_id, old)

    new_done = job(_request(shared_input))
    new_images = [_write(new_day / f"0000{i}-j{new_done}-a-dog.png") for i in range(2)]
    done(new_done, new_images, None)
    _aged(store, new_done, recent)
    child = job(_request(old_images[1], upscale=True), JobKind.UPSCALE, parent=old_done)
    return History(
        old_done=old_done,
        old_failed=old_failed,
        old_cancelled=old_cancelled,
        old_running=old_running,
        new_done=new_done,
        child=child,
        old_files=(old_images[0], old_grid),
        kept_files=(old_images[1], running_file, *new_images, shared_input, outside),
        old_input=old_input,
        outside=outside,
    )


def _job_ids(store: Store) -> set[int]:
    with store.reading() as session:
        return set(session.scalars(sa.select(Job.id)))


def test_prune_without_yes_only_says_what_it_would_delete(place: Place) -> None:
    history = _history(place)
    before = _job_ids(place.store)
    result = CliRunner().invoke(app, ["prune", "--older-than", "30d"])
    assert result.exit_code == 0, result.output
    # old_done, old_failed, old_cancelled and the one whose file lies elsewhere; 2 old files
    # and the old upload.
    assert "Dry run: would delete 4 finished jobs" in result.stdout
    assert f"3 files ({3 * FILE_BYTES} B)" in result.stdout
    assert "Nothing was changed; add --yes to delete." in result.stdout
    assert "1 files stay: newer or unfinished jobs use them." in result.stdout
    assert "1 recorded files lie outside the outputs folder" in result.stdout
    assert _job_ids(place.store) == before
    assert all(path.exists() for path in (*history.old_files, history.old_input))


def test_prune_with_yes_deletes_old_finished_jobs_and_their_files_only(place: Place) -> None:
    history = _history(place)
    result = CliRunner().invoke(app, ["prune", "--older-than", "30d", "--yes"])
    assert result.exit_code == 0, result.output
    assert "Deleted 4 finished jobs" in result.stdout
    assert f"3 files ({3 * FILE_BYTES} B)" in result.stdout

    remaining = _job_ids(place.store)
    assert remaining == {history.old_running, history.new_done, history.child}
    with place.store.reading() as session:
        orphans = session.scalar(
            sa.select(sa.func.count()).select_from(Image).where(Image.job_id.not_in(remaining))
        )
    assert orphans == 0  # the images' rows went with their jobs
    child = place.store.job(history.child)
    assert child is not None and child.parent_id is None and child.status is JobStatus.QUEUED
    assert not any(path.exists() for path in (*history.old_files, history.old_input))
    assert all(path.exists() for path in history.kept_files)

    again = CliRunner().invoke(app, ["prune", "--older-than", "30d", "--json"])
    assert json.loads(again.stdout)["jobs"] == 0


def test_prune_removes_a_day_folder_it_empties(place: Place) -> None:
    user = place.store.user("discord", "1", "Someone")
    old = datetime.now(UTC) - timedelta(days=3)
    folder = place.outputs / old.date().isoformat()
    path = _write(folder / "00000-j1-a-cat.png")
    job = place.store.add_job(NewJob(user.id, JobKind.IMAGINE, "{}", None, 1, "discord", "c"))
    place.store.mark_running([job.id])
    place.store.mark_done(job.id, [NewImage(0, str(path), 0, 64, 64, "0" * 64)], None)
    place.store.mark_delivered(job.id)
    _aged(place.store, job.id, old)
    result = CliRunner().invoke(app, ["prune", "--older-than", "2d", "--yes"])
    assert result.exit_code == 0, result.output
    assert not folder.exists()
    assert place.outputs.is_dir()


def test_prune_json_dry_run_and_for_real(place: Place) -> None:
    history = _history(place)
    dry = CliRunner().invoke(app, ["prune", "--older-than", "4w", "--json"])
    assert dry.exit_code == 0, dry.output
    document = json.loads(dry.stdout)
    assert document["dry_run"] is True
    assert (document["jobs"], document["files"], document["bytes"]) == (4, 3, 3 * FILE_BYTES)
    assert (document["files_in_use"], document["files_outside_outputs"]) == (1, 1)
    assert "deleted" not in document
    assert history.old_input.exists()

    real = CliRunner().invoke(app, ["prune", "--older-than", "4w", "--yes", "--json"])
    assert real.exit_code == 0, real.output
    document = json.loads(real.stdout)
    assert document["dry_run"] is False
    assert document["deleted"] == {"jobs": 4, "files": 3, "bytes": 3 * FILE_BYTES}
    assert document["problems"] == [] and document["jobs_kept"] == []
    assert not history.old_input.exists()


def test_an_age_newer_than_every_job_deletes_nothing(place: Place) -> None:
    history = _history(place)
    before = _job_ids(place.store)
    result = CliRunner().invoke(app, ["prune", "--older-than", "60d", "--yes", "--json"])
    assert json.loads(result.stdout)["deleted"]["jobs"] == 0
    assert _job_ids(place.store) == before
    assert all(path.exists() for path in (*history.old_files, *history.kept_files))


@pytest.mark.parametrize("age", ["30x", "thirty days", "0d", "-3d", "30", "99999w"])
def test_a_bad_age_is_refused_and_changes_nothing(place: Place, age: str) -> None:
    history = _history(place)
    result = CliRunner().invoke(app, ["prune", "--older-than", age, "--yes"])
    assert result.exit_code == 2
    assert "is not an age" in result.output and "12h, 30d, 2w" in result.output
    assert all(path.exists() for path in history.old_files)


def test_ages_in_minutes_hours_days_and_weeks() -> None:
    # m is minutes, as in --since and ban lengths: one reading everywhere.
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age(" 2W ") == timedelta(weeks=2)


def test_an_upload_used_again_is_young_again_and_stays(place: Place) -> None:
    from types import SimpleNamespace

    from bot.core.service import JobService

    service = SimpleNamespace(config=SimpleNamespace(outputs_dir=place.outputs))
    data = b"an uploaded image's bytes"
    stored = Path(JobService._store_input(service, data).path or "")  # type: ignore[arg-type]
    long_ago = (datetime.now(UTC) - timedelta(days=90)).timestamp()
    os.utime(stored, (long_ago, long_ago))
    forgotten = CliRunner().invoke(app, ["prune", "--older-than", "30d", "--json"])
    assert json.loads(forgotten.stdout)["files"] == 1

    assert JobService._store_input(service, data).path == str(stored)  # type: ignore[arg-type]
    used = CliRunner().invoke(app, ["prune", "--older-than", "30d", "--yes", "--json"])
    assert json.loads(used.stdout)["deleted"]["files"] == 0
    assert stored.read_bytes() == data


def test_refusals_speak_korean_in_a_korean_terminal(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_LANG", "ko")
    target = place.database.parent / "taken.db"
    target.write_text("keep me")
    taken = CliRunner().invoke(app, ["db", "backup", str(target)])
    assert taken.exit_code == 1
    assert "이미 있습니다" in taken.stderr and "--force" in taken.stderr
    assert target.read_text() == "keep me"
    bad_age = CliRunner().invoke(app, ["prune", "--older-than", "30x"])
    assert bad_age.exit_code == 2
    assert "기간이 아닙니다" in bad_age.output
    dry = CliRunner().invoke(app, ["prune", "--older-than", "30d"])
    assert "미리 보기" in dry.stdout
