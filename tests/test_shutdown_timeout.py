"""One Ctrl-C, and the running job outlasts EASEL_SHUTDOWN_TIMEOUT: the console says it was
stopped and goes back to the queue, as a second Ctrl-C does."""

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

from bot.core.messages import Key, Message
from bot.runtime import build_bot, open_store
from bot.serve import serve_console
from bot.store import JobStatus, Store
from pipeline.engine import Engine
from tests.test_console import ScriptedInput, console_settings


def test_the_shutdown_timeout_running_out_is_said_and_the_job_is_queued_again(
    tmp_path: Path, models_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = console_settings(tmp_path, models_dir, shutdown_timeout=0.5)
    original = engine.run_batch

    def slow_batch(jobs: Any, progress: Any, cancels: Any, *args: Any, **kwargs: Any) -> Any:
        def slowly(event: Any) -> None:
            time.sleep(0.05)
            progress(event)

        return original(jobs, slowly, cancels, *args, **kwargs)

    monkeypatch.setattr(engine, "run_batch", slow_batch)
    out = io.StringIO()
    waiting = threading.Event()

    def interrupt_once() -> None:
        deadline = time.monotonic() + 60
        while "Job #1: step 2/" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    def never() -> str | None:
        waiting.wait(0.05)
        return None

    stdin = ScriptedInput(["/imagine a patient fox --n 1 --steps 60", never])
    bot = build_bot(settings, engine, open_store(settings))
    sender = threading.Thread(target=interrupt_once, daemon=True)
    sender.start()
    try:
        asyncio.run(asyncio.wait_for(serve_console(bot, settings, stdin, out, "en"), 120))
    finally:
        waiting.set()
        bot.store.close()
    output = out.getvalue()
    assert "Shutting down: the running job may finish" in output
    assert (
        "did not finish within EASEL_SHUTDOWN_TIMEOUT (0.5 s): stopped; 1 running job(s) go "
        "back to the queue for the next start." in output
    )
    assert "Stopped at once" not in output
    job = Store(settings.database_url).job(1)
    assert job is not None and job.status is JobStatus.QUEUED


def test_the_timeout_line_is_in_korean_too() -> None:
    text = Message(Key.STOPPED_AT_TIMEOUT, {"count": 2, "seconds": "60"}).render("ko")
    assert "EASEL_SHUTDOWN_TIMEOUT(60초)" in text and "2개" in text
