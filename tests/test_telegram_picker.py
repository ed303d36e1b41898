"""Telegram's /style picker (bot/telegram/picker.py) with the real python-telegram-bot against
the fake Bot API server and a real job service on the tiny model's bot: what a Telegram user
sees on the picker message, what their presses save, and who may press."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from telegram.ext import Application

from bot.core.commands import CommandRegistry
from bot.core.events import UserRef
from bot.core.frontend import BotContext
from bot.core.setting_choices import MENU_SETTINGS, setting_choices
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from bot.store import SettingsRecord
from bot.telegram.picker import (
    PER_PAGE,
    Press,
    add_picker,
    parse_press,
    value_digest,
)
from pipeline.engine import Engine
from tests.fakes.telegram import (
    CallbackQueryState,
    FakeMessage,
    FakeTelegram,
    FakeUser,
    fake_telegram,
)

TEST_TIMEOUT_S = 60
WAIT_S = 10.0
POLL_TIMEOUT_S = 1
# Telegram user ids have up to 52 significant bits (Bot API, User.id): the longest in digits.
LONGEST_USER_ID = 2**52 - 1


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TEST_TIMEOUT_S))


@pytest.fixture
def make_bot(engine: Engine, tmp_path: Path) -> Iterator[Callable[[], Bot]]:
    """A bot on one database in `tmp_path`; each call opens it again, as a restart does."""
    made: list[Bot] = []

    def make() -> Bot:
        (tmp_path / "models").mkdir(exist_ok=True)
        settings = Settings(
            _env_file=None,
            outputs_dir=tmp_path / "out",
            models_dir=tmp_path / "models",
            database_url=f"sqlite:///{tmp_path}/easel.db",
            device="cpu",
        )
        bot = build_bot(settings, engine, open_store(settings))
        made.append(bot)
        return bot

    yield make
    for bot in made:
        bot.store.close()


@contextlib.asynccontextmanager
async def serving(
    fake: FakeTelegram, bot: Bot
) -> AsyncIterator[Application[Any, Any, Any, Any, Any, Any]]:
    """An Application with the picker alone, polling the fake."""
    application = (
        Application.builder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .build()
    )
    add_picker(application, BotContext(bot.service))
    async with application:
        await application.start()
        assert application.updater is not None
        await application.updater.start_polling(timeout=POLL_TIMEOUT_S, poll_interval=0)
        try:
            yield application
        finally:
            await application.updater.stop()
            await application.stop()


async def open_picker(fake: FakeTelegram, user: FakeUser, chat: Any = None) -> FakeMessage:
    """`user` sends /style; the picker message the bot sends back."""
    start = len(fake.calls)
    fake.send_message(chat or fake.private_chat(user), user, "/style")
    call = await fake.wait_for_call(
        lambda c: c.method == "sendMessage", start=start, timeout=WAIT_S
    )
    return fake.message(call.chat_id, call.result["message_id"])


async def press(
    fake: FakeTelegram, message: FakeMessage, label: str, user: FakeUser, *, edits: bool = True
) -> CallbackQueryState:
    """`user` taps the button labelled `label`; waits for the answer (and the edit)."""
    before = len(message.history)
    query = fake.press(message, message.button(label)["callback_data"], user=user)
    await fake.wait_until(lambda: query.answered, WAIT_S)
    if edits:
        await fake.wait_until(lambda: len(message.history) > before, WAIT_S)
    return query


def labels(message: FakeMessage) -> list[list[str]]:
    return [[button["text"] for button in row] for row in message.keyboard]


def saved(bot: Bot, user: FakeUser) -> SettingsRecord:
    """The user's saved settings, read by the test (on its own thread or loop)."""
    return bot.store.settings(bot.store.user("telegram", str(user.id)).id)


def style_labels(bot: Bot, locale: str = "en") -> list[str]:
    return [c.label.in_locale(locale) for c in setting_choices("style", bot.service.vocabulary())]


def all_answered(fake: FakeTelegram) -> bool:
    return all(query.answered for query in fake.callback_queries.values())


# -- what the user sees -------------------------------------------------------------------------


def test_style_shows_the_defaults_with_a_button_per_setting_in_english_and_korean(
    make_bot: Callable[[], Bot],
) -> None:
    bot = make_bot()

    async def scenario() -> None:
        async with fake_telegram() as fake:
            alice = fake.add_user(2001, "Alice", language_code="en")
            bora = fake.add_user(2002, "Bo-ra", language_code="ko")
            async with serving(fake, bot):
                english = await open_picker(fake, alice)
                korean = await open_picker(fake, bora)
            assert english.text == (
                "Your defaults for new jobs:\n"
                "Style: (not set)\nShot: (not set)\nLighting: (not set)\n"
                "Quality: (not set)\nAspect ratio: (not set)\n\n"
                "Tap a setting to change it."
            )
            assert english.entities[0]["type"] == "bold"  # the heading, in HTML
            assert labels(english) == [
                ["Style: (not set)"],
                ["Shot: (not set)"],
                ["Lighting: (not set)"],
                ["Quality: (not set)"],
                ["Aspect ratio: (not set)"],
            ]
            assert korean.text.splitlines()[:3] == [
                "새 작업의 기본값:",
                "화풍: (설정 안 됨)",
                "시점: (설정 안 됨)",
            ]
            assert labels(korean)[0] == ["화풍: (설정 안 됨)"]
            assert labels(korean)[4] == ["화면 비율: (설정 안 됨)"]
            assert fake.refused_calls == []

    run(scenario)


def test_paging_through_styles_then_picking_one_saves_it_and_the_summary_shows_it(
    make_bot: Callable[[], Bot],
) -> None:
    bot = make_bot()
    names = style_labels(bot)
    pages = -(-len(names) // PER_PAGE)
    assert pages > 2  # a long list, paged

    async def scenario() -> None:
        async with fake_telegram() as fake:
            alice = fake.add_user(2001, "Alice")
            async with serving(fake, bot):
                picker = await open_picker(fake, alice)
                await press(fake, picker, "Style: (not set)", alice)
                assert picker.text == f"Style, now (not set). Tap a value (page 1 of {pages})."
                shown = labels(picker)
                assert [label for row in shown[:-2] for label in row] == names[:PER_PAGE]
                assert all(len(row) in (2, 3) for row in shown[:-3])
                assert shown[-2:] == [["›"], ["✓ (not set)", "« Back"]]

                await press(fake, picker, "›", alice)
                assert picker.text.endswith(f"(page 2 of {pages}).")
                page_two = [label for row in labels(picker)[:-2] for label in row]
                assert page_two == names[PER_PAGE : 2 * PER_PAGE]
                assert labels(picker)[-2] == ["‹", "›"]
                await press(fake, picker, "‹", alice)
                assert picker.text.endswith(f"(page 1 of {pages}).")
                await press(fake, picker, "›", alice)

                chosen = names[PER_PAGE + 1]  # "Surrealism"
                query = await press(fake, picker, chosen, alice)
                assert query.answer is not None
                assert query.answer["text"] == f"Saved. Style: {chosen}"
                assert saved(bot, alice).style == "surrealism"
                assert picker.text.splitlines()[:2] == [
                    "Saved. Your defaults for new jobs:",
                    f"Style: {chosen}",
                ]
                assert labels(picker)[0] == [f"Style: {chosen}"]

                # Opened again, the style's menu starts on the page that holds it, ticked.
                await press(fake, picker, f"Style: {chosen}", alice)
                assert picker.text == (f"Style, now {chosen}. Tap a value (page 2 of {pages}).")
                assert f"✓ {chosen}" in [label for row in labels(picker) for label in row]
                await press(fake, picker, "« Back", alice)
                assert picker.text.startswith("Your defaults for new jobs:\nStyle: Surrealism")

                # Aspect: short labels, three a row, one page.
                await press(fake, picker, "Aspect ratio: (not set)", alice)
                assert labels(picker)[0] == ["1:1", "2:3", "3:2"]
                assert labels(picker)[-1] == ["✓ (not set)", "« Back"]
                await press(fake, picker, "16:9", alice)
                assert saved(bot, alice).aspect_ratio == "16:9"
            assert saved(bot, alice).style == "surrealism"
            assert "Aspect ratio: 16:9" in picker.text
            assert all_answered(fake)
            assert len(fake.calls_to("sendMessage")) == 1  # every step edits the one message
            assert fake.refused_calls == []

    run(scenario)


def test_not_set_clears_a_saved_default(make_bot: Callable[[], Bot]) -> None:
    bot = make_bot()
    alice_ref = UserRef("telegram", "2001", "Alice", "ko")
    asyncio.run(bot.service.update_settings(alice_ref, {"style": "cubism", "ar": "3:2"}))

    async def scenario() -> None:
        async with fake_telegram() as fake:
            alice = fake.add_user(2001, "Alice", language_code="ko")
            async with serving(fake, bot):
                picker = await open_picker(fake, alice)
                assert "화풍: 입체주의" in picker.text.splitlines()
                await press(fake, picker, "화풍: 입체주의", alice)
                assert "✓ 입체주의" in [label for row in labels(picker) for label in row]
                query = await press(fake, picker, "(설정 안 됨)", alice)
            assert query.answer is not None
            assert query.answer["text"] == "저장했습니다. 화풍: (설정 안 됨)"
            assert saved(bot, alice).style is None
            assert saved(bot, alice).aspect_ratio == "3:2"  # the others are left alone
            assert picker.text.splitlines()[:2] == [
                "저장했습니다. 새 작업의 기본값:",
                "화풍: (설정 안 됨)",
            ]
            assert all_answered(fake)

    run(scenario)


# -- callback_data ------------------------------------------------------------------------------


def test_every_button_on_every_page_fits_64_bytes_of_ascii(make_bot: Callable[[], Bot]) -> None:
    bot = make_bot()

    async def scenario() -> None:
        async with fake_telegram() as fake:
            longest = fake.add_user(LONGEST_USER_ID, "Long")
            seen: set[str] = set()
            async with serving(fake, bot):
                picker = await open_picker(fake, longest)
                seen.update(b["callback_data"] for b in picker.buttons)
                for row in labels(picker):
                    await press(fake, picker, row[0], longest)
                    while True:
                        seen.update(b["callback_data"] for b in picker.buttons)
                        if "›" not in [b["text"] for b in picker.buttons]:
                            break
                        await press(fake, picker, "›", longest)
                    await press(fake, picker, "« Back", longest)
            vocabulary = bot.service.vocabulary()
            values = {
                (name, value_digest(c.value))
                for name in MENU_SETTINGS
                for c in setting_choices(name, vocabulary)
            }
            pairs = sum(len(setting_choices(name, vocabulary)) for name in MENU_SETTINGS)
            assert len(values) == pairs  # no two values of a setting share a digest
            picks = {parse_press(data) for data in seen}
            # Every value of every setting had its button, each told apart by its data.
            assert {(p.setting, p.digest) for p in picks if p is not None and p.action == "v"} == (
                values
            )
            for data in seen:
                assert data.startswith(f"easel:pk:{LONGEST_USER_ID}:")
                assert data.isascii() and len(data.encode()) <= 64, data
                assert parse_press(data) is not None
            assert fake.refused_calls == []  # Telegram refuses data over 64 bytes
            assert all_answered(fake)

    run(scenario)


def test_callback_data_stays_short_for_any_value_and_reads_back() -> None:
    very_long_id = "a-" + "very-" * 60 + "long-vocabulary-id"
    press_data = Press(LONGEST_USER_ID, "v", "lighting", digest=value_digest(very_long_id)).data()
    assert len(press_data.encode()) <= 64
    assert parse_press(press_data) == Press(
        LONGEST_USER_ID, "v", "lighting", digest=value_digest(very_long_id)
    )
    assert parse_press(Press(7, "o", "style", page=3).data()) == Press(7, "o", "style", page=3)
    for malformed in (
        "easel:pk:",
        "easel:pk:abc:m",
        "easel:pk:7:o:x",
        "easel:pk:7:v:y:not-a-digest",
        "easel:pk:7:o:y:1:2",
        "easel:pk:7:m:extra",
        "easel:1:u1",
    ):
        assert parse_press(malformed) is None, malformed


# -- who may press, and when --------------------------------------------------------------------


def test_a_press_by_someone_else_is_refused_privately_and_changes_nothing(
    make_bot: Callable[[], Bot],
) -> None:
    bot = make_bot()

    async def scenario() -> None:
        async with fake_telegram() as fake:
            alice = fake.add_user(2001, "Alice")
            bob = fake.add_user(2002, "Bob", language_code="ko")
            group = fake.group_chat()
            async with serving(fake, bot):
                picker = await open_picker(fake, alice, group)
                await press(fake, picker, "Style: (not set)", alice)
                shown = picker.snapshot()
                query = await press(fake, picker, "Gothic", bob, edits=False)
                # Updates are handled in order: Alice's next press is the first thing after
                # Bob's that may edit the message.
                await press(fake, picker, "« Back", alice)
            assert query.answer is not None
            assert query.answer["show_alert"] == "true"  # an alert only Bob sees
            assert (
                query.answer["text"]
                == "다른 사람의 선택 창입니다. /style을 보내 내 선택 창을 여세요."
            )
            assert picker.history[-1] == shown  # as it was before Bob pressed
            assert len(fake.calls_to("editMessageText")) == 2  # Alice's two presses
            assert picker.text.startswith("Your defaults for new jobs:\nStyle: (not set)")
            assert saved(bot, alice).style is None and saved(bot, bob).style is None
            assert all_answered(fake)

    run(scenario)


def test_the_buttons_of_an_old_picker_work_after_a_restart(make_bot: Callable[[], Bot]) -> None:
    first_bot = make_bot()

    async def scenario() -> None:
        async with fake_telegram() as fake:
            alice = fake.add_user(2001, "Alice")
            async with serving(fake, first_bot):
                picker = await open_picker(fake, alice)
                await press(fake, picker, "Lighting: (not set)", alice)
            # Pressed while the bot is down: the next bot, on the same database, answers it.
            lighting = [
                c.label.en for c in setting_choices("lighting", first_bot.service.vocabulary())
            ]
            waiting = fake.press(picker, picker.button(lighting[2])["callback_data"], user=alice)
            second_bot = make_bot()
            async with serving(fake, second_bot):
                await fake.wait_until(lambda: waiting.answered, WAIT_S)
                await fake.wait_until(
                    lambda: f"Lighting: {lighting[2]}" in (picker.text or ""), WAIT_S
                )
                assert saved(second_bot, alice).lighting == "golden-hour-lighting"
                await press(fake, picker, f"Lighting: {lighting[2]}", alice)
                assert f"✓ {lighting[2]}" in [label for row in labels(picker) for label in row]
            assert waiting.answer is not None
            assert waiting.answer["text"] == f"Saved. Lighting: {lighting[2]}"
            assert all_answered(fake)
            assert fake.refused_calls == []

    run(scenario)


def test_a_button_for_a_value_no_longer_offered_redraws_the_menu(
    make_bot: Callable[[], Bot],
) -> None:
    bot = make_bot()

    async def scenario() -> None:
        async with fake_telegram() as fake:
            alice = fake.add_user(2001, "Alice")
            async with serving(fake, bot):
                picker = await open_picker(fake, alice)
                await press(fake, picker, "Quality: (not set)", alice)
                # An old message: its first button names a value a reloaded vocabulary dropped.
                button = picker.keyboard[0][0]
                button["callback_data"] = Press(
                    alice.id, "v", "quality", digest=value_digest("retired-quality")
                ).data()
                button["text"] = "Retired"
                query = await press(fake, picker, "Retired", alice)
            assert query.answer is not None
            assert query.answer["text"] == (
                "That button is out of date; here is the picker as it is now."
            )
            assert picker.text.startswith("Quality, now (not set).")
            assert "Retired" not in [b["text"] for b in picker.buttons]
            assert saved(bot, alice).quality is None
            assert all_answered(fake)

    run(scenario)


def test_style_is_a_telegram_command_with_a_description_in_both_languages() -> None:
    registry = CommandRegistry()
    assert dict(registry.menu("telegram", "en"))["style"].startswith("pick your defaults")
    assert dict(registry.menu("telegram", "ko"))["style"].startswith("버튼으로 기본값")
    assert "/style" in registry.help("telegram").text("en")
    assert "style" not in dict(registry.menu("discord", "en"))
    assert "style" not in dict(registry.menu("console", "en"))
