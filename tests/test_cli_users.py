"""`easel users ...`: the operator's view of the bot's users, and changes a running bot obeys
through the database (bans with an end, roles, quotas, forgetting someone)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from bot.cli import app
from bot.core.admin import AdminService
from bot.core.events import EventKind, JobEvent, Origin, Refusal, UserRef
from bot.core.messages import Key
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from bot.store import JobKind, JobStatus, NewImage, NewJob, Role, Store
from pipeline.engine import Engine

ORIGIN = Origin("test", "chat-1")
ROOT = UserRef("test", "root", "Root", "en")
ALICE = UserRef("test", "alice", "Alice", "en")
BOB = UserRef("test", "bob", "Bob", "ko")
EVENT_WAIT_S = 10.0
ROOT_DIR = Path(__file__).resolve().parent.parent


@dataclass
class Setup:
    store: Store
    outputs: Path
    url: str


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    url = f"sqlite:///{tmp_path}/easel.db"
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("EASEL_OUTPUTS_DIR", str(outputs))
    monkeypatch.setenv("EASEL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("EASEL_DAILY_IMAGES", "20")
    monkeypatch.setenv("EASEL_LANG", "en")
    monkeypatch.setenv("COLUMNS", "200")  # tables unwrapped
    store = Store(url)
    store.upgrade()
    yield Setup(store, outputs, url)
    store.close()


def users(*args: str) -> Result:
    return CliRunner().invoke(app, ["users", *args])


def job(
    store: Store,
    user_id: int,
    prompt: str = "a castle on a hill",
    images: int = 2,
    parent_id: int | None = None,
) -> int:
    request = json.dumps({"prompt": prompt})
    new = NewJob(user_id, JobKind.IMAGINE, request, "sd1", images, "discord", "chan-1")
    if parent_id is not None:
        new = NewJob(
            user_id, JobKind.REROLL, request, "sd1", images, "discord", "chan-1", None, parent_id
        )
    return store.add_job(new).id


def finished(store: Store, outputs: Path, user_id: int, name: str, images: int = 2) -> int:
    """A done job whose images and grid are files under the outputs folder."""
    job_id = job(store, user_id, f"{name} prompt", images)
    store.mark_running([job_id])
    folder = outputs / "2026-12-01"
    folder.mkdir(exist_ok=True)
    saved = []
    for index in range(images):
        path = folder / f"{name}-{index}.png"
        path.write_bytes(b"png" * 100)
        saved.append(NewImage(index, str(path), 1000 + index, 64, 64, "0" * 64))
    grid = folder / f"{name}-grid.png"
    grid.write_bytes(b"grid" * 100)
    store.mark_done(job_id, saved, str(grid), gpu_seconds=1.5)
    return job_id


# ---------------------------------------------------------------------------- list and show


def test_list_shows_roles_bans_quotas_and_activity(setup: Setup) -> None:
    store = setup.store
    alice = store.user("discord", "1234", "Alice")
    bob = store.user("telegram", "99", "Bob")
    store.set_role(bob.id, Role.VIP)
    store.ban(alice.id, "spam", datetime.now(UTC) + timedelta(days=2))
    finished(store, setup.outputs, alice.id, "fox", images=3)
    job(store, alice.id)

    result = users("list", "--json")
    assert result.exit_code == 0, result.output
    listed = {row["platform_user_id"]: row for row in json.loads(result.stdout)}
    first = listed["1234"]
    assert (first["id"], first["platform"], first["name"], first["role"]) == (
        alice.id,
        "discord",
        "Alice",
        "user",
    )
    assert first["banned"] is True and first["ban_reason"] == "spam"
    assert first["banned_until"].startswith(str((datetime.now(UTC) + timedelta(days=2)).date()))
    assert (first["jobs_today"], first["jobs_total"]) == (2, 2)
    assert (first["images_today"], first["images_total"]) == (5, 5)
    assert first["daily_images"] == {"value": 20, "own": False}
    assert first["last_seen"] is not None
    assert listed["99"]["role"] == "vip" and listed["99"]["banned"] is False
    assert listed["99"]["jobs_total"] == 0 and listed["99"]["last_seen"] is None

    table = users("list")
    assert table.exit_code == 0
    assert "Alice" in table.stdout and "vip" in table.stdout
    assert f"{first['banned_until'][:10]}" in table.stdout  # the ban's end

    def ids(*args: str) -> list[str]:
        found = users("list", "--json", *args)
        assert found.exit_code == 0, found.output
        return [row["platform_user_id"] for row in json.loads(found.stdout)]

    assert ids("--banned") == ["1234"]
    assert ids("--role", "vip") == ["99"]
    assert ids("--platform", "telegram") == ["99"]
    bad = users("list", "--role", "boss")
    assert bad.exit_code == 2 and "not a role" in bad.output


def test_a_ban_whose_end_passed_is_no_ban(setup: Setup) -> None:
    store = setup.store
    user = store.user("discord", "7")
    store.ban(user.id, "old", datetime.now(UTC) - timedelta(minutes=1))
    shown = json.loads(users("show", "discord:7", "--json").stdout)
    assert shown["user"]["banned"] is False
    assert json.loads(users("list", "--json", "--banned").stdout) == []
    assert "was not banned" in users("unban", str(user.id)).stdout


def test_show_has_settings_and_newest_jobs(setup: Setup) -> None:
    store = setup.store
    user = store.user("telegram", "99", "Bob", "ko")
    store.update_settings(user.id, style="anime", steps=30)
    finished(store, setup.outputs, user.id, "owl")
    result = users("show", "telegram:99", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["user"]["locale"] == "ko"
    assert shown["settings"]["style"] == "anime" and shown["settings"]["steps"] == 30
    assert [(j["status"], j["prompt"]) for j in shown["recent_jobs"]] == [("done", "owl prompt")]

    text = users("show", str(user.id))
    assert text.exit_code == 0
    assert "style=anime" in text.stdout and "owl prompt" in text.stdout


def test_unknown_and_malformed_users_are_one_line_errors(setup: Setup) -> None:
    for args in (("show", "42"), ("show", "discord:555"), ("unban", "telegram:1")):
        result = users(*args)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert "No user" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    malformed = users("show", "nobody")
    assert malformed.exit_code == 2 and "PLATFORM:ID" in malformed.output
    assert users("forget", "discord:555", "--yes").exit_code == 1
    assert setup.store.count_users() == 0  # nothing was created by looking


def test_a_missing_database_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/none.db")
    result = users("list")
    assert result.exit_code == 1 and "easel db upgrade" in result.stderr
    assert not (tmp_path / "none.db").exists()


def test_korean_help_and_messages(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "EASEL_LANG": "ko", "PYTHONPATH": str(ROOT_DIR)}
    command = [sys.executable, "-c", "from bot.cli import main; main()", "users", "ban", "--help"]
    shown = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "사용자를 차단합니다" in shown.stdout and "차단 기간" in shown.stdout
    monkeypatch.setenv("EASEL_LANG", "ko")
    missing = users("show", "42")
    assert missing.exit_code == 1 and "사용자 42이(가) 없습니다" in missing.stderr


# ---------------------------------------------------------------------------- changes


def test_ban_cancels_queued_jobs_and_unban_lifts_it(setup: Setup) -> None:
    store = setup.store
    user = store.user("discord", "1234", "Alice")
    queued = [job(store, user.id), job(store, user.id)]
    running = job(store, user.id)
    store.mark_running([running])
    revision = store.control_state().revision

    result = users("ban", "discord:1234", "--reason", "spam", "--for", "12h")
    assert result.exit_code == 0, result.output
    until = store.user_by_id(user.id).banned_until  # type: ignore[union-attr]
    assert until is not None
    assert timedelta(hours=11, minutes=59) < until - datetime.now(UTC) <= timedelta(hours=12)
    assert f"until {until:%Y-%m-%d %H:%M} UTC: spam" in result.stdout
    assert f"Cancelled 2 queued job(s): #{queued[0]}, #{queued[1]}." in result.stdout
    assert f"Still running: #{running}" in result.stdout
    assert [store.job(j).status for j in queued] == [JobStatus.CANCELLED] * 2  # type: ignore[union-attr]
    assert store.job(running).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert store.control_state().revision > revision

    unbanned = users("unban", str(user.id))
    assert unbanned.exit_code == 0 and "no longer banned" in unbanned.stdout
    record = store.user_by_id(user.id)
    assert record is not None and not record.banned and record.banned_until is None


def test_ban_in_advance_and_bad_lengths(setup: Setup) -> None:
    store = setup.store
    forever = users("ban", "telegram:777")
    assert forever.exit_code == 0 and "until unbanned." in forever.stdout
    record = store.user("telegram", "777")
    assert record.banned and record.banned_until is None and record.ban_reason is None
    for length in ("0d", "3y", "soon", "99999w"):
        result = users("ban", "discord:1", "--for", length)
        assert result.exit_code == 2 and "--for" in result.output, length
    unknown = users("ban", "matrix:1")
    assert unknown.exit_code == 2 and "console, discord, telegram" in unknown.output
    assert store.count_users() == 1  # a refused ban creates nobody


def test_role_and_quota(setup: Setup) -> None:
    store = setup.store
    user = store.user("discord", "1234")
    result = users("role", "discord:1234", "vip")
    assert result.exit_code == 0 and "user -> vip" in result.stdout
    assert store.user_by_id(user.id).role is Role.VIP  # type: ignore[union-attr]
    assert users("role", "discord:1234", "king").exit_code == 2
    assert users("role", "discord:4321", "admin").exit_code == 0  # promoted before they write
    assert store.user("discord", "4321").role is Role.ADMIN

    revision = store.control_state().revision
    shown = users("quota", str(user.id), "--daily", "5", "--max-queued", "3", "--json")
    assert shown.exit_code == 0, shown.output
    limits = json.loads(shown.stdout)
    assert limits["daily_images"] == {"value": 5, "own": True}
    assert limits["max_queued"] == {"value": 3, "own": True}
    assert limits["max_running"] == {"value": 4, "own": False}
    assert store.control_state().revision > revision
    record = store.user_by_id(user.id)
    assert record is not None and (record.daily_images, record.max_queued) == (5, 3)

    assert json.loads(users("quota", str(user.id), "--daily", "unlimited", "--json").stdout)[
        "daily_images"
    ] == {"value": None, "own": True}
    text = users("quota", str(user.id), "--daily", "default")
    assert text.exit_code == 0 and "Images a day: 20" in text.stdout
    assert "Jobs queued at once: 3 (own)" in text.stdout
    users("quota", str(user.id), "--clear")
    record = store.user_by_id(user.id)
    assert record is not None
    assert (record.daily_images, record.max_queued, record.max_running) == (None, None, None)
    zero = users("quota", str(user.id), "--daily", "0")
    assert zero.exit_code == 2 and "ban them instead" in zero.output
    assert users("quota", str(user.id), "--max-running", "-1").exit_code == 2


# ---------------------------------------------------------------------------- export, forget


def test_export_has_jobs_settings_and_image_paths(setup: Setup, tmp_path: Path) -> None:
    store = setup.store
    user = store.user("discord", "1234", "Alice")
    store.update_settings(user.id, style="ink")
    done = finished(store, setup.outputs, user.id, "fox")
    job(store, user.id, "a queued owl")
    document = json.loads(users("export", "discord:1234").stdout)
    assert document["user"]["platform_user_id"] == "1234"
    assert document["settings"]["style"] == "ink"
    first, second = document["jobs"]
    assert (first["id"], first["status"], first["kind"]) == (done, "done", "imagine")
    assert first["request"]["prompt"] == "fox prompt"
    assert [image["path"] for image in first["images"]] == [
        str(setup.outputs / "2026-12-01" / f"fox-{index}.png") for index in range(2)
    ]
    assert first["grid_path"].endswith("fox-grid.png") and first["gpu_seconds"] == 1.5
    assert second["request"]["prompt"] == "a queued owl" and second["images"] == []

    target = tmp_path / "alice.json"
    written = users("export", str(user.id), "--output", str(target))
    assert written.exit_code == 0 and str(target) in written.stdout
    assert json.loads(target.read_text(encoding="utf-8"))["jobs"][0]["id"] == done


def test_forget_dry_run_changes_nothing(setup: Setup) -> None:
    store = setup.store
    user = store.user("discord", "1234", "Alice")
    finished(store, setup.outputs, user.id, "fox")
    revision = store.control_state().revision
    result = users("forget", "discord:1234")
    assert result.exit_code == 0, result.output
    assert "1 job(s) (0 queued), 2 image row(s), 3 file(s)" in result.stdout
    assert "add --yes" in result.stdout
    assert store.user_by_id(user.id) is not None
    assert len(list(setup.outputs.rglob("*.png"))) == 3
    assert store.control_state().revision == revision


def test_forget_deletes_rows_and_files_and_leaves_others(setup: Setup) -> None:
    store = setup.store
    alice = store.user("discord", "1234", "Alice")
    bob = store.user("discord", "5678", "Bob")
    store.update_settings(alice.id, style="ink")
    mine = finished(store, setup.outputs, alice.id, "fox")
    queued = job(store, alice.id)
    theirs = finished(store, setup.outputs, bob.id, "owl")
    child = job(store, bob.id, parent_id=mine)  # Bob's reroll of Alice's grid
    outside = setup.outputs.parent / "elsewhere.png"
    outside.write_bytes(b"keep")
    extra = store.add_job(NewJob(alice.id, JobKind.UPSCALE, "{}", None, 1, "discord", "chan-1")).id
    store.mark_done(extra, [NewImage(0, str(outside), 1, 64, 64, "0" * 64)], None)
    (setup.outputs / "2026-12-01" / "fox-1.png").unlink()  # already gone: fine

    result = users("forget", str(alice.id), "--yes")
    assert result.exit_code == 0, result.output
    assert "Forgot discord:1234 (Alice): 3 job(s), 3 image row(s), 2 file(s)" in result.stdout
    assert store.user_by_id(alice.id) is None
    assert store.job(mine) is None and store.job(queued) is None and store.job(extra) is None
    assert store.settings(alice.id).style is None
    assert sorted(path.name for path in setup.outputs.rglob("*.png")) == [
        "owl-0.png",
        "owl-1.png",
        "owl-grid.png",
    ]
    assert outside.exists()  # recorded, but outside the outputs folder
    kept = store.job(theirs, with_images=True)
    assert kept is not None and len(kept.images) == 2
    orphan = store.job(child)
    assert orphan is not None and orphan.parent_id is None and orphan.status is JobStatus.QUEUED
    assert store.user_by_id(bob.id) is not None


def test_forget_refuses_while_a_job_runs(setup: Setup) -> None:
    store = setup.store
    user = store.user("discord", "1234")
    running = job(store, user.id)
    store.mark_running([running])
    queued = job(store, user.id)
    result = users("forget", "discord:1234", "--yes")
    assert result.exit_code == 1
    assert f"easel jobs cancel {running}" in result.stderr
    assert store.user_by_id(user.id) is not None
    assert store.job(queued).status is JobStatus.QUEUED  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- a running bot


class Recorder:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    async def __call__(self, event: JobEvent) -> None:
        self.events.append(event)

    def kinds(self, job_id: int) -> list[EventKind]:
        return [event.kind for event in self.events if event.job_id == job_id]


async def eventually(check: Callable[[], bool], timeout: float = EVENT_WAIT_S) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
def bot(engine: Engine, setup: Setup) -> Iterator[Bot]:
    settings = Settings(_env_file=None, progress_interval=0).model_copy(
        update={"admins": "test:root"}
    )
    made = build_bot(settings, engine, open_store(settings))
    yield made
    made.store.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 120))


async def imagine(bot: Bot, user: UserRef, line: str = "a lighthouse --steps 2 --n 1") -> int:
    service = bot.service
    ticket = await service.imagine(user, await service.options(user, line, ORIGIN), ORIGIN)
    return ticket.job_id


def test_a_running_bot_obeys_a_ban_and_its_end(bot: Bot, setup: Setup) -> None:
    recorder = Recorder()
    bot.service.subscribe("test", recorder)
    dispatcher = bot.service.dispatcher

    async def scenario() -> tuple[list[int], str, str]:
        await bot.service.start()
        try:
            setup.store.set_queue_paused(True, "test")  # queued jobs stay queued
            jobs = [await imagine(bot, ALICE), await imagine(bot, ALICE)]
            other = await imagine(bot, BOB)
            assert len(dispatcher.scheduler) == 3
            banned = users("ban", "test:alice", "--reason", "spam", "--for", "30m")
            assert banned.exit_code == 0, banned.output
            assert "Cancelled 2 queued job(s)" in banned.stdout
            await eventually(lambda: len(dispatcher.scheduler) == 1)
            await eventually(lambda: all(EventKind.CANCELLED in recorder.kinds(j) for j in jobs))
            assert other in dispatcher.scheduler
            with pytest.raises(Refusal) as refused:
                await imagine(bot, ALICE)
            message = refused.value.reply.message
            assert message.key is Key.BANNED_UNTIL
            english = refused.value.reply.text("en")
            korean = refused.value.reply.text("ko")
            # The end has passed: the ban is no ban.
            alice = setup.store.user("test", "alice")
            setup.store.ban(alice.id, "spam", datetime.now(UTC) - timedelta(seconds=1))
            await imagine(bot, ALICE)
            return jobs, english, korean
        finally:
            await bot.service.stop()

    jobs, english, korean = run(scenario())
    until = setup.store.user("test", "alice").banned_until
    assert english.startswith("You are banned from using this bot until ")
    assert english.endswith(" UTC: spam")
    assert "UTC까지" in korean
    assert until is not None
    assert [setup.store.job(j).status for j in jobs] == [JobStatus.CANCELLED] * 2  # type: ignore[union-attr]


def test_chat_admins_ban_for_a_length(bot: Bot) -> None:
    admin = AdminService(bot.service)
    reply = run(admin.ban(ROOT, UserRef("test", "bob"), "7d flooding the channel"))
    text = reply.text("en")
    assert text.startswith("User bob banned until ") and text.endswith("UTC: flooding the channel")
    record = bot.store.user("test", "bob")
    assert record.ban_reason == "flooding the channel"
    assert record.banned_until is not None
    assert timedelta(days=6, hours=23) < record.banned_until - datetime.now(UTC)
    plain = run(admin.ban(ROOT, UserRef("test", "carol"), "7 days of spam"))
    assert plain.message.key is Key.ADMIN_BANNED
    assert bot.store.user("test", "carol").banned_until is None
    with pytest.raises(Refusal) as refused:
        run(admin.ban(ROOT, UserRef("test", "dave"), "0h"))
    assert refused.value.reply.message.key is Key.ADMIN_BAD_DURATION
    assert not bot.store.user("test", "dave").banned


def test_a_chat_admins_ban_cancels_queued_jobs_in_the_running_bot(bot: Bot, setup: Setup) -> None:
    recorder = Recorder()
    bot.service.subscribe("test", recorder)
    dispatcher = bot.service.dispatcher

    async def scenario() -> int:
        await bot.service.start()
        try:
            setup.store.set_queue_paused(True, "test")
            queued = await imagine(bot, ALICE)
            await AdminService(bot.service).ban(ROOT, ALICE, "12h")
            await eventually(lambda: EventKind.CANCELLED in recorder.kinds(queued))
            assert queued not in dispatcher.scheduler
            return queued
        finally:
            await bot.service.stop()

    queued = run(scenario())
    assert setup.store.job(queued).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert setup.store.user("test", "alice").ban_reason is None
