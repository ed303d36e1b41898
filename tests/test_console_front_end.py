"""The console as a front end over the core: the router's replies, remix, img2img from a file,
transcripts, bad input, /quit and a second Ctrl-C."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.core.messages import Key, Message
from bot.runtime import build_bot, open_store
from bot.serve import serve_console
from bot.store import JobKind, JobRecord, JobStatus, Store
from pipeline.engine import Engine
from tests.test_console import ScriptedInput, chat, console_settings


def test_the_console_routes_through_the_core_and_reads_like_a_transcript(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)
    photo = tmp_path / "my photo.png"
    Image.new("RGB", (64, 64), "blue").save(photo)
    (tmp_path / "notes.txt").write_text("not an image")
    output = chat(
        settings,
        engine,
        [
            f'/imagine a blue fox --n 1 --steps 2 --init "{photo}" --strength 0.6',
            "/wait",
            "/remix",
            "a green fox --n 1 --steps 2",
            "/wait",
            "/cancel abc",
            f"/pnginfo {tmp_path / 'notes.txt'}",
            "clear/help",
            "/queue",
            "/help",
            "/quit",
            "/imagine never read after quit",
        ],
    )
    store = Store(settings.database_url)
    # Each line read is echoed after the prompt, and its reply follows it.
    assert "easel> /remix\nRemix of job #1: edit this line" in output
    assert "easel> /cancel abc\nabc is not a job number.\n" in output
    assert "\nThat is not an image Easel can read.\n" in output
    assert "easel> clear/help\nclear/help looks like a command: did you mean /help?" in output
    assert "0 job(s) waiting, 0 running.\nYou have nothing waiting.\n" in output
    assert "  /quit  " in output and "  /remix [JOB] [LINE]  " in output
    assert "never read after quit" not in output
    first = store.job(1, with_images=True)
    assert first is not None and first.status is JobStatus.DONE
    assert '"denoising_strength": 0.6' in first.request
    # The remix line offered the first job's prompt and flags, strength included.
    assert (
        '  a blue fox --size 64x64 --steps 2 --cfg 7 --sampler "Euler a" --n 1 --strength 0.6'
        in (output)
    )
    assert "Job #2 started: remix of #1: a green fox" in output
    remix = store.job(2, with_images=True)
    assert remix is not None and (remix.kind, remix.parent_id) == (JobKind.REMIX, 1)
    assert remix.status is JobStatus.DONE and "a green fox" in remix.request
    assert '"path"' in remix.request  # img2img from the same input image
    assert store.history(1, 1).total == 2


def test_a_line_that_is_not_valid_text_is_refused_and_the_chat_goes_on(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)
    raw = b"/imagine \xff\xfe broken\n/imagine a valid fox --n 1 --steps 2\n/wait\n"
    stdin = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors="strict")
    out = io.StringIO()
    bot = build_bot(settings, engine, open_store(settings))
    try:
        asyncio.run(asyncio.wait_for(serve_console(bot, settings, stdin, out, "en"), 120))
    finally:
        bot.store.close()
    output = out.getvalue()
    assert "That line is not valid text" in output
    assert "Job #1 is done in" in output and "Job #2" not in output


def interrupted_job(
    tmp_path: Path,
    models_dir: Path,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    *,
    interrupts: int,
    shutdown_timeout: float,
) -> tuple[str, JobRecord | None]:
    """A slow job in the console, Ctrl-C `interrupts` times once it runs: what the console
    said, and the job as the database has it after."""
    settings = console_settings(tmp_path, models_dir, shutdown_timeout=shutdown_timeout)
    original = engine.run_batch

    def slow_batch(jobs: Any, progress: Any, cancels: Any, *args: Any, **kwargs: Any) -> Any:
        def slowly(event: Any) -> None:
            time.sleep(0.05)
            progress(event)

        return original(jobs, slowly, cancels, *args, **kwargs)

    monkeypatch.setattr(engine, "run_batch", slow_batch)
    out = io.StringIO()
    waiting = threading.Event()

    def interrupt() -> None:
        deadline = time.monotonic() + 60
        while "Job #1: step 2/" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(interrupts):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)

    def never() -> str | None:
        waiting.wait(0.05)
        return None

    stdin = ScriptedInput(["/imagine a patient fox --n 1 --steps 60", never])
    bot = build_bot(settings, engine, open_store(settings))
    sender = threading.Thread(target=interrupt, daemon=True)
    sender.start()
    try:
        asyncio.run(asyncio.wait_for(serve_console(bot, settings, stdin, out, "en"), 120))
    finally:
        waiting.set()
        bot.store.close()
    return out.getvalue(), Store(settings.database_url).job(1)


def test_a_second_ctrl_c_stops_at_once_and_queues_the_running_job_again(
    tmp_path: Path, models_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, job = interrupted_job(
        tmp_path, models_dir, engine, monkeypatch, interrupts=2, shutdown_timeout=120
    )
    assert "Shutting down: the running job may finish" in output
    assert "Stopped at once; 1 running job(s) go back to the queue" in output
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0


def test_the_shutdown_timeout_running_out_is_said_and_the_job_is_queued_again(
    tmp_path: Path, models_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One Ctrl-C, and the running job outlasts EASEL_SHUTDOWN_TIMEOUT: the console says it
    was stopped and goes back to the queue, as a second Ctrl-C does."""
    output, job = interrupted_job(
        tmp_path, models_dir, engine, monkeypatch, interrupts=1, shutdown_timeout=0.5
    )
    assert "Shutting down: the running job may finish" in output
    assert (
        "did not finish within EASEL_SHUTDOWN_TIMEOUT (0.5 s): stopped; 1 running job(s) go "
        "back to the queue for the next start." in output
    )
    assert "Stopped at once" not in output
    assert job is not None and job.status is JobStatus.QUEUED


def test_the_console_saves_live_previews_when_asked(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)
    previews = tmp_path / "previews"
    out = io.StringIO()
    bot = build_bot(settings, engine, open_store(settings))
    lines = ScriptedInput(["/imagine a glowing fox --n 2 --steps 4", "/wait"])
    try:
        asyncio.run(asyncio.wait_for(serve_console(bot, settings, lines, out, "en", previews), 120))
    finally:
        bot.store.close()
    output = out.getvalue()
    saved = previews / "job-1.jpg"
    assert f"Job #1: preview of step 1/4: {saved}" in output
    with Image.open(saved) as preview:
        assert preview.format == "JPEG"
        assert max(preview.size) <= 256 and preview.width == 2 * preview.height  # two images
    assert "Job #1 is done in" in output


def test_the_console_says_what_it_changed_and_refuses_what_it_cannot_read(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)
    output = chat(
        settings,
        engine,
        [
            "/imagine a small fox --size 100x100 --steps 1 --n 1",
            "easel:1:Z9",
            "/history abc",
            "/pnginfo",
            "/imagine a fox --init",
            f"/imagine a fox --init {tmp_path}",
            "/wait",
            "/quit",
        ],
    )
    assert "Job #1 is queued, position 1.\nNote: Size 100x100 was rounded to 96x96" in output
    assert "easel> easel:1:Z9\nUnknown button easel:1:Z9.\n" in output
    assert "abc is not a page number." in output
    assert "Give the image's file: /pnginfo FILE." in output
    assert "--init needs an image file: --init FILE." in output
    assert f"{tmp_path}: no such file." in output
    assert Store(settings.database_url).history(1, 1).total == 1


def test_the_timeout_line_is_in_korean_too() -> None:
    text = Message(Key.STOPPED_AT_TIMEOUT, {"count": 2, "seconds": "60"}).render("ko")
    assert "EASEL_SHUTDOWN_TIMEOUT(60초)" in text and "2개" in text
