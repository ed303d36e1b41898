"""When the fake Telegram handed an update out and answered a call (what bench/telegram.py
measures from), and the fake Telegram on its own thread."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from telegram import Bot

from tests.fakes.telegram import FakeTelegram, fake_telegram
from tests.fakes.threaded import FakeThread

TEST_TIMEOUT_S = 60
WAIT_S = 10.0


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TEST_TIMEOUT_S))


def bot_for(fake: FakeTelegram) -> Bot:
    return Bot(fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url)


def test_handed_out_is_the_first_get_updates_answer_that_carried_the_update() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            chat = fake.private_chat(fake.user)
            waiting = asyncio.create_task(bot.get_updates(timeout=5))
            await fake.wait_until(lambda: bool(fake.calls), WAIT_S)
            await asyncio.sleep(0.05)
            sent_at = fake.clock()
            message = fake.send_message(chat, text="/imagine a fox")
            assert message.update_id is not None
            (update,) = await asyncio.wait_for(waiting, WAIT_S)
            assert update.update_id == message.update_id
            await bot.get_updates()  # not confirmed: handed out again
            handed = fake.handed_out(message.update_id)
            polls = fake.calls_to("getUpdates")
            assert len(polls) == 2 and handed is polls[0]
            # The long poll came in before the message and was answered after it.
            assert handed.answered_at is not None
            assert handed.at < sent_at <= handed.answered_at
            assert fake.handed_out(message.update_id + 1) is None

    run(scenario)


def test_the_fake_telegram_serves_from_its_own_thread() -> None:
    async def scenario() -> None:
        async with FakeThread(fake=FakeTelegram()) as fakes, bot_for(fakes.fake) as bot:
            fake = fakes.fake
            chat = await fakes.do(fake.private_chat, fake.user)
            waiting = asyncio.create_task(bot.get_updates(timeout=5))
            await fakes.call(fake.wait_until(lambda: bool(fake.calls), WAIT_S))
            message = await fakes.do(fake.send_message, chat, text="hello")
            (update,) = await asyncio.wait_for(waiting, WAIT_S)
            assert update.message is not None and update.message.text == "hello"
            assert update.update_id == message.update_id
            await bot.send_message(chat.id, "hi", reply_to_message_id=message.message_id)
            assert [m.text for m in fake.messages_in(chat, from_bot=True)] == ["hi"]

    run(scenario)
