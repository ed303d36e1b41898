"""`easel chat`: the console front end through the job service, restarts, crashes and shutdown.

Most tests drive `serve_console` in this process with the session's tiny engine; the crash test
runs `easel chat` as a real process and kills it with SIGKILL in the middle of a job, then
restarts the chat in this process on what the killed one left.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bot.cli import app
from bot.core.events import Origin, UserRef
from bot.runtime import build_bot, open_store
from bot.serve import serve_console
from bot.settings import Settings
from bot.store import Delivery, JobKind, JobStatus, Store
from pipeline.engine import Engine
from pipeline.images import format_infotext, read_infotext
from pipeline.prompts.vocabulary import Vocabulary
from tests.running_bot import bot_env

pytestmark = pytest.mark.heavy  # started first: see conftest.py

Line = str | Callable[[], str | None]


class ScriptedInput(io.TextIOBase):
    """stdin for `serve_console`: each line is text, or a callable asked for it until it
    gives one (the console reads ahead, so a line that needs earlier results waits for them)."""

    def __init__(self, lines: Iterable[Line]) -> None:
        self._lines = list(lines)

    def readline(self, size: int = -1) -> str:
        if not self._lines:
            return ""
        line = self._lines.pop(0)
        if not callable(line):
            return line + "\n"
        deadline = time.monotonic() + 60
        while (text := line()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return (text or "") + "\n"

    def isatty(self) -> bool:
        return False


def console_settings(tmp_path: Path, models_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "models_dir": models_dir,
        "outputs_dir": tmp_path / "outputs",
        "cache_dir": tmp_path / "cache",
        "database_url": f"sqlite:///{tmp_path}/easel.db",
        "progress_interval": 0,
        "device": "cpu",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def chat(
    settings: Settings,
    engine: Engine,
    lines: Iterable[Line] = (),
    locale: str = "en",
    out: io.StringIO | None = None,
    hold_bot_lock: bool = False,
) -> str:
    """One `easel chat` session in this process: its whole output. `hold_bot_lock`: claim the
    database and clear what a crash left under the outputs folder first, as `easel chat` does."""
    out = out if out is not None else io.StringIO()
    bot = build_bot(settings, engine, open_store(settings, hold_bot_lock=hold_bot_lock))
    try:
        session = serve_console(bot, settings, ScriptedInput(lines), out, locale)
        asyncio.run(asyncio.wait_for(session, 300))
    finally:
        bot.store.close()
    return out.getvalue()


def done_lines(output: str, job: int) -> int:
    return len(re.findall(rf"^Job #{job} is done in ", output, re.M))


# --------------------------------------------------------------------------- the chat itself


def test_console_chat_buttons_history_settings_and_errors(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)
    typed = "a plain line without slash is a prompt"
    output = chat(
        settings,
        engine,
        [
            "/imagine a red fox --steps 2 --n 2",
            "/wait",
            "/u 1",  # the last grid: job 1
            "/v 2 1",
            "/s 1 #1",
            "/reroll 1",
            "/wait",
            "/history",
            "/info 1",
            "/settings style=watercolor",
            f"{typed} --steps 2 --n 1",
            "/cancel 999",
            "/nonsense",
            "/help",
        ],
    )
    store = Store(settings.database_url)

    # The grid: queued, started, its steps, done with its files and buttons.
    assert "Job #1 is queued, position 1." in output
    assert "Job #1 started: a red fox" in output
    assert "Job #1: step 1/2" in output and "Job #1: step 2/2" in output
    assert re.search(r"^Job #1 is done in [\d.]+ s: a red fox \(seeds \d+, \d+\)$", output, re.M)
    grid = store.job(1, with_images=True)
    assert grid is not None
    assert (grid.kind, grid.status, grid.delivery) == (
        JobKind.IMAGINE,
        JobStatus.DONE,
        Delivery.DELIVERED,
    )
    assert grid.grid_path is not None and Path(grid.grid_path).is_file()
    assert f"  grid: {grid.grid_path}\n" in output
    assert len(grid.images) == 2
    for number, image in enumerate(grid.images, start=1):
        assert Path(image.path).is_file()
        assert f"  {number}: {image.path}\n" in output
    assert "  [U1] [U2]\n  [V1] [V2]\n  [S1] [S2]\n  [Reroll] [Remix]\n" in output

    # The buttons made children of job 1, each with its kind and image.
    children = store.children(1)
    assert [(job.id, job.kind, job.parent_id, job.image_index) for job in children] == [
        (2, JobKind.UPSCALE, 1, 0),
        (3, JobKind.VARY_STRONG, 1, 1),
        (4, JobKind.VARY_SUBTLE, 1, 0),
        (5, JobKind.REROLL, 1, None),
    ]
    assert all(job.status is JobStatus.DONE for job in children)
    assert all(job.delivery is Delivery.DELIVERED for job in children)
    upscaled = store.job(2, with_images=True)
    assert upscaled is not None and len(upscaled.images) == 1
    with Image.open(grid.images[0].path) as original, Image.open(upscaled.images[0].path) as big:
        assert big.size == (original.width * 2, original.height * 2)
    width, height = grid.images[0].width * 2, grid.images[0].height * 2
    assert f"Image 1 of job #1, upscaled to {width}x{height} (job #2)." in output
    # Under the upscaled image, and only there: zoom out and pan (typed as easel:2:Z2 ...).
    assert output.count("  [Zoom Out 2x] [Zoom Out 1.5x]\n  [⬅️] [➡️] [⬆️] [⬇️]\n") == 1
    for child in (3, 4):
        varied = store.job(child, with_images=True)
        assert varied is not None and len(varied.images) == 4
        assert all(Path(image.path).is_file() for image in varied.images)
    rerolled = store.job(5, with_images=True)
    assert rerolled is not None and len(rerolled.images) == 2
    assert {image.seed for image in rerolled.images}.isdisjoint(image.seed for image in grid.images)
    for job in range(1, 6):
        assert done_lines(output, job) == (0 if job == 2 else 1), job
    assert output.count("(job #2).") == 1

    # /history lists the five jobs, newest first; /info shows the grid again.
    assert "Your jobs, page 1 of 1 (5 in all):" in output
    history = output.split("Your jobs, page 1 of 1 (5 in all):\n", 1)[1].splitlines()[:5]
    expected = [
        (5, "reroll", "a red fox"),
        (4, "subtle variation", "a red fox"),
        (3, "strong variation", "a red fox"),
        (2, "upscale", "U1 #1"),
        (1, "imagine", "a red fox"),
    ]
    for line, (job, kind, prompt) in zip(history, expected, strict=True):
        assert re.fullmatch(rf"#{job} \d\d-\d\d \d\d:\d\d {kind}, done: {re.escape(prompt)}", line)
    assert re.search(
        r"^Job #1 \(imagine, done\) by local, \d{4}-\d\d-\d\d \d\d:\d\d UTC, 2 image\(s\): "
        r"a red fox$",
        output,
        re.M,
    )
    assert output.count(f"  grid: {grid.grid_path}\n") == 2  # the result, then /info

    # The saved style applies to the later prompt, typed without a slash.
    assert "Saved. Your defaults for new jobs:\n" in output
    assert "  style: watercolor\n" in output
    plain = store.job(6, with_images=True)
    assert plain is not None
    assert (plain.kind, plain.status, plain.parent_id) == (JobKind.IMAGINE, JobStatus.DONE, None)
    info = read_infotext(Path(plain.images[0].path))
    assert info is not None
    fragment = Vocabulary.load().get("style", "watercolor").prompt
    assert info.prompt != typed and info.prompt.startswith(typed)
    assert fragment in info.prompt and "watercolor" in info.prompt
    assert info.steps == 2
    assert done_lines(output, 6) == 1

    # Mistakes get the catalog's answers.
    assert "There is no job #999.\n" in output
    assert "Unknown command /nonsense. Type /help for the list.\n" in output
    assert "Commands:\n  /imagine PROMPT" in output
    assert store.job(7) is None
    store.close()


def test_console_speaks_korean(tmp_path: Path, models_dir: Path, engine: Engine) -> None:
    settings = console_settings(tmp_path, models_dir)
    output = chat(settings, engine, ["/imagine a cat --steps 1 --n 1", "/nonsense"], "ko")
    assert "작업 #1이(가) 대기열 1번째에 들어갔습니다." in output
    assert "알 수 없는 명령입니다: /nonsense" in output
    assert "Job #" not in output


def test_pnginfo_prints_the_parameters_of_a_generated_png(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)
    out = io.StringIO()

    def first_image() -> str | None:
        found = re.search(r"^  1: (.+\.png)$", out.getvalue(), re.M)
        return found.group(1) if found is not None else None

    missing = tmp_path / "missing.png"
    chat(
        settings,
        engine,
        [
            "/imagine a lighthouse at dusk --steps 2 --n 1 --seed 4242",
            "/wait",
            lambda: (path := first_image()) and f"/pnginfo {path}",
            f"/pnginfo {missing}",
        ],
        out=out,
    )
    output = out.getvalue()
    image = first_image()
    assert image is not None, output
    info = read_infotext(Path(image))
    assert info is not None and info.seed == 4242 and info.steps == 2
    parameters = format_infotext(info)
    assert parameters.startswith("a lighthouse at dusk")
    assert "Seed: 4242" in parameters and "Steps: 2" in parameters
    assert f"{parameters}\n" in output
    assert f"{missing}: no such file.\n" in output


# --------------------------------------------------------------------------- restarts


def test_results_finished_while_no_console_listened_are_delivered_once(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)

    async def finish_unwatched() -> int:
        bot = build_bot(settings, engine, open_store(settings))
        service = bot.service
        await service.start()
        user = UserRef("console", settings.console_user, settings.console_user, "en")
        origin = Origin("console", "local")
        options = await service.options(user, "a quiet lake --steps 2 --n 1", origin)
        ticket = await service.imagine(user, options, origin)
        await asyncio.wait_for(service.wait_until_idle("console"), 120)
        await service.stop()
        await bot.executor.close()
        bot.store.close()
        return ticket.job_id

    job_id = asyncio.run(finish_unwatched())
    with Store(settings.database_url) as store:
        job = store.job(job_id)
        assert job is not None
        assert (job.status, job.delivery) == (JobStatus.DONE, Delivery.PENDING)

    first = chat(settings, engine)
    assert done_lines(first, job_id) == 1
    assert re.search(
        rf"^Job #{job_id} is done in [\d.]+ s: a quiet lake \(seeds \d+\)$", first, re.M
    )
    with Store(settings.database_url) as store:
        job = store.job(job_id)
        assert job is not None and job.delivery is Delivery.DELIVERED

    second = chat(settings, engine)
    assert f"#{job_id}" not in second


def test_sigterm_stops_gracefully_and_keeps_the_queue(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    """With no time to finish, the running job is stopped and queued again, not failed."""
    settings = console_settings(tmp_path, models_dir, shutdown_timeout=0)
    out = io.StringIO()
    sent: list[bool] = []
    default = signal.getsignal(signal.SIGTERM)

    def stop_when_started() -> None:
        deadline = time.monotonic() + 60
        while "Job #1: step 1/" not in out.getvalue():
            if time.monotonic() > deadline:
                return  # the jobs then finish and the asserts below say so
            time.sleep(0.005)
        # serve_console's loop handler, not Python's default, which would end pytest.
        if signal.getsignal(signal.SIGTERM) == default:
            return
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_started, daemon=True)
    stopper.start()
    output = chat(
        settings,
        engine,
        [
            "/imagine a long night --steps 100 --n 1",
            "/imagine a short day --steps 2 --n 1",
        ],
        out=out,
    )
    stopper.join(5)
    assert sent, output
    assert "Shutting down: the running job may finish" in output
    assert "is done" not in output and "failed" not in output and "cancelled" not in output
    with Store(settings.database_url) as store:
        stopped, waiting = store.job(1), store.job(2)
        assert stopped is not None and waiting is not None
        # A graceful stop is not a failed attempt.
        assert (stopped.status, stopped.attempts, stopped.started_at) == (JobStatus.QUEUED, 0, None)
        assert stopped.finished_at is None and stopped.error is None
        assert (waiting.status, waiting.attempts) == (JobStatus.QUEUED, 0)
        assert [job.id for job in store.queued_jobs()] == [1, 2]
    # The signal handlers went with the loop.
    assert signal.getsignal(signal.SIGTERM) == default


def test_sigterm_ends_the_chat_while_stdin_stays_open(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    settings = console_settings(tmp_path, models_dir)
    read_end, write_end = os.pipe()
    default = signal.getsignal(signal.SIGTERM)
    sent: list[bool] = []
    ended = threading.Event()
    ended_with_stdin_open: list[bool] = []

    def stop_then_unblock() -> None:
        deadline = time.monotonic() + 30
        while signal.getsignal(signal.SIGTERM) == default:
            if time.monotonic() > deadline:
                os.close(write_end)
                return
            time.sleep(0.005)
        time.sleep(0.2)  # the console is now waiting for a line
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
        # A console that ends on the signal ends before stdin closes; a hung one needs the
        # end of input to exit, which it gets only after this wait runs out.
        ended_with_stdin_open.append(ended.wait(30))
        os.close(write_end)

    stopper = threading.Thread(target=stop_then_unblock, daemon=True)
    stopper.start()
    bot = build_bot(settings, engine, open_store(settings))
    out = io.StringIO()
    stdin = os.fdopen(read_end)
    try:
        asyncio.run(asyncio.wait_for(serve_console(bot, settings, stdin, out, "en"), 120))
        ended.set()
    finally:
        stopper.join(40)
        stdin.close()  # not before: a thread may still be reading it
        bot.store.close()
    assert sent and "Shutting down" in out.getvalue()
    assert ended_with_stdin_open == [True]


@pytest.mark.parametrize("line", ["/info 99999999999999999999", '/settings style="watercolor'])
def test_a_bad_line_does_not_end_the_chat(
    tmp_path: Path, models_dir: Path, engine: Engine, line: str
) -> None:
    settings = console_settings(tmp_path, models_dir)
    output = chat(settings, engine, [line, "/help"])
    assert "There is no job #99999999999999999999" in output or "style: watercolor" in output
    assert "Commands:" in output


# --------------------------------------------------------------------------- a real crash


EASEL_CHAT = [sys.executable, "-c", "from bot.cli import main; main()", "chat", "--lang", "en"]


def test_sigkill_mid_job_then_restart_finishes_every_job_once(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    env = bot_env(tmp_path, models_dir)
    (tmp_path / "work").mkdir()
    stderr = (tmp_path / "stderr-1.txt").open("w")
    process = subprocess.Popen(
        EASEL_CHAT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        cwd=tmp_path / "work",
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        assert process.stdin is not None
        # Three jobs of different sizes or steps, so each runs as its own batch, in order.
        # stdin stays open: the process would otherwise finish the jobs and exit.
        process.stdin.write(
            "/imagine a quick sketch --steps 2 --n 1\n"
            "/imagine a slow painting --steps 60 --n 1\n"
            "/imagine a small study --steps 3 --n 1\n"
        )
        process.stdin.flush()
        deadline = time.monotonic() + 120
        while not ("Job #1 is done" in "".join(seen) and "Job #2: step 1/60\n" in seen):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("no job 2 step in time:\n" + "".join(seen))
            if line is None:
                pytest.fail("easel chat ended early:\n" + "".join(seen))
            seen.append(line)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        stderr.close()
        with contextlib.suppress(OSError):
            process.stdin.close()  # type: ignore[union-attr]
    assert process.returncode == -signal.SIGKILL
    while (line := lines.get(timeout=10)) is not None:
        seen.append(line)
    process.stdout.close()  # type: ignore[union-attr]
    first = "".join(seen)

    url = env["DATABASE_URL"]
    with Store(url) as store:
        states = {job: store.job(job) for job in (1, 2, 3)}
        assert all(job is not None for job in states.values())
        assert [(job.status, job.attempts) for job in states.values() if job] == [
            (JobStatus.DONE, 1),
            (JobStatus.RUNNING, 1),
            (JobStatus.QUEUED, 0),
        ]
        assert states[1] is not None and states[1].delivery is Delivery.DELIVERED

    # The restart runs in this process, on the same database and folders: what it resumes
    # comes from the rows the killed process left, and it claims the database as `easel chat`
    # does (the OS dropped the dead process's lock).
    second = chat(console_settings(tmp_path, models_dir), engine, hold_bot_lock=True)

    with Store(url) as store:
        for job_id, attempts in ((1, 1), (2, 2), (3, 1)):
            job = store.job(job_id, with_images=True)
            assert job is not None
            assert (job.status, job.delivery, job.attempts) == (
                JobStatus.DONE,
                Delivery.DELIVERED,
                attempts,
            ), job_id
            assert len(job.images) == 1 and Path(job.images[0].path).is_file()
        assert store.job(4) is None
    # Nothing lost, nothing twice: job 1 was delivered before the kill, 2 and 3 after it.
    assert done_lines(first, 1) == 1 and done_lines(second, 1) == 0
    for job_id in (2, 3):
        assert done_lines(first, job_id) == 0 and done_lines(second, job_id) == 1, second
    assert "Job #2 started: a slow painting" in second
    assert "Job #3 started: a small study" in second


# --------------------------------------------------------------------------- easel db


def test_db_upgrade_and_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    url = f"sqlite:///{tmp_path}/cli.db"
    env = {"DATABASE_URL": url}
    runner = CliRunner()
    with Store(url) as store:
        head = store.head()

    before = runner.invoke(app, ["db", "current"], env=env)
    assert before.exit_code == 0, before.output
    assert "No database yet" in before.output
    assert not (tmp_path / "cli.db").exists()  # looking creates nothing

    upgraded = runner.invoke(app, ["db", "upgrade"], env=env)
    assert upgraded.exit_code == 0, upgraded.output
    assert f"at revision {head}" in upgraded.output

    after = runner.invoke(app, ["db", "current"], env=env)
    assert after.exit_code == 0, after.output
    assert f"revision {head} (up to date)" in after.output

    again = runner.invoke(app, ["db", "upgrade"], env=env)
    assert again.exit_code == 0 and f"at revision {head}" in again.output
