"""The console front end: reads chat lines, prints replies and job events.

The reference front end, and as thin as the others: lines go to the core's text router,
replies and events come back as text. What only a terminal has lives here: files named by
path (`/pnginfo FILE`, `--init FILE`), saving previews to a folder, line editing, and the
commands that end the chat (`/quit`) or wait for it (`/wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bot.core.events import EventKind, JobEvent, Origin, Refusal, Reply, UserRef
from bot.core.frontend import BotContext
from bot.core.messages import Key, Message, job_count
from bot.core.router import TextRequest
from pipeline.errors import EaselError

log = logging.getLogger(__name__)
PLATFORM = "console"
CHAT = "local"
PROMPT = "easel> "
_INIT_FLAG = re.compile(r"""(?:^|\s)--init(?:\s+("[^"]*"|'[^']*'|(?!--)\S+))?""")


@dataclass(frozen=True)
class Terminal:
    """How the console talks to a person: `interactive` when stdin is a terminal (a prompt,
    line editing); otherwise each line read is echoed after the prompt, so a transcript
    reads like a conversation."""

    out: TextIO
    interactive: bool = False
    redraw: Callable[[], None] | None = None  # draws the prompt and the line being typed
    # Set while the prompt is shown and a line is being typed (only then is it redrawn).
    typing: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)  # the chat is ending


class ConsoleChat:
    def __init__(
        self,
        context: BotContext,
        user: UserRef,
        terminal: Terminal,
        locale: str = "en",
        previews_dir: Path | None = None,
        shutdown_seconds: float = 60.0,
    ) -> None:
        self.service = context.service
        self.user = user
        self.terminal = terminal
        self.locale = locale
        self.previews_dir = previews_dir
        self.shutdown_seconds = shutdown_seconds
        self.origin = Origin(PLATFORM, CHAT)
        self.router = context.router(PLATFORM, {"wait": self._wait, "quit": self._quit})
        self.quit = asyncio.Event()
        self.editable: str | None = None  # a remix line to offer at the next prompt
        # Jobs this console cancelled, and those whose CANCELLED event it showed: one
        # cancellation is said once, whichever of the reply and the event comes first.
        self._cancel_replied: set[int] = set()
        self._cancel_shown: set[int] = set()

    async def run(self, lines: AsyncIterator[str], ready: threading.Event | None = None) -> None:
        """Handle lines until input ends or /quit, then wait for this console's jobs (when
        input ended). `ready` is set whenever the chat can take the next line."""
        async for line in lines:
            if line.strip():
                await self.handle(line)
            if self.quit.is_set():
                return  # no prompt again: the chat is ending
            if ready is not None:
                ready.set()
        queued = await self.service.wait_until_idle_or_paused(PLATFORM)
        if queued:
            self._print_reply(Reply(Message(Key.PAUSED_JOBS_STAY, {"jobs": job_count(queued)})))

    def close(self) -> None:
        """The chat is ending: no prompt is drawn again and progress is not shown."""
        self.terminal.closed.set()

    async def handle(self, line: str) -> None:
        if not self.terminal.interactive:
            self._write(PROMPT + line.rstrip("\n"))
        if "\ufffd" in line:  # bytes that were not valid text (stdin decodes with "replace")
            self._print_reply(Reply(Message(Key.INVALID_TEXT)))
            return
        try:
            text, attachment = self._attachment(line)
        except Refusal as refusal:
            self._print_reply(refusal.reply)
            return
        routed = await self.router.route(
            TextRequest(self.user, self.origin, text, attachment=attachment)
        )
        if routed.reply is not None:
            if not self._said_already(routed.reply):
                self._print_reply(routed.reply)
            self.editable = routed.reply.editable

    def _attachment(self, line: str) -> tuple[str, bytes | None]:
        """A file named on the line: `/pnginfo FILE`, or `--init FILE` in an /imagine."""
        text = line.strip()
        if text.lower().startswith("/pnginfo"):
            name = text[len("/pnginfo") :].strip()
            if not name:
                raise Refusal(Message(Key.NEED_FILE))
            return "/pnginfo", _read_file(_unquote(name))
        match = _INIT_FLAG.search(text)
        if match is None:
            return text, None
        if match.group(1) is None:
            raise Refusal(Message(Key.INIT_NEEDS_FILE))
        data = _read_file(_unquote(match.group(1)))
        return (text[: match.start()] + text[match.end() :]).strip(), data

    # ------------------------------------------------------------------ local commands

    async def _wait(self, _: TextRequest, __: str) -> Reply | None:
        queued = await self.service.wait_until_idle_or_paused(PLATFORM)
        if queued:
            return Reply(Message(Key.PAUSED_WAIT, {"jobs": job_count(queued)}))
        return None

    async def _quit(self, _: TextRequest, __: str) -> Reply | None:
        self.quit.set()
        if not self.service.is_busy():
            return None
        seconds = round(self.shutdown_seconds)
        return Reply(Message(Key.QUITTING, {"seconds": seconds}))

    # ------------------------------------------------------------------ output

    async def on_event(self, event: JobEvent) -> None:
        if event.kind is EventKind.QUEUED and event.reply.message.key is not Key.QUEUED_BY_OPERATOR:
            return  # the ticket already said it
        if event.kind is EventKind.CANCELLED:
            if event.job_id in self._cancel_replied:
                self._cancel_replied.discard(event.job_id)
                return
            self._cancel_shown.add(event.job_id)
        if event.kind is EventKind.PROGRESS and self.terminal.closed.is_set():
            return
        if event.kind is EventKind.PROGRESS and event.preview is not None and self.previews_dir:
            path = await asyncio.to_thread(self._save_preview, event.job_id, event.preview)
            step, total = event.step or 0, event.total or 0
            args = {"job": event.job_id, "step": step, "total": total, "path": str(path)}
            self._print_reply(Reply(Message(Key.PREVIEW_SAVED, args)))
            return
        self._print_reply(event.reply)

    def _said_already(self, reply: Reply) -> bool:
        """Whether a /cancel's reply repeats the CANCELLED event already shown (a queued
        job's cancellation is both); the other way round, the event is not shown."""
        if reply.message.key is not Key.CANCELLED:
            return False
        job = reply.message.args.get("job")
        if not isinstance(job, int):
            return False
        if job in self._cancel_shown:
            self._cancel_shown.discard(job)
            return True
        self._cancel_replied.add(job)
        return False

    def _save_preview(self, job_id: int, preview: bytes) -> Path:
        assert self.previews_dir is not None
        self.previews_dir.mkdir(parents=True, exist_ok=True)
        path = self.previews_dir / f"job-{job_id}.jpg"
        partial = path.with_suffix(".part")
        partial.write_bytes(preview)
        partial.replace(path)
        return path

    def _print_reply(self, reply: Reply) -> None:
        lines = [reply.text(self.locale)]
        if reply.editable is not None:
            lines.append(f"  {reply.editable}")
        if reply.grid is not None:
            lines.append(f"  grid: {reply.grid}")
        lines += [f"  {index}: {path}" for index, path in enumerate(reply.images, start=1)]
        lines += [f"  map: {path}" for path in reply.attachments]  # a --cn-show job's
        for row in reply.buttons:
            lines.append("  [" + "] [".join(button.text(self.locale) for button in row) + "]")
        self._write("\n".join(lines))

    def _write(self, text: str) -> None:
        """Print above the line being typed, then draw the prompt and that line again."""
        out = self.terminal.out
        terminal = self.terminal
        typing = terminal.typing.is_set() and not terminal.closed.is_set()
        if terminal.interactive and terminal.redraw is not None and typing:
            out.write("\r\x1b[K" + text + "\n")
            out.flush()
            terminal.redraw()
        else:
            out.write(text + "\n")
        out.flush()


def previews_folder(path: Path) -> Path:
    """The folder `--previews` names, created now: a file there, or a folder that cannot be
    made, is one clear error at the start rather than a traceback at every preview."""
    folder = path.expanduser()
    if folder.exists() and not folder.is_dir():
        raise EaselError(f"--previews {path}: that is a file, not a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EaselError(
            f"--previews {path}: cannot create the folder ({error.strerror or error})."
        ) from None
    return folder


def _unquote(text: str) -> str:
    try:
        parts = shlex.split(text)
    except ValueError:
        return text.strip()
    return parts[0] if len(parts) == 1 else text.strip()


def _read_file(name: str) -> bytes:
    path = Path(name).expanduser()
    if not path.is_file():  # missing, or a folder
        raise Refusal(Message(Key.NO_SUCH_FILE, {"path": str(path)}))
    return path.read_bytes()


async def read_lines(
    stream: TextIO,
    terminal: Terminal,
    ready: threading.Event,
    offer: Callable[[], str | None] = lambda: None,
) -> AsyncIterator[str]:
    """Lines from a blocking stream without blocking the event loop; ends at end of input.

    A daemon thread does the reading: a thread blocked in `readline` can be neither
    cancelled nor joined, and asyncio's own worker threads are joined at exit, so a stop
    (SIGTERM) would hang until the user pressed Enter. On a terminal the thread waits for
    the previous line's reply (`ready`) before it shows the prompt again, and `offer` gives
    a line to start the next input with (a remix to edit).
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def hand_over(line: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(lines.put_nowait, line)

    def read() -> None:
        while True:
            ready.wait()
            ready.clear()
            line = _read_one(stream, terminal, offer())
            hand_over(line)
            if not line:
                return

    threading.Thread(target=read, name="easel-console-input", daemon=True).start()
    while line := await lines.get():
        yield line


def _read_one(stream: TextIO, terminal: Terminal, prefill: str | None) -> str:
    if not terminal.interactive:
        return stream.readline()
    import readline

    readline.set_startup_hook((lambda: readline.insert_text(prefill)) if prefill else None)
    terminal.typing.set()
    try:
        return input(PROMPT) + "\n"
    except EOFError:
        terminal.out.write("\n")
        return ""
    finally:
        terminal.typing.clear()
        readline.set_startup_hook(None)
