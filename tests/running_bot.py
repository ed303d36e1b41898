"""A real `easel chat` process on the tiny model, for tests of what reaches a running bot
from outside it: start it on a temporary database, feed it lines, read its output with
bounded waits, run the operator's commands against the same database, and stop it."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from typer.testing import CliRunner, Result

from bot.cli import app
from bot.store import Store

REPO = Path(__file__).resolve().parent.parent
# `easel` as a process: main(), then the objects it made are frozen out of the interpreter's
# last garbage collection, which walks everything torch and diffusers built and takes seconds
# here; the OS frees the memory. Tests of how the process itself ends (Ctrl-C, the installed
# script) run main() or the script plainly.
EASEL_MAIN = "import gc\nfrom bot.cli import main\ntry:\n    main()\nfinally:\n    gc.freeze()\n"
EASEL = [sys.executable, "-c", EASEL_MAIN]
EASEL_CHAT = [*EASEL, "chat", "--lang", "en"]
START_TIMEOUT = 180.0  # loading the tiny model on a busy machine
WAIT_TIMEOUT = 120.0  # any one expected line
STOP_TIMEOUT = 60.0
QUEUED = re.compile(r"^Job #(\d+) is queued")


class BotGone(AssertionError):
    """The bot's output ended, or an expected line did not come in time."""


def bot_env(root: Path, models_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of an `easel chat` on the tiny SD 1.x model, on the CPU, with its
    database, outputs and cache under `root`; each step is reported (no progress interval)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("EASEL_") and name not in {"DATABASE_URL", "LANG", "LC_ALL"}
    }
    env.update(
        EASEL_MODELS_DIR=str(models_dir),
        EASEL_MODEL="tiny-sd1",
        EASEL_OUTPUTS_DIR=str(root / "outputs"),
        EASEL_CACHE_DIR=str(root / "cache"),
        EASEL_DEVICE="cpu",
        EASEL_PROGRESS_INTERVAL="0",
        DATABASE_URL=f"sqlite:///{root}/easel.db",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        # One thread: on a busy machine, torch's spinning worker threads make a step slower.
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.update(extra)
    return env


class RunningBot:
    """One `easel chat` process. Every wait has a timeout and fails with the transcript."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.database_url = env["DATABASE_URL"]
        work = root / "work"
        work.mkdir(parents=True, exist_ok=True)
        self._stderr: IO[str] = (root / "stderr.txt").open("w")
        self.process = subprocess.Popen(
            EASEL_CHAT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            cwd=work,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._cursor = 0  # lines before it were taken by `expect`
        self._ended = False
        threading.Thread(target=self._pump, name="running-bot-output", daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    # ------------------------------------------------------------------ talking to it

    def send(self, *lines: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("".join(line + "\n" for line in lines))
        self.process.stdin.flush()

    def expect(
        self, pattern: str | re.Pattern[str], timeout: float = WAIT_TIMEOUT
    ) -> re.Match[str]:
        """The first line from the cursor on that matches (a regex searched in each line);
        the cursor moves past it. Waits up to `timeout` seconds for it to be printed."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for index in range(self._cursor, len(self.seen)):
                match = regex.search(self.seen[index])
                if match is not None:
                    self._cursor = index + 1
                    return match
            self._cursor = len(self.seen)
            self._take_line(deadline, f"a line matching {regex.pattern!r}")

    def seen_since_start(self, pattern: str | re.Pattern[str]) -> list[re.Match[str]]:
        """Every line printed so far that matches, without waiting."""
        self._drain()
        regex = re.compile(pattern)
        return [match for line in self.seen if (match := regex.search(line)) is not None]

    def submit(self, line: str, timeout: float = WAIT_TIMEOUT) -> int:
        """Send a job's line; the job's number, from the queued reply."""
        self.send(line)
        return int(self.expect(QUEUED, timeout).group(1))

    def transcript(self) -> str:
        self._drain()
        return "\n".join(self.seen)

    def _take_line(self, deadline: float, wanted: str) -> None:
        if self._ended:
            raise BotGone(f"easel chat ended before {wanted}:\n{self._story()}")
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise BotGone(f"no {wanted} in time:\n{self._story()}") from None
        if line is None:
            self._ended = True
        else:
            self.seen.append(line)

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while not self._ended:
                line = self._lines.get_nowait()
                if line is None:
                    self._ended = True
                else:
                    self.seen.append(line)

    def _story(self) -> str:
        self._stderr.flush()
        errors = (self.root / "stderr.txt").read_text(errors="replace")[-4000:]
        return "\n".join(self.seen[-80:]) + "\n--- stderr ---\n" + errors

    # ------------------------------------------------------------------ beside it

    def cli(self, *args: str) -> Result:
        """An operator's command (`easel ARGS`) on the bot's database, in this process."""
        env = {
            "DATABASE_URL": self.database_url,
            "EASEL_MODELS_DIR": self.env["EASEL_MODELS_DIR"],
            "EASEL_OUTPUTS_DIR": self.env["EASEL_OUTPUTS_DIR"],
            "EASEL_LANG": "en",
            "COLUMNS": "200",
        }
        return CliRunner().invoke(app, list(args), env=env)

    def store(self) -> Store:
        """The bot's database, opened beside it (close it, or use it in a `with`)."""
        return Store(self.database_url)

    # ------------------------------------------------------------------ the end

    def stop(self) -> int:
        """End input (the chat finishes its jobs and exits); killed if it does not."""
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        self._stderr.close()
        (self.root / "transcript.txt").write_text(self.transcript() + "\n")  # for a failure
        return self.process.returncode


@contextlib.contextmanager
def running_bot(root: Path, models_dir: Path, **extra_env: str) -> Iterator[RunningBot]:
    """A started `easel chat` whose database is ready for the operator's commands."""
    bot = RunningBot(root, bot_env(root, models_dir, **extra_env))
    try:
        bot.send("/help")  # answered once the bot is up, its database migrated
        bot.expect(r"/imagine", START_TIMEOUT)
        yield bot
    finally:
        bot.stop()
