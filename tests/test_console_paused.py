"""`easel chat` fixes: piped input ending (or /wait) while the queue is paused, a cancelled
job said once, and `--previews` checked at the start."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.runtime import build_bot, open_store
from bot.serve import serve_console
from bot.settings import Settings
from bot.store import JobStatus
from pipeline.engine import Engine
from pipeline.errors import EaselError
from tests.test_console import Line, ScriptedInput, console_settings

CHAT_LIMIT_S = 120.0  # a chat that outlives this has hung


def chat(settings: Settings, engine: Engine, lines: Iterable[Line], locale: str = "en") -> str:
    out = io.StringIO()
    bot = build_bot(settings, engine, open_store(settings))
    try:
        session = serve_console(bot, settings, ScriptedInput(lines), out, locale)
        asyncio.run(asyncio.wait_for(session, CHAT_LIMIT_S))
    finally:
        bot.store.close()
    return out.getvalue()


def test_input_ending_while_paused_keeps_the_jobs_and_exits(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)
    output = chat(settings, engine, ["/admin pause", "/imagine hang --n 1 --steps 1"])
    assert output.rstrip().endswith(
        "The queue is paused: your queued jobs (1 job) stay queued for the next start."
    )
    korean = chat(settings, engine, ["/imagine hang again --n 1 --steps 1"], locale="ko")
    assert korean.rstrip().endswith(
        "대기열이 일시 정지되어 있습니다. 대기 중인 작업(2개)은 다음 시작 때까지 대기열에 남습니다."
    )
    store = open_store(settings)
    try:
        assert [store.job(job).status for job in (1, 2)] == [JobStatus.QUEUED] * 2  # type: ignore[union-attr]
    finally:
        store.close()


def test_wait_while_paused_answers_then_resume_runs_the_job(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)
    lines = ["/admin pause", "/imagine a fox --n 1 --steps 2", "/wait", "/admin resume", "/wait"]
    output = chat(settings, engine, lines)
    said = "The queue is paused: your queued jobs (1 job) start when an admin resumes it"
    assert output.count(said) == 1
    assert output.index(said) < output.index("easel> /admin resume")
    assert "Job #1 is done in " in output
    assert "stay queued for the next start" not in output


def test_cancelling_a_queued_job_is_said_once(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)
    lines = ["/admin pause", "/imagine a fox --n 1 --steps 2", "/cancel 1", "/admin resume"]
    output = chat(settings, engine, lines)
    assert output.count("Job #1 was cancelled.") == 1
    assert "Job #1 is done" not in output


def test_previews_must_name_a_folder(tmp_path: Path) -> None:
    from bot.console.chat import previews_folder

    file = tmp_path / "previews.txt"
    file.write_text("not a folder")
    with pytest.raises(EaselError, match=r"that is a file, not a folder"):
        previews_folder(file)
    with pytest.raises(EaselError, match=r"cannot create the folder"):
        previews_folder(file / "inside")
    made = previews_folder(tmp_path / "new" / "previews")
    assert made.is_dir()
    result = CliRunner().invoke(app, ["chat", "--previews", str(file)])
    assert isinstance(result.exception, EaselError)
    assert "that is a file, not a folder" in str(result.exception)
    assert file.read_text() == "not a folder"
