"""Running the bot: the console chat, or the chat platforms whose tokens are set.

SIGINT and SIGTERM stop it gracefully: no new batch starts, the running one may finish (it is
stopped and queued again after `EASEL_SHUTDOWN_TIMEOUT`), and the queue stays in the database.
A second SIGINT stops at once: the running batch goes back to the queue for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

from bot.console.chat import PLATFORM, PROMPT, ConsoleChat, Terminal, read_lines
from bot.core.events import UserRef
from bot.core.frontend import BotContext, FrontEnd
from bot.core.messages import Key, Message, normalise_locale
from bot.runtime import Bot
from bot.settings import Settings
from bot.store import Role
from pipeline.errors import EaselError

# Front ends by the token that turns them on; each module offers `PLATFORM` and
# `async def serve(context, settings, stop)` (bot.core.frontend.FrontEnd). They are separate
# packages so that a missing one is a clear error, not a crash.
FRONT_ENDS = {"discord_token": "bot.discord", "telegram_token": "bot.telegram"}
log = logging.getLogger(__name__)


@dataclass
class Stop:
    """SIGINT/SIGTERM: `graceful` at the first, `now` at a second SIGINT."""

    graceful: asyncio.Event
    now: asyncio.Event


def wanted_front_ends(settings: Settings) -> list[str]:
    return [module for token, module in FRONT_ENDS.items() if getattr(settings, token) is not None]


async def serve_console(
    bot: Bot,
    settings: Settings,
    stdin: TextIO,
    stdout: TextIO,
    locale: str,
    previews_dir: Path | None = None,
) -> None:
    """`easel chat`: one local user (an admin) chatting through the job service."""
    context = BotContext(bot.service)
    user = UserRef(PLATFORM, settings.console_user, settings.console_user, locale)
    await context.service.grant_role(user, Role.ADMIN)
    # Line editing and history need the process's own terminal (readline works on fd 0/1).
    interactive = stdin is sys.stdin and stdin.isatty() and stdout.isatty()
    if hasattr(stdin, "reconfigure"):  # a bad byte is a bad line, not a dead chat
        stdin.reconfigure(errors="replace")
    terminal = Terminal(stdout, interactive, _redraw_line if interactive else None)
    chat = ConsoleChat(context, user, terminal, locale, previews_dir, settings.shutdown_timeout)
    context.service.subscribe(PLATFORM, chat.on_event, previews=previews_dir is not None)
    stop = _stop_on_signals()
    async with _running(bot, stop, stdout, locale, chat.close):
        await context.service.deliver_missed(PLATFORM)
        ready = threading.Event()
        ready.set()
        lines = read_lines(stdin, terminal, ready, lambda: chat.editable)
        await _until_stopped(chat.run(lines, ready), context, stop)


def load_front_ends(modules: list[str]) -> list[FrontEnd]:
    """The front-end modules for the tokens that are set; a missing one is a clear error
    before anything slow (the model) is loaded."""
    loaded: list[FrontEnd] = []
    for name in modules:
        try:
            loaded.append(cast(FrontEnd, importlib.import_module(name)))
        except ModuleNotFoundError as error:
            if error.name != name:  # the front end is there, a library it needs is not
                raise EaselError(
                    f"The {name} front end needs the Python package {error.name!r}, which is "
                    "not installed; `make install` installs it."
                ) from None
            platform = name.split(".")[-1].capitalize()
            token = f"{platform.upper()}_TOKEN"
            raise EaselError(
                f"{token} is set, but this version of Easel has no {platform} front end yet. "
                f"Unset {token} to run without it."
            ) from None
    return loaded


async def serve_front_ends(bot: Bot, settings: Settings, front_ends: list[FrontEnd]) -> None:
    """`easel run` with tokens: each platform's front end until SIGINT or SIGTERM."""
    context = BotContext(bot.service)
    stop = _stop_on_signals()
    async with _running(bot, stop, None, "en"):
        serving = asyncio.gather(
            *(module.serve(context, settings, stop.graceful) for module in front_ends)
        )
        await _until_stopped(serving, context, stop)


async def _until_stopped(work: Awaitable[None], context: BotContext, stop: Stop) -> None:
    """Run the front end's work until it ends, a stop signal, or a database failure that
    the bot cannot go on with (then that error, for `easel` to print)."""
    working = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.graceful.wait())
    failing = asyncio.create_task(context.service.failed())
    done, _ = await asyncio.wait({working, stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
    for task in (working, stopping, failing):
        if task not in done:
            task.cancel()
    if failing in done:
        raise failing.result()
    if working in done:
        working.result()


@contextlib.asynccontextmanager
async def _running(
    bot: Bot,
    stop: Stop,
    out: TextIO | None,
    locale: str,
    closing: Callable[[], None] = lambda: None,
) -> AsyncIterator[None]:
    """The job service started, then stopped however the body ends: gracefully, or at
    once when a second SIGINT arrives during the stop."""
    await bot.service.start()
    try:
        yield
    finally:
        closing()
        if stop.graceful.is_set() and out is not None:
            _say(out, Message(Key.SHUTTING_DOWN).render(locale))
        stopping = asyncio.create_task(bot.service.stop())
        hurry = asyncio.create_task(stop.now.wait())
        done, _ = await asyncio.wait({stopping, hurry}, return_when=asyncio.FIRST_COMPLETED)
        if hurry in done:
            count = bot.service.stop_now()
            if out is not None:
                _say(out, Message(Key.STOPPED_NOW, {"count": count}).render(locale))
            await stopping
        else:
            hurry.cancel()
            stopped = 0 if stopping.exception() else stopping.result()
            if stopped:  # the graceful stop's timeout ran out
                _tell(out, locale, _timed_out(stopped, bot))
        await bot.executor.close()


def _timed_out(count: int, bot: Bot) -> Message:
    seconds = f"{bot.service.config.shutdown_timeout:g}"
    return Message(Key.STOPPED_AT_TIMEOUT, {"count": count, "seconds": seconds})


def _tell(out: TextIO | None, locale: str, message: Message) -> None:
    """On the console when there is one, else in the log (the chat front ends' terminal)."""
    if out is not None:
        _say(out, message.render(locale))
    else:
        log.warning("%s", message.render("en"))


def _say(out: TextIO, text: str) -> None:
    if out.isatty():  # over the prompt line, which is not being typed on any more
        out.write("\r\x1b[K")
    out.write(text + "\n")
    out.flush()


def _stop_on_signals() -> Stop:
    stop = Stop(asyncio.Event(), asyncio.Event())
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        (stop.now if stop.graceful.is_set() else stop.graceful).set()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
        loop.add_signal_handler(signal.SIGINT, interrupted)
        loop.add_signal_handler(signal.SIGTERM, stop.graceful.set)
    return stop


def _redraw_line() -> None:
    """Readline draws its prompt and the line being typed again, cursor and all, on the
    line below what was just printed (GNU readline's rl_on_new_line; a plain redraw of the
    text where the library has no such call)."""
    import readline

    on_new_line = _rl_on_new_line()
    if on_new_line is None:
        sys.stdout.write(PROMPT + readline.get_line_buffer())
        sys.stdout.flush()
        return
    on_new_line()
    readline.redisplay()


@functools.cache
def _rl_on_new_line() -> Callable[[], int] | None:
    import ctypes
    import readline

    try:
        return ctypes.CDLL(readline.__file__).rl_on_new_line  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def console_locale(requested: str | None) -> str:
    """--lang, else the terminal's LANG (ko_KR.UTF-8 is Korean), else English."""
    return normalise_locale(requested or os.environ.get("LANG") or "en")
