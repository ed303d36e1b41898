"""`easel stats`: the figures from jobs whose times the test sets, per UTC day, user and kind,
and what the command prints for people and for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bot.cli import app
from bot.cli.stats import bar, sparkline
from bot.core.events import message_to_json
from bot.core.messages import Key, Message
from bot.store import JobKind, NewImage, NewJob, Store, UserRecord
from bot.store.models import Job
from bot.store.reports import Durations, nearest_rank, usage_report

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'easel.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("EASEL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("EASEL_LANG", "en")
    with Store(url) as opened:
        opened.upgrade()
        yield opened


@dataclass(frozen=True)
class Times:
    created: datetime
    wait: float | None = None  # seconds queued; None: it never started
    run: float | None = None  # seconds running


def _job(
    store: Store,
    user: UserRecord,
    times: Times,
    *,
    kind: JobKind = JobKind.IMAGINE,
    images: int = 4,
    outcome: str = "done",
    error: str | None = None,
    gpu: float | None = None,
) -> int:
    """A job through the store's own steps, then given the test's times."""
    job = store.add_job(NewJob(user.id, kind, "{}", None, images, "discord", "chat"))
    if times.wait is not None:
        store.mark_running([job.id])
    if outcome == "done":
        made = [
            NewImage(i, f"/nowhere/{job.id}-{i}.png", i, 64, 64, "0" * 64) for i in range(images)
        ]
        store.mark_done(job.id, made, None, gpu_seconds=gpu)
    elif outcome == "failed":
        store.mark_failed(job.id, error or message_to_json(Message(Key.FAILED_INTERNAL)))
    elif outcome == "cancelled":
        assert store.mark_cancelled(job.id)
    started = times.created + timedelta(seconds=times.wait) if times.wait is not None else None
    finished = None
    if outcome != "queued":
        after = started or times.created
        finished = after + timedelta(seconds=times.run or 0.5)
    with store.writing() as session:
        session.execute(
            sa.update(Job)
            .where(Job.id == job.id)
            .values(created_at=times.created, started_at=started, finished_at=finished)
        )
    return job.id


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def _fill(store: Store) -> None:
    alice = store.user("discord", "111", "Alice")
    bob = store.user("telegram", "222", "Bob")
    carol = store.user("discord", "333", "Carol")
    # Before the three days of the report: left out.
    _job(store, carol, Times(_at(7, 23, 59), wait=1, run=5), gpu=3.0)
    # 8 March
    _job(store, alice, Times(_at(8, 0, 0), wait=2, run=10), gpu=6.0)
    _job(store, bob, Times(_at(8, 23, 59), wait=4, run=20), kind=JobKind.UPSCALE, images=1)
    # 9 March: nothing. 10 March:
    oom = message_to_json(Message(Key.FAILED_OUT_OF_MEMORY))
    _job(store, alice, Times(_at(10, 1), wait=6, run=1), outcome="failed", error=oom)
    _job(store, bob, Times(_at(10, 2), wait=10, run=1), outcome="failed")
    _job(store, alice, Times(_at(10, 3)), outcome="cancelled")
    _job(store, alice, Times(_at(10, 4), wait=8, run=30), kind=JobKind.VARY_SUBTLE, gpu=12.5)
    _job(store, bob, Times(_at(10, 5)), outcome="failed", error="out of memory (an old row)")
    _job(store, carol, Times(_at(10, 6)), outcome="queued")


def test_the_report_counts_days_users_kinds_waits_failures_and_gpu_time(store: Store) -> None:
    _fill(store)
    report = usage_report(store, 3, now=NOW)

    assert report.start == _at(8, 0)
    assert [(d.day, d.jobs, d.images, d.failed, d.cancelled) for d in report.days] == [
        (date(2026, 3, 8), 2, 5, 0, 0),
        (date(2026, 3, 9), 0, 0, 0, 0),
        (date(2026, 3, 10), 6, 4, 3, 1),
    ]
    assert (report.jobs, report.images, report.failed, report.cancelled) == (8, 9, 3, 1)
    assert [(u.display_name, u.platform, u.jobs, u.images) for u in report.users] == [
        ("Alice", "discord", 4, 8),
        ("Bob", "telegram", 3, 1),
        ("Carol", "discord", 1, 0),
    ]
    assert [(k.kind, k.jobs, k.images) for k in report.kinds] == [
        (JobKind.IMAGINE, 6, 4),
        (JobKind.UPSCALE, 1, 1),
        (JobKind.VARY_SUBTLE, 1, 4),
    ]
    # Waits of the jobs that started: 2, 4, 6, 8, 10 s; run times of the done ones: 10, 20, 30.
    assert report.queue_wait == Durations(5, 6.0, 10.0)
    assert report.run_time == Durations(3, 20.0, 30.0)
    assert [(f.reason, f.jobs) for f in report.failures] == [
        ("failed_internal", 1),
        ("failed_out_of_memory", 1),
        ("unknown", 1),
    ]
    # The upscale has no recorded GPU time (an older row): its 20 s run time stands in.
    assert (report.gpu.measured, report.gpu.measured_jobs) == (18.5, 2)
    assert (report.gpu.estimated, report.gpu.estimated_jobs) == (20.0, 1)


def test_a_period_without_jobs_has_every_day_at_zero(store: Store) -> None:
    report = usage_report(store, 4, now=NOW)
    assert [day.day for day in report.days] == [date(2026, 3, d) for d in (7, 8, 9, 10)]
    assert all(day.jobs == day.images == 0 for day in report.days)
    assert report.queue_wait == Durations(0, None, None)
    assert report.users == report.kinds == report.failures == ()


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 21)]  # 1..20
    assert nearest_rank(values, 95) == 19.0  # rank ceil(0.95 * 20) = 19
    assert nearest_rank(values, 50) == 10.0
    assert nearest_rank([7.0], 95) == 7.0
    assert nearest_rank([3.0, 1.0, 2.0], 100) == 3.0


def test_sparkline_and_bars_scale_to_the_largest_day() -> None:
    assert sparkline([0, 1, 4, 8]) == "▁▂▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert bar(10, 10, width=8) == "█" * 8
    assert bar(1, 100, width=8) == "█"  # never invisible
    assert bar(0, 100) == ""


def _recent_jobs(store: Store) -> datetime:
    """Jobs an hour ago, whatever the day today: what the real clock of the command sees."""
    created = datetime.now(UTC) - timedelta(hours=1)
    alice = store.user("discord", "111", "Alice")
    _job(store, alice, Times(created, wait=3, run=12), gpu=4.0)
    _job(store, alice, Times(created, wait=5, run=12), kind=JobKind.UPSCALE, images=1)
    oom = message_to_json(Message(Key.FAILED_OUT_OF_MEMORY))
    _job(store, alice, Times(created, wait=1, run=1), outcome="failed", error=oom)
    return created


def test_stats_prints_the_days_users_and_figures(store: Store) -> None:
    created = _recent_jobs(store)
    result = CliRunner().invoke(app, ["stats", "--days", "3"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "3 jobs, 5 images, 1 failed, 0 cancelled" in text
    day_row = next(line for line in text.splitlines() if line.startswith(str(created.date())))
    assert day_row.split()[1:5] == ["3", "5", "1", "0"]
    assert "Alice (discord:111)" in text
    assert "failed_out_of_memory" in text
    assert "Queue wait  median 3.0 s  p95 5.0 s  (3 jobs)" in text
    assert "Run time    median 12.0 s  p95 12.0 s  (2 jobs)" in text
    assert "1 of them from before GPU time was recorded" in text
    assert "Images per day" in text
    assert "\x1b[" not in result.output  # no colour off a terminal


def test_stats_json_is_one_document_with_every_figure(store: Store) -> None:
    created = _recent_jobs(store)
    result = CliRunner().invoke(app, ["stats", "--days", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["totals"] == {"jobs": 3, "images": 5, "failed": 1, "cancelled": 0}
    assert len(report["days"]) == 2
    today = {day["day"]: day for day in report["days"]}[created.date().isoformat()]
    assert (today["jobs"], today["images"]) == (3, 5)
    assert report["users"][0]["display_name"] == "Alice"
    assert report["queue_wait_seconds"] == {"jobs": 3, "median": 3.0, "p95": 5.0}
    assert report["failures"] == [{"reason": "failed_out_of_memory", "jobs": 1}]
    assert report["gpu_seconds"]["measured"] == 4.0
    assert report["gpu_seconds"]["estimated_jobs"] == 1
    assert report["gpu_seconds"]["total"] == 16.0


def test_stats_lists_the_top_users_only(store: Store) -> None:
    created = datetime.now(UTC) - timedelta(hours=1)
    for number, count in enumerate([1, 3, 2]):
        person = store.user("discord", str(number), f"person{number}")
        _job(store, person, Times(created, wait=1, run=1), images=count)
    result = CliRunner().invoke(app, ["stats", "--top", "2", "--json"])
    assert [user["display_name"] for user in json.loads(result.stdout)["users"]] == [
        "person1",
        "person2",
    ]
    shown = CliRunner().invoke(app, ["stats", "--top", "2"]).stdout
    assert "Top users by images (2 of 3)" in shown
    assert "person0" not in shown


def test_stats_refuses_a_zero_day_period(store: Store) -> None:
    result = CliRunner().invoke(app, ["stats", "--days", "0"])
    assert result.exit_code == 2
    assert "--days" in result.output
