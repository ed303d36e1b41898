"""Running the bot: the console chat, or the chat platforms whose tokens are set.

SIGINT and SIGTERM stop it gracefully: no new batch starts, the running one may finish (it is
stopped and queued again after `EASEL_SHUTDOWN_TIMEOUT`), and the queue stays in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
from types import ModuleType
from typing import TextIO

from bot.console.chat import PLATFORM, ConsoleChat, read_lines
from bot.core.events import UserRef
from bot.core.messages import Key, Message, normalise_locale
from bot.runtime import Bot
from bot.settings import Settings
from bot.store import Role
from pipeline.errors import EaselError

# Front ends by the token that turns them on; each module offers `async def serve(bot, settings,
# stop)`. They are separate packages so that a missing one is a clear error, not a crash.
FRONT_ENDS = {"discord_token": "bot.discord", "telegram_token": "bot.telegram"}


def wanted_front_ends(settings: Settings) -> list[str]:
    return [module for token, module in FRONT_ENDS.items() if getattr(settings, token) is not None]


async def serve_console(
    bot: Bot, settings: Settings, stdin: TextIO, stdout: TextIO, locale: str
) -> None:
    """`easel chat`: one local user (an admin) chatting through the job service."""
    service = bot.service
    user = UserRef(PLATFORM, settings.console_user, settings.console_user, locale)
    bot.store.set_role(service.user(user).id, Role.ADMIN)
    chat = ConsoleChat(service, user, stdout, locale)
    service.subscribe(PLATFORM, chat.on_event)
    await service.start()
    stop = _stop_on_signals()
    try:
        await service.deliver_missed(PLATFORM)
        prompt = "easel> " if stdin.isatty() else None
        talking = asyncio.create_task(chat.run(read_lines(stdin, prompt, stdout)))
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({talking, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping in done:
            stdout.write(Message(Key.SHUTTING_DOWN).render(locale) + "\n")
            talking.cancel()
        else:
            stopping.cancel()
            talking.result()
    finally:
        await service.stop()
        await bot.executor.close()


def load_front_ends(modules: list[str]) -> list[ModuleType]:
    """The front-end modules for the tokens that are set; a missing one is a clear error
    before anything slow (the model) is loaded."""
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ModuleNotFoundError as error:
            if error.name != name:  # the front end is there, a library it needs is not
                raise EaselError(
                    f"The {name} front end needs the Python package {error.name!r}, which is "
                    "not installed; `make install` installs it."
                ) from None
            raise EaselError(
                f"{name.split('.')[-1].capitalize()} is configured (its token is set) but this "
                f"version of Easel has no {name} front end; unset the token to use the console."
            ) from None
    return loaded


async def serve_front_ends(bot: Bot, settings: Settings, front_ends: list[ModuleType]) -> None:
    """`easel run` with tokens: each platform's front end until SIGINT or SIGTERM."""
    await bot.service.start()
    stop = _stop_on_signals()
    try:
        await asyncio.gather(*(module.serve(bot, settings, stop) for module in front_ends))
    finally:
        await bot.service.stop()
        await bot.executor.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
    return stop


def console_locale(requested: str | None) -> str:
    """--lang, else the terminal's LANG (ko_KR.UTF-8 is Korean), else English."""
    return normalise_locale(requested or os.environ.get("LANG") or "en")
