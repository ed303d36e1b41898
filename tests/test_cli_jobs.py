"""`easel jobs`, `easel history export` and `easel queue` on a temporary database: what they
print (tables for people, --json for scripts) and what they change in the rows."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner, Result

from bot.cli import app
from bot.cli.selectors import parse_since
from bot.core.events import message_to_json
from bot.core.messages import Key, Message
from bot.store import JobKind, JobRecord, JobStatus, NewImage, NewJob, Role, Store, StoreError
from bot.store.models import Job
from pipeline.request import GenerationRequest

pytestmark = pytest.mark.heavy  # started first: see conftest.py

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    url = f"sqlite:///{tmp_path}/easel.db"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("EASEL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("EASEL_LANG", "en")
    monkeypatch.setenv("COLUMNS", "250")  # tables wide enough that no value folds
    with Store(url) as opened:
        opened.upgrade()
        yield opened


def easel(*args: str) -> Result:
    return runner.invoke(app, list(args))


def json_of(result: Result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@dataclass
class Jobs:
    """A small history: two users, one job in each status."""

    alice: int
    bob: int
    done: JobRecord
    failed: JobRecord
    cancelled: JobRecord
    running: JobRecord
    queued: JobRecord


def new_job(store: Store, user_id: int, prompt: str, **extra: object) -> JobRecord:
    request = GenerationRequest(prompt, negative_prompt="blurry", seeds=(7, 8))
    return store.add_job(
        NewJob(
            user_id=user_id,
            kind=JobKind.IMAGINE,
            request=request.to_json(),
            batch_key="k1",
            image_count=2,
            origin_platform="discord",
            origin_chat="chan-9",
            origin_message="msg-3",
            **extra,  # type: ignore[arg-type]
        )
    )


@pytest.fixture
def jobs(store: Store, tmp_path: Path) -> Jobs:
    alice = store.user("discord", "1001", "Alice").id
    bob = store.user("telegram", "2002", "Bob").id
    done = new_job(store, alice, "a red lighthouse")
    store.mark_running([done.id])
    images = [
        NewImage(index, str(tmp_path / f"img-{index}.png"), seed, 64, 64, "0" * 64)
        for index, seed in enumerate((7, 8))
    ]
    store.mark_done(done.id, images, str(tmp_path / "grid.png"), 1.5)
    failed = new_job(store, bob, "a green forest", cost=2.5)
    store.mark_running([failed.id])
    error = message_to_json(Message(Key.FAILED_INTERNAL, {"reference": "ref-42"}))
    store.mark_failed(failed.id, error, "Traceback (most recent call last):\nBoom: it broke")
    cancelled = new_job(store, alice, "a blue sea", parent_id=done.id, image_index=1)
    store.mark_cancelled(cancelled.id)
    running = new_job(store, bob, "a yellow field")
    store.mark_running([running.id])
    queued = new_job(store, alice, "a purple sky")
    return Jobs(
        alice,
        bob,
        *(store.job(job.id) for job in (done, failed, cancelled, running, queued)),  # type: ignore[arg-type]
    )


def age(store: Store, job_id: int, days: float) -> None:
    """Make a job look older than it is (the store stamps jobs with the time they are made)."""
    with store.writing() as session:
        earlier = datetime.now(UTC) - timedelta(days=days)
        session.execute(sa.update(Job).where(Job.id == job_id).values(created_at=earlier))


# --------------------------------------------------------------------------- --since, --user


def test_since_takes_spans_and_iso_dates() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2W", now) == now - timedelta(weeks=2)
    assert parse_since("2026-11-30", now) == datetime(2026, 11, 30, tzinfo=UTC)
    assert parse_since("2026-11-30T09:00+09:00", now) == datetime(2026, 11, 30, tzinfo=UTC)
    for bad in ("yesterday", "7", "7y", "-3d", "2026-13-01", ""):
        with pytest.raises(typer.BadParameter, match="is not a time"):
            parse_since(bad, now)


def test_bad_since_or_user_is_one_clear_line_and_exit_2(store: Store, jobs: Jobs) -> None:
    bad_since = easel("jobs", "list", "--since", "last tuesday")
    assert bad_since.exit_code == 2
    assert "'last tuesday' is not a time: give 30m, 12h, 7d, 2w" in bad_since.output
    for value, said in (
        ("alice", "'alice' is not a user"),
        ("discord:", "'discord:' is not a user"),
        ("999", "no user 999 in the database"),
        ("discord:555", "no user discord:555 in the database"),
    ):
        result = easel("jobs", "list", "--user", value)
        assert result.exit_code == 2, value
        assert said in result.output
        assert "Traceback" not in result.output


# --------------------------------------------------------------------------- easel jobs list


def test_jobs_list_table_shows_each_job_newest_first(store: Store, jobs: Jobs) -> None:
    result = easel("jobs", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = [line for line in lines if "#" in line]
    ids = [int(line.split("#")[1].split()[0]) for line in rows]
    assert ids == [5, 4, 3, 2, 1]
    first = rows[0]
    assert "discord:1001 (Alice)" in first and "queued" in first and "a purple sky" in first
    assert "telegram:2002 (Bob)" in rows[3] and "failed" in rows[3]


def test_jobs_list_json_and_its_filters(store: Store, jobs: Jobs) -> None:
    everything = json_of(easel("jobs", "list", "--json"))
    assert isinstance(everything, list)
    assert [job["id"] for job in everything] == [5, 4, 3, 2, 1]
    done = everything[-1]
    assert done["status"] == "done" and done["user"] == "discord:1001 (Alice)"
    assert done["prompt"] == "a red lighthouse" and done["images"] == 2
    assert done["run_seconds"] is not None and done["wait_seconds"] is not None
    assert datetime.fromisoformat(done["created_at"]).tzinfo is not None

    def ids(*args: str) -> list[int]:
        listed = json_of(easel("jobs", "list", "--json", *args))
        assert isinstance(listed, list)
        return [job["id"] for job in listed]

    assert ids("--user", str(jobs.bob)) == [4, 2]
    assert ids("--user", "telegram:2002") == [4, 2]
    assert ids("--status", "failed", "--status", "cancelled") == [3, 2]
    assert ids("--limit", "2") == [5, 4]
    age(store, jobs.done.id, days=3)
    assert ids("--since", "2d") == [5, 4, 3, 2]
    assert ids("--since", "1w") == [5, 4, 3, 2, 1]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert ids("--since", tomorrow) == []
    assert easel("jobs", "list", "--since", tomorrow).stdout.strip() == "No jobs."


# --------------------------------------------------------------------------- easel jobs show


def test_jobs_show_tells_the_operator_everything(store: Store, jobs: Jobs) -> None:
    result = easel("jobs", "show", str(jobs.failed.id))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "Job #2" in text and "failed" in text
    assert "a green forest" in text and "blurry" in text
    assert "telegram:2002 (Bob)" in text
    assert "discord, chat chan-9, message msg-3" in text
    assert "Job #2 failed with an internal error (reference ref-42)" in text
    assert "Failure trace (for the operator):" in text and "Boom: it broke" in text
    assert "Attempts" in text

    done = easel("jobs", "show", str(jobs.done.id)).stdout
    assert "grid.png" in done and "img-1.png (seed 8, 64x64)" in done
    child = easel("jobs", "show", str(jobs.cancelled.id)).stdout
    assert "#1, image 2" in child


def test_jobs_show_json(store: Store, jobs: Jobs, tmp_path: Path) -> None:
    shown = json_of(easel("jobs", "show", str(jobs.done.id), "--json"))
    assert isinstance(shown, dict)
    assert shown["id"] == 1 and shown["status"] == "done" and shown["kind"] == "imagine"
    assert shown["prompt"] == "a red lighthouse" and shown["negative_prompt"] == "blurry"
    assert shown["request"]["prompt"] == "a red lighthouse"
    assert shown["origin"] == {"platform": "discord", "chat": "chan-9", "message": "msg-3"}
    assert shown["attempts"] == 1 and shown["gpu_seconds"] == 1.5
    assert shown["grid_path"] == str(tmp_path / "grid.png")
    assert [(image["path"], image["seed"]) for image in shown["images"]] == [
        (str(tmp_path / "img-0.png"), 7),
        (str(tmp_path / "img-1.png"), 8),
    ]
    failed = json_of(easel("jobs", "show", str(jobs.failed.id), "--json"))
    assert isinstance(failed, dict)
    assert "reference ref-42" in failed["error"]
    assert failed["failure_trace"].endswith("Boom: it broke")


def test_jobs_show_names_the_worker_of_a_remote_run(store: Store, jobs: Jobs) -> None:
    running = jobs.running.id
    store.mark_running([running], "task-7")
    waiting = easel("jobs", "show", str(running)).stdout
    assert "none yet (run task-7)" in waiting
    store.claim_run("task-7", [running], "gpu-box-2", 600)
    text = easel("jobs", "show", str(running)).stdout
    assert "Worker" in text and "gpu-box-2, lease until" in text and "expired" not in text
    shown = json_of(easel("jobs", "show", str(running), "--json"))
    assert isinstance(shown, dict)
    assert (shown["run_id"], shown["worker"]) == ("task-7", "gpu-box-2")
    lease = datetime.fromisoformat(shown["lease_until"])
    assert lease > datetime.now(UTC) + timedelta(seconds=300)
    assert "Worker" not in easel("jobs", "show", str(jobs.done.id)).stdout  # a local job
    assert store.mark_done(running, [], None, run_id="task-7")
    ended = easel("jobs", "show", str(running)).stdout
    assert "gpu-box-2" in ended and "lease" not in ended  # who made it, and no lease now


def test_jobs_show_of_no_such_job(store: Store, jobs: Jobs) -> None:
    for job_id in ("99", "0", str(2**70)):
        result = easel("jobs", "show", job_id)
        assert result.exit_code == 1
        assert result.output.strip() == f"No job #{job_id}."


# --------------------------------------------------------------------------- cancel and retry


def test_jobs_cancel_queued_running_and_ended(store: Store, jobs: Jobs) -> None:
    revision = store.control_state().revision
    queued = easel("jobs", "cancel", str(jobs.queued.id))
    assert queued.exit_code == 0, queued.output
    assert queued.stdout.strip() == "Job #5 cancelled."
    assert store.job(jobs.queued.id).status is JobStatus.CANCELLED  # type: ignore[union-attr]

    running = easel("jobs", "cancel", str(jobs.running.id))
    assert running.exit_code == 0
    assert "Job #4 is running: the bot stops it within a sampling step." in running.stdout
    after = store.job(jobs.running.id)
    assert after is not None and after.status is JobStatus.RUNNING and after.cancel_requested
    assert store.control_state().revision == revision + 2  # the running bot hears of both

    done = easel("jobs", "cancel", str(jobs.done.id))
    assert done.exit_code == 1
    assert done.output.strip() == "Job #1 is already done: nothing to cancel."
    missing = easel("jobs", "cancel", "77")
    assert missing.exit_code == 1 and missing.output.strip() == "No job #77."
    assert store.control_state().revision == revision + 2


def test_jobs_retry_copies_the_request_into_a_new_queued_job(store: Store, jobs: Jobs) -> None:
    revision = store.control_state().revision
    result = easel("jobs", "retry", str(jobs.failed.id))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "Job #2 queued again as job #6."
    new = store.job(6)
    old = jobs.failed
    assert new is not None and new.status is JobStatus.QUEUED and new.attempts == 0
    copied = ("user_id", "kind", "request", "batch_key", "image_count", "cost", "parent_id")
    assert all(getattr(new, name) == getattr(old, name) for name in copied)
    assert (new.origin_platform, new.origin_chat, new.origin_message) == (
        "discord",
        "chan-9",
        "msg-3",
    )
    assert new.cost == 2.5 and new.error is None and new.started_at is None
    assert store.control_state().revision == revision + 1

    child = easel("jobs", "retry", str(jobs.cancelled.id))
    assert child.exit_code == 0
    again = store.job(7)
    assert again is not None and (again.parent_id, again.image_index) == (1, 1)


@pytest.mark.parametrize("which", ["done", "running", "queued"])
def test_jobs_retry_refuses_a_job_that_did_not_fail(store: Store, jobs: Jobs, which: str) -> None:
    job: JobRecord = getattr(jobs, which)
    revision = store.control_state().revision
    result = easel("jobs", "retry", str(job.id))
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Job #{job.id} is {which}: only a failed or cancelled job can be retried."
    )
    assert store.job(6) is None and store.control_state().revision == revision
    assert easel("jobs", "retry", "66").output.strip() == "No job #66."


# --------------------------------------------------------------------------- history export


def test_history_export_jsonl(store: Store, jobs: Jobs, tmp_path: Path) -> None:
    result = easel("history", "export", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["job_id"] for row in rows] == [1, 2, 3, 4, 5]
    first = rows[0]
    assert first["prompt"] == "a red lighthouse" and first["kind"] == "imagine"
    assert first["status"] == "done" and first["seeds"] == [7, 8]
    assert first["images"] == [str(tmp_path / "img-0.png"), str(tmp_path / "img-1.png")]
    assert first["finished_at"] is not None and first["user"] == "discord:1001 (Alice)"
    assert "reference ref-42" in rows[1]["error"]

    mine = easel("history", "export", "--format", "jsonl", "--user", "discord:1001")
    assert [json.loads(line)["job_id"] for line in mine.stdout.splitlines()] == [1, 3, 5]
    age(store, jobs.done.id, days=10)
    recent = easel("history", "export", "--format", "jsonl", "--since", "7d")
    assert [json.loads(line)["job_id"] for line in recent.stdout.splitlines()] == [2, 3, 4, 5]


def test_history_export_csv_to_a_file(store: Store, jobs: Jobs, tmp_path: Path) -> None:
    target = tmp_path / "history.csv"
    result = easel("history", "export", "--format", "csv", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"Wrote 5 job(s) to {target}." in result.output
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [row["job_id"] for row in rows] == ["1", "2", "3", "4", "5"]
    assert rows[0]["seeds"] == "7;8"
    assert rows[0]["images"] == f"{tmp_path / 'img-0.png'};{tmp_path / 'img-1.png'}"
    assert rows[1]["status"] == "failed" and rows[1]["images"] == ""
    assert rows[4]["prompt"] == "a purple sky" and rows[4]["finished_at"] == ""
    assert not list(tmp_path.glob("*.part"))


def test_history_export_needs_a_known_format(store: Store, jobs: Jobs) -> None:
    result = easel("history", "export", "--format", "xml")
    assert result.exit_code == 2 and "xml" in result.output
    assert easel("history", "export").exit_code == 2


# --------------------------------------------------------------------------- easel queue


def test_queue_status_json_orders_by_tier_and_fair_shares(store: Store, jobs: Jobs) -> None:
    store.set_role(jobs.bob, Role.ADMIN)
    later_alice = new_job(store, jobs.alice, "another sky")
    bob_queued = new_job(store, jobs.bob, "bob's second")
    state = json_of(easel("queue", "status", "--json"))
    assert isinstance(state, dict)
    assert state["paused"] is False
    assert [job["id"] for job in state["running"]] == [jobs.running.id]
    assert state["running"][0]["position"] is None
    assert state["running"][0]["user"] == "telegram:2002 (Bob)"
    order = [(job["position"], job["id"]) for job in state["queued"]]
    # The admin's job first although it came last; then Alice's in order.
    assert order == [(1, bob_queued.id), (2, jobs.queued.id), (3, later_alice.id)]
    assert state["counts"] == {"queued": 3, "running": 1, "done": 1, "failed": 1, "cancelled": 1}


def test_queue_status_table(store: Store, jobs: Jobs) -> None:
    running = easel("queue", "status")
    assert running.exit_code == 0, running.output
    assert "The queue is running." in running.stdout
    assert "1 running, 1 queued; 1 done, 1 failed, 1 cancelled in all." in running.stdout
    row = next(line for line in running.stdout.splitlines() if "#5" in line)
    assert "a purple sky" in row and "discord:1001 (Alice)" in row
    assert row.split()[1] == "1"  # its place
    store.set_queue_paused(True, "discord:admin")
    paused = easel("queue", "status").stdout
    assert "The queue is paused (by discord:admin," in paused


def test_queue_pause_and_resume(store: Store, jobs: Jobs) -> None:
    paused = easel("queue", "pause")
    assert paused.exit_code == 0, paused.output
    assert "Paused: no new job starts; running jobs finish. 1 job(s) queued." in paused.stdout
    state = store.control_state()
    assert state.paused and state.changed_by is not None and state.changed_by.startswith("cli")
    assert "already paused (by cli" in easel("queue", "pause").stdout
    assert store.control_state().revision == state.revision  # a no-op changes nothing
    store.bump_revision("someone")  # a cancel elsewhere: the pause is still the CLI's
    status = json_of(easel("queue", "status", "--json"))
    assert isinstance(status, dict) and status["changed_by"] == state.changed_by

    resumed = easel("queue", "resume")
    assert resumed.exit_code == 0
    assert "Resumed: 1 queued job(s) start in turn." in resumed.stdout
    assert not store.queue_paused()
    assert easel("queue", "resume").stdout.strip() == "The queue is not paused."


def test_queue_clear_needs_yes(store: Store, jobs: Jobs) -> None:
    new_job(store, jobs.bob, "one more")
    revision = store.control_state().revision
    dry = easel("queue", "clear")
    assert dry.exit_code == 0
    assert "2 queued job(s) would be cancelled; nothing changed." in dry.stdout
    assert store.count_queued() == 2 and store.control_state().revision == revision

    cleared = easel("queue", "clear", "--yes")
    assert cleared.exit_code == 0, cleared.output
    assert cleared.stdout.strip() == "Cancelled 2 queued job(s): #5, #6."
    assert store.count_queued() == 0
    assert store.job(jobs.running.id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert store.control_state().revision == revision + 1
    empty = easel("queue", "clear", "--yes")
    assert empty.stdout.strip() == "No job is queued: nothing to cancel."
    assert store.control_state().revision == revision + 1


def test_korean_terminal_gets_korean_lines(
    store: Store, jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_LANG", "ko")
    assert easel("jobs", "cancel", "5").stdout.strip() == "작업 #5을(를) 취소했습니다."
    refused = easel("jobs", "list", "--since", "soon")
    assert refused.exit_code == 2 and "시간이 아닙니다" in refused.output


def test_commands_refuse_a_database_that_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/none.db")
    for args in (("jobs", "list"), ("queue", "status"), ("queue", "pause")):
        result = easel(*args)
        assert isinstance(result.exception, StoreError)
        assert "No database yet" in str(result.exception)
    assert not (tmp_path / "none.db").exists()


def test_durations_read_as_people_say_them() -> None:
    from bot.cli.jobs import seconds

    assert [seconds(value) for value in (None, 4.24, 185, 7620, 3 * 86400 + 4 * 3600)] == [
        "-",
        "4.2 s",
        "3 min 05 s",
        "2 h 07 min",
        "3 d 04 h",
    ]


def test_status_choices_are_the_stores() -> None:
    from bot.cli.jobs import StatusName

    assert [name.value for name in StatusName] == [status.value for status in JobStatus]
