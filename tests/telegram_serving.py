"""Serving a real bot with the Telegram front end against the fake Bot API server
(tests/fakes/telegram.py), on the tiny model: what the tests/test_telegram*.py files share."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from PIL import Image

from bot import telegram as telegram_front_end
from bot.core.frontend import BotContext
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from pipeline.engine import Engine
from tests.fakes.telegram import FakeChat, FakeMessage, FakeTelegram, RecordedCall

TEST_TIMEOUT_S = 300
WAIT_S = 10.0
JOB_WAIT_S = 120.0  # a job on the tiny model, on a busy CPU
PROMPT_FLAGS = "--steps 2 --n 2"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TEST_TIMEOUT_S))


def bot_settings(tmp_path: Path, fake: FakeTelegram, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "outputs_dir": tmp_path / "out",
        "models_dir": tmp_path / "models",
        "database_url": f"sqlite:///{tmp_path}/easel.db",
        "progress_interval": 0,
        "progress_chat_interval": 0,
        "telegram_group_interval": 0,
        "max_batch_images": 4,
        "device": "cpu",
        "TELEGRAM_TOKEN": fake.token,
        "telegram_api_url": fake.url,
        **overrides,
    }
    return Settings(_env_file=None, **values)


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, fake: FakeTelegram, engine: Engine, **overrides: Any
) -> AsyncIterator[Bot]:
    """A bot with the Telegram front end, its menus set and taking updates (polling, or the
    webhook when the settings name one); stopped after the block as `easel run` stops it."""
    settings = bot_settings(tmp_path, fake, **overrides)
    bot = build_bot(settings, engine, open_store(settings))
    stop = asyncio.Event()
    await bot.service.start()
    started = len(fake.calls)
    webhook = settings.telegram_webhook_url is not None
    front_end = asyncio.create_task(
        telegram_front_end.serve(BotContext(bot.service), settings, stop)
    )

    def taking_updates() -> bool:
        method = "setwebhook" if webhook else "getupdates"
        return any(c.method.lower() == method for c in fake.calls[started:])

    try:
        await fake.wait_until(lambda: front_end.done() or taking_updates(), WAIT_S)
        if front_end.done():
            front_end.result()
        yield bot
    finally:
        stop.set()
        await asyncio.wait_for(front_end, WAIT_S)
        await bot.service.stop()
        await bot.executor.close()
        bot.store.close()


def png_bytes(
    size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def sent_to(chat: FakeChat, method: str) -> Callable[[RecordedCall], bool]:
    return lambda call: call.method.lower() == method.lower() and call.chat_id == chat.id


async def result_of(fake: FakeTelegram, chat: FakeChat, start: int = 0) -> FakeMessage:
    """The next photo or document with a PNG that Telegram took from the bot in `chat`: a
    job's result, as the chat shows it now."""

    def is_result(call: RecordedCall) -> bool:
        return (
            call.ok
            and call.method.lower() in ("sendphoto", "senddocument")
            and call.chat_id == chat.id
            and any(f.data.startswith(b"\x89PNG") for f in call.files.values())
        )

    call = await fake.wait_for_call(is_result, timeout=JOB_WAIT_S, start=start)
    return fake.message(chat, call.result["message_id"])
