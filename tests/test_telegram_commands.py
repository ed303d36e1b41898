"""Telegram's other commands and its running modes: /admin for Easel's admins only (a ban by
replying), plain lines in a private chat and the plain_text setting, /pnginfo with a file and
with a photo, Korean replies, the webhook with its secret, and no token in the logs."""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from pathlib import Path

import pytest

from bot import telegram as telegram_front_end
from bot.core.frontend import BotContext
from bot.runtime import build_bot, open_store
from bot.serve import load_front_ends, wanted_front_ends
from bot.settings import Settings
from bot.store import Role
from pipeline.engine import Engine
from pipeline.errors import EaselError
from tests.fakes.telegram import FakeChat, FakeTelegram, fake_telegram
from tests.telegram_serving import (
    PROMPT_FLAGS,
    WAIT_S,
    bot_settings,
    result_of,
    run,
    sent_to,
    serving,
)


async def answer_to(fake: FakeTelegram, chat: FakeChat, start: int) -> str:
    """The text of the bot's next message in `chat` from call `start` on."""
    call = await fake.wait_for_call(sent_to(chat, "sendMessage"), start=start, timeout=WAIT_S)
    return fake.message(chat, call.result["message_id"]).text or ""


def test_admin_is_refused_to_others_and_bans_by_reply(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with (
            fake_telegram() as fake,
            serving(tmp_path, fake, engine, admins=f"telegram:{fake.user.id}") as bot,
        ):
            group = fake.group_chat()
            bora = fake.add_user(2001, "Bo-ra", language_code="ko")
            start = len(fake.calls)
            fake.send_message(group, bora, "/admin@easel_test_bot pause")
            assert "관리자" in await answer_to(fake, group, start)
            assert not bot.service.dispatcher.paused()
            # The admin replies to Bo-ra's message: the ban needs no user id.
            start = len(fake.calls)
            said = fake.send_message(group, bora, "/queue@easel_test_bot")
            await answer_to(fake, group, start)  # the ban comes after its answer
            start = len(fake.calls)
            fake.reply_to(said, fake.user, "/admin@easel_test_bot ban spamming")
            await answer_to(fake, group, start)
            banned = bot.store.user("telegram", "2001")
            assert banned.banned and banned.ban_reason == "spamming"
            assert bot.store.user("telegram", str(fake.user.id)).role is Role.ADMIN
            start = len(fake.calls)
            fake.send_message(group, bora, f"/imagine@easel_test_bot a cat {PROMPT_FLAGS}")
            assert "spamming" in await answer_to(fake, group, start)
            assert bot.store.job(1) is None

    run(scenario)


def test_plain_lines_pnginfo_and_korean_in_a_private_chat(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, serving(tmp_path, fake, engine) as bot:
            bora = fake.add_user(2001, "Bo-ra", language_code="ko")
            chat = fake.private_chat(bora)
            fake.send_message(chat, bora, f"바다 위의 등대 {PROMPT_FLAGS}")
            queued = await answer_to(fake, chat, 0)
            assert queued.startswith("작업 #1")
            grid = await result_of(fake, chat)
            assert grid.caption is not None and grid.caption.startswith("작업 #1")
            # /pnginfo: a photo has lost its parameters; the PNG as a file has them.
            start = len(fake.calls)
            fake.send_photo(chat, bora, grid.photo_bytes, caption="/pnginfo")
            assert "JPEG" in await answer_to(fake, chat, start)
            job = bot.store.job(1, with_images=True)
            assert job is not None
            png = Path(job.images[0].path).read_bytes()
            document = fake.send_document(chat, bora, png, filename="a.png")
            start = len(fake.calls)
            fake.reply_to(document, bora, "/pnginfo")
            assert "Steps: 2" in await answer_to(fake, chat, start)
            # plain_text=off: a plain line is no longer a prompt.
            start = len(fake.calls)
            fake.send_message(chat, bora, "/settings plain_text=off")
            assert "plain_text: off" in await answer_to(fake, chat, start)
            start = len(fake.calls)
            fake.send_message(chat, bora, "등대")
            fake.send_message(chat, bora, "/help")
            help_text = await answer_to(fake, chat, start)
            assert "/imagine" in help_text
            assert bot.store.job(2) is None

    run(scenario)


def test_a_file_that_is_no_image_is_refused_before_it_is_downloaded(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, serving(tmp_path, fake, engine) as bot:
            chat = fake.private_chat(fake.user)
            notes = fake.send_document(
                chat, fake.user, b"%PDF-1.4", filename="notes.pdf", mime_type="application/pdf"
            )
            start = len(fake.calls)
            fake.reply_to(notes, fake.user, "/imagine a fox --steps 2")
            assert await answer_to(fake, chat, start) == "That is not an image Easel can read."
            assert fake.calls_to("getFile") == []
            assert bot.store.job(1) is None

    run(scenario)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_webhook_takes_updates_with_its_secret_and_no_token_is_logged(
    tmp_path: Path, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}/easel-hook"
        async with (
            fake_telegram() as fake,
            serving(
                tmp_path,
                fake,
                engine,
                telegram_webhook_url=url,
                telegram_webhook_listen="127.0.0.1",
                telegram_webhook_port=port,
            ),
        ):
            assert fake.webhook is not None and fake.webhook.url == url
            secret = fake.webhook.secret_token
            assert secret
            chat = fake.private_chat(fake.user)
            fake.send_message(chat, fake.user, f"/imagine a barn {PROMPT_FLAGS}")
            await result_of(fake, chat)
            assert all(status == 200 for _, status in fake.webhook_deliveries)
            # Without the secret, or with another, the update is refused and not handled.
            update = {
                "update_id": 1,
                "message": fake.send_message(chat, fake.user, "/help").payload(),
            }
            assert await fake.post_webhook(update, secret_token=None) == 403
            assert await fake.post_webhook(update, secret_token="wrong") == 403
        logged = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
        assert any(record.name.startswith("telegram") for record in caplog.records)
        assert fake.token not in logged
        assert fake.token.split(":", 1)[1] not in logged

    run(scenario)


def test_a_refused_token_is_a_clear_error_that_does_not_show_it(
    tmp_path: Path, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "987654321:AAWrongTokenThatTelegramRefuses0000000"

    async def scenario() -> None:
        async with fake_telegram() as fake:
            settings = bot_settings(tmp_path, fake, TELEGRAM_TOKEN=wrong)
            bot = build_bot(settings, engine, open_store(settings))
            try:
                with pytest.raises(EaselError, match="Telegram refused TELEGRAM_TOKEN") as raised:
                    await telegram_front_end.serve(
                        BotContext(bot.service), settings, asyncio.Event()
                    )
            finally:
                await bot.executor.close()
                bot.store.close()
            shown = str(raised.value) + "".join(traceback.format_exception(raised.value))
            assert "WrongToken" not in shown
            assert "WrongToken" not in caplog.text

    run(scenario)


def test_a_token_for_a_front_end_this_version_lacks_is_a_clear_error() -> None:
    with pytest.raises(EaselError, match="NOSUCH_TOKEN is set, but this version of Easel has no"):
        load_front_ends(["bot.nosuch"])


def test_the_telegram_token_starts_the_telegram_front_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_TOKEN", "123:AAFakeTelegramTokenForEaselTests000")
    settings = Settings(_env_file=None)
    (front_end,) = load_front_ends(wanted_front_ends(settings))
    assert front_end.PLATFORM == "telegram"
