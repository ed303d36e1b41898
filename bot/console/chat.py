"""The console front end: reads chat lines, prints replies and job events.

Thin like the other front ends: it maps lines to `JobService` calls and replies to text. A line
without a leading slash is an /imagine prompt. `/u 2` and friends act on the last grid this
console received unless a job number follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bot.core.events import EventKind, JobEvent, Origin, Refusal, Reply, Ticket, UserRef
from bot.core.messages import Key, Message
from bot.core.service import JobService
from pipeline.errors import first_line

log = logging.getLogger(__name__)
PLATFORM = "console"
CHAT = "local"


@dataclass(frozen=True)
class _Command:
    name: str
    args: str


def parse_command(line: str) -> _Command:
    text = line.strip()
    if not text.startswith("/"):
        return _Command("imagine", text)
    name, _, rest = text[1:].partition(" ")
    return _Command(name.lower(), rest.strip())


class ConsoleChat:
    def __init__(self, service: JobService, user: UserRef, out: TextIO, locale: str = "en") -> None:
        self.service = service
        self.user = user
        self.out = out
        self.locale = locale
        self.origin = Origin(PLATFORM, CHAT)
        self.last_grid: int | None = None
        self._handlers: dict[str, Callable[[str], Awaitable[None]]] = {
            "imagine": self._imagine,
            "u": self._button("U"),
            "v": self._button("V"),
            "s": self._button("S"),
            "reroll": self._reroll,
            "history": self._history,
            "info": self._info,
            "cancel": self._cancel,
            "settings": self._settings,
            "pnginfo": self._pnginfo,
            "wait": self._wait,
            "help": self._help,
        }

    async def run(self, lines: AsyncIterator[str]) -> None:
        """Handle lines until input ends, then wait for this console's jobs to finish."""
        async for line in lines:
            if line.strip():
                await self.handle(line)
        await self.service.wait_until_idle(PLATFORM)

    async def handle(self, line: str) -> None:
        command = parse_command(line)
        handler = self._handlers.get(command.name)
        if handler is None:
            self._say(Message(Key.UNKNOWN_COMMAND, {"command": f"/{command.name}"}))
            return
        try:
            await handler(command.args)
        except Refusal as refusal:
            self._print_reply(refusal.reply)
        except Exception as error:  # one bad line must not end the chat
            log.exception("Console command %r failed", command.name)
            self._say(Message(Key.COMMAND_FAILED, {"detail": first_line(error)}))

    # ------------------------------------------------------------------ commands

    async def _imagine(self, text: str) -> None:
        options = self.service.options(self.user, text, self.origin)
        self._print_ticket(await self.service.imagine(self.user, options, self.origin))

    def _button(self, letter: str) -> Callable[[str], Awaitable[None]]:
        async def press(args: str) -> None:
            words = args.split()
            index = words[0] if words else ""
            job = self._job_argument(words[1:])
            ticket = await self.service.act(self.user, job, f"{letter}{index}", self.origin)
            self._print_ticket(ticket)

        return press

    async def _reroll(self, args: str) -> None:
        job = self._job_argument(args.split())
        self._print_ticket(await self.service.act(self.user, job, "reroll", self.origin))

    async def _history(self, args: str) -> None:
        page = int(args) if args.strip().isdigit() else 1
        self._print_reply(self.service.history(self.user, page))

    async def _info(self, args: str) -> None:
        self._print_reply(self.service.info(self._job_argument(args.split()), self.user))

    async def _cancel(self, args: str) -> None:
        self._print_reply(await self.service.cancel(self.user, self._job_argument(args.split())))

    async def _settings(self, args: str) -> None:
        if not args.strip():
            self._print_reply(self.service.settings(self.user))
            return
        changes = {}
        try:
            pairs = shlex.split(args)
        except ValueError:  # an unclosed quote
            pairs = args.split()
        for pair in pairs:
            name, _, value = pair.partition("=")
            changes[name] = value
        self._print_reply(self.service.update_settings(self.user, changes))

    async def _pnginfo(self, args: str) -> None:
        path = Path(args.strip().strip("'\"")).expanduser()
        if not path.is_file():
            self.out.write(f"{path}: no such file\n")
            return
        self._print_reply(self.service.pnginfo(path.read_bytes()))

    async def _wait(self, _: str) -> None:
        await self.service.wait_until_idle(PLATFORM)

    async def _help(self, _: str) -> None:
        self._say(Message(Key.HELP))

    def _job_argument(self, words: list[str]) -> int:
        number = words[0].lstrip("#") if words else ""
        if number.isascii() and number.isdigit():
            return int(number)
        if self.last_grid is None:
            raise Refusal(Message(Key.NO_LAST_GRID))
        return self.last_grid

    # ------------------------------------------------------------------ output

    async def on_event(self, event: JobEvent) -> None:
        if event.kind is EventKind.QUEUED:
            return  # the ticket already said it
        if event.kind is EventKind.FINISHED and event.reply.buttons:
            self.last_grid = event.job_id
        self._print_reply(event.reply)

    def _print_ticket(self, ticket: Ticket) -> None:
        self._print_reply(ticket.reply)

    def _print_reply(self, reply: Reply) -> None:
        lines = [reply.text(self.locale)]
        if reply.grid is not None:
            lines.append(f"  grid: {reply.grid}")
        lines += [f"  {index}: {path}" for index, path in enumerate(reply.images, start=1)]
        for row in reply.buttons:
            lines.append("  [" + "] [".join(button.text(self.locale) for button in row) + "]")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    def _say(self, message: Message) -> None:
        self._print_reply(Reply(message))


async def read_lines(
    stream: TextIO, prompt: str | None = None, out: TextIO | None = None
) -> AsyncIterator[str]:
    """Lines from a blocking stream without blocking the event loop; ends at end of input.

    A daemon thread does the reading: a thread blocked in `readline` can be neither
    cancelled nor joined, and asyncio's own worker threads are joined at exit, so a stop
    (SIGTERM) would hang until the user pressed Enter.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def hand_over(line: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(lines.put_nowait, line)

    def read() -> None:
        while True:
            if prompt and out is not None:
                out.write(prompt)
                out.flush()
            line = stream.readline()
            hand_over(line)
            if not line:
                return

    threading.Thread(target=read, name="easel-console-input", daemon=True).start()
    while line := await lines.get():
        yield line
