"""The fake Bot API server in tests/fakes/telegram.py, driven by the real python-telegram-bot:
what a front end test relies on (getMe, polling updates into handlers, uploads read back,
inline keyboards and presses, getFile and downloads, commands per language, webhooks) and
Telegram's refusals surfacing as PTB's exceptions."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import io
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from PIL import Image
from telegram import (
    Bot,
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Update,
)
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, RetryAfter
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fakes.telegram import (
    FakeTelegram,
    FakeTelegramSettings,
    fake_telegram,
    parse_html,
)

TEST_TIMEOUT_S = 30
WAIT_S = 5.0
POLL_TIMEOUT_S = 1


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TEST_TIMEOUT_S))


def png_bytes(
    size: tuple[int, int] = (8, 8), colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def bot_for(fake: FakeTelegram, token: str | None = None) -> Bot:
    return Bot(token or fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url)


def application_for(fake: FakeTelegram, *, max_retries: int | None = None) -> Application:
    builder = (
        Application.builder()
        .token(fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
    )
    if max_retries is not None:
        builder = builder.rate_limiter(AIORateLimiter(max_retries=max_retries))
    return builder.build()


@contextlib.asynccontextmanager
async def polling(app: Application) -> AsyncIterator[Application]:
    """`app` running and polling the fake, the way Easel runs it inside its own loop."""
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(timeout=POLL_TIMEOUT_S, poll_interval=0)
        try:
            yield app
        finally:
            await app.updater.stop()
            await app.stop()


def seconds(value: int | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def keyboard(*rows: list[tuple[str, str]]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(text, callback_data=data) for text, data in row] for row in rows]
    )


# -- what a front end relies on -----------------------------------------------------------------


def test_get_me_answers_the_bot_user_and_is_recorded() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            me = await bot.get_me()
            assert me.username == "easel_test_bot" and me.is_bot
            assert me.id == fake.bot.id
            assert [c.method for c in fake.calls] == ["getMe", "getMe"]  # initialize, then ours

    run(scenario)


def test_a_command_in_a_private_chat_and_a_group_reaches_its_handler() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake:
            app = application_for(fake)

            async def imagine(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                assert update.effective_message is not None
                await update.effective_message.reply_text(
                    f"drawing: {' '.join(context.args)}", do_quote=True
                )

            app.add_handler(CommandHandler("imagine", imagine))
            alice = fake.add_user(2001, "Alice", username="alice")
            dm, group = fake.private_chat(alice), fake.group_chat("Painters")
            async with polling(app):
                asked = fake.send_message(dm, alice, "/imagine a cat")
                fake.send_message(group, alice, "/imagine@easel_test_bot a dog")
                fake.send_message(group, alice, "/imagine@other_bot a fish")  # not ours
                await fake.wait_until(lambda: len(fake.calls_to("sendMessage")) == 2, WAIT_S)
                await fake.wait_until(lambda: not fake.pending_updates, WAIT_S)
            [answer] = fake.messages_in(dm, from_bot=True)
            assert answer.text == "drawing: a cat"
            assert answer.reply_to is asked
            assert [m.text for m in fake.messages_in(group, from_bot=True)] == ["drawing: a dog"]
            assert [m.message_id for m in fake.messages_in(group)] == [1, 2, 3]
            assert not fake.refused_calls

    run(scenario)


def test_group_privacy_hides_chatter_but_not_commands_mentions_or_replies() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            group = fake.group_chat()
            fake.send_message(group, text="just chatting")
            fake.send_message(group, text="/imagine a fox")
            fake.send_message(group, text="/imagine@other_bot a fox")
            fake.send_message(group, text="hey @Easel_Test_Bot draw")
            grid = await bot.send_photo(group.id, png_bytes(), caption="grid")
            fake.reply_to(fake.message(group, grid.message_id), text="more like this")
            fake.send_photo(group, data=png_bytes(), caption="/imagine@easel_test_bot oil")
            first = await bot.get_updates()
            seen = [u.message.text or u.message.caption for u in first if u.message]
            assert seen == [
                "/imagine a fox",
                "hey @Easel_Test_Bot draw",
                "more like this",
                "/imagine@easel_test_bot oil",
            ]
            admin_group = fake.group_chat(bot_is_admin=True)
            fake.send_message(admin_group, text="just chatting")
            later = await bot.get_updates(offset=first[-1].update_id + 1)
            assert [u.message.text for u in later if u.message] == ["just chatting"]

    run(scenario)


def test_get_updates_honours_offset_timeout_and_allowed_updates() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            chat = fake.private_chat(fake.user)
            fake.send_message(chat, text="one")
            fake.send_message(chat, text="two")
            first = await bot.get_updates()
            assert [u.message.text for u in first if u.message] == ["one", "two"]
            again = await bot.get_updates()  # not confirmed yet: handed out again
            assert [u.update_id for u in again] == [u.update_id for u in first]
            assert await bot.get_updates(offset=first[-1].update_id + 1) == ()

            waiting = asyncio.create_task(bot.get_updates(timeout=5))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            fake.send_message(chat, text="three")
            arrived = await asyncio.wait_for(waiting, WAIT_S)
            assert [u.message.text for u in arrived if u.message] == ["three"]

            sent = await bot.send_message(chat.id, "pick", reply_markup=keyboard([("A", "a")]))
            fake.send_message(chat, text="four")
            fake.press(fake.message(chat, sent.message_id), "a")
            only = await bot.get_updates(
                offset=arrived[-1].update_id + 1, allowed_updates=["callback_query"]
            )
            assert [u.callback_query.data for u in only if u.callback_query] == ["a"]

    run(scenario)


def test_a_sent_photo_keeps_its_uploaded_bytes_and_keyboard() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            chat = fake.private_chat(fake.user)
            picture = png_bytes((64, 48), (10, 200, 30))
            sent = await bot.send_photo(
                chat.id,
                photo=picture,
                caption="<b>a cat</b> &amp; a hat",
                parse_mode="HTML",
                reply_markup=keyboard([("U1", "easel:1:u1"), ("V1", "easel:1:v1")]),
            )
            call = fake.calls_to("sendPhoto")[-1]
            assert call.file("photo").data == picture
            shown = fake.message(chat, sent.message_id)
            assert shown.caption == sent.caption == "a cat & a hat"
            assert shown.caption_entities == [{"type": "bold", "offset": 0, "length": 5}]
            assert [b["callback_data"] for b in shown.buttons] == ["easel:1:u1", "easel:1:v1"]
            with Image.open(io.BytesIO(shown.photo_bytes)) as image:
                assert image.size == (64, 48)
                assert image.convert("RGB").getpixel((5, 5)) == (10, 200, 30)
            assert sent.photo[-1].width == 64 and len(sent.photo) == 1  # no size to shrink to

    run(scenario)


def test_a_press_on_an_inline_button_is_answered_and_edits_the_message() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake:
            app = application_for(fake)

            async def pressed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                query = update.callback_query
                assert query is not None
                await query.answer(f"queued {query.data}")
                await query.edit_message_text(f"upscaling for {query.from_user.first_name}")

            app.add_handler(CallbackQueryHandler(pressed))
            bob = fake.add_user(2002, "Bob")
            chat = fake.group_chat()
            async with polling(app):
                sent = await app.bot.send_message(
                    chat.id, "grid", reply_markup=keyboard([("U1", "easel:1:u1")])
                )
                grid = fake.message(chat, sent.message_id)
                query = fake.press(grid, "easel:1:u1", user=bob)
                answered = await fake.wait_for_call(
                    lambda c: c.method == "answerCallbackQuery", timeout=WAIT_S
                )
                await fake.wait_until(lambda: grid.text != "grid", WAIT_S)
            assert answered.params["callback_query_id"] == query.id
            assert query.answered and query.answer is not None
            assert query.answer["text"] == "queued easel:1:u1"
            assert grid.text == "upscaling for Bob"
            assert grid.buttons == []  # an edit without reply_markup drops the keyboard
            assert grid.history[0]["text"] == "grid"
            with pytest.raises(LookupError):
                fake.press(grid, "easel:1:u1")

    run(scenario)


def test_get_file_downloads_every_size_of_a_photo_a_person_sent() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake:
            app = application_for(fake)
            received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

            async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                message = update.effective_message
                assert message is not None and message.photo
                source = await message.photo[-1].get_file()
                data = bytes(await source.download_as_bytearray())
                await received.put((message.caption or "", data))

            app.add_handler(MessageHandler(filters.PHOTO, photo))
            chat = fake.private_chat(fake.user)
            picture = png_bytes((400, 300), (0, 0, 250))
            async with polling(app):
                sent = fake.send_photo(chat, fake.user, picture, caption="/imagine in oil")
                caption, data = await asyncio.wait_for(received.get(), WAIT_S)
            assert caption == "/imagine in oil" and data == picture
            assert [(s.width, s.height) for s in sent.photo] == [(90, 68), (320, 240), (400, 300)]
            assert sent.caption_entities == [{"type": "bot_command", "offset": 0, "length": 8}]
            async with bot_for(fake) as bot:
                thumbnail = await bot.get_file(sent.photo[0].file_id)
                small = bytes(await thumbnail.download_as_bytearray())
                with Image.open(io.BytesIO(small)) as image:
                    assert image.format == "JPEG" and image.size == (90, 68)
                with pytest.raises(BadRequest):
                    await bot.get_file("no-such-file")
            assert fake.refused_calls[-1].description == (
                "Bad Request: wrong file identifier/HTTP URL specified"
            )

    run(scenario)


def test_a_reply_with_a_photo_to_the_bots_message_carries_both() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake:
            app = application_for(fake)
            seen: asyncio.Queue[tuple[str | None, int, bytes]] = asyncio.Queue()

            async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                message = update.effective_message
                assert message is not None and message.reply_to_message is not None
                source = await (await message.photo[-1].get_file()).download_as_bytearray()
                await seen.put(
                    (message.caption, message.reply_to_message.message_id, bytes(source))
                )

            app.add_handler(MessageHandler(filters.PHOTO & filters.REPLY, photo))
            chat = fake.group_chat()
            picture = png_bytes((32, 32), (1, 2, 3))
            async with polling(app):
                grid = await app.bot.send_photo(chat.id, png_bytes(), caption="a cat")
                fake.reply_to(fake.message(chat, grid.message_id), photo=picture, caption="remix")
                caption, replied_to, data = await asyncio.wait_for(seen.get(), WAIT_S)
            assert (caption, replied_to, data) == ("remix", grid.message_id, picture)

    run(scenario)


def test_a_press_made_while_the_bot_is_down_reaches_it_after_a_restart() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake:
            chat = fake.private_chat(fake.user)
            first = application_for(fake)
            async with polling(first):
                sent = await first.bot.send_message(
                    chat.id, "grid", reply_markup=keyboard([("U1", "easel:7:u1")])
                )
            fake.press(fake.message(chat, sent.message_id), "easel:7:u1")

            pressed: asyncio.Queue[str] = asyncio.Queue()

            async def on_press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                assert update.callback_query is not None
                await update.callback_query.answer()
                await pressed.put(update.callback_query.data or "")

            second = application_for(fake)
            second.add_handler(CallbackQueryHandler(on_press))
            async with polling(second):
                assert await asyncio.wait_for(pressed.get(), WAIT_S) == "easel:7:u1"
            assert all(q.answered for q in fake.callback_queries.values())

    run(scenario)


def test_a_rate_limiter_retries_after_the_429() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake:
            chat = fake.private_chat(fake.user)
            fake.flood("sendMessage", retry_after=1)
            async with application_for(fake, max_retries=1) as app:
                await app.bot.send_message(chat.id, "after the flood")
            refused, sent = fake.calls_to("sendMessage")
            assert refused.status == 429 and sent.ok
            assert sent.at - refused.at >= 1.0  # it waited as long as it was told
            assert [m.text for m in fake.messages_in(chat)] == ["after the flood"]

    run(scenario)


def test_set_my_commands_is_kept_per_language_code() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            await bot.set_my_commands([BotCommand("imagine", "Draw a picture")])
            await bot.set_my_commands(
                [BotCommand("imagine", "그림을 그립니다")], language_code="ko"
            )
            assert fake.commands_for() == [{"command": "imagine", "description": "Draw a picture"}]
            korean = await bot.get_my_commands(language_code="ko")
            assert [(c.command, c.description) for c in korean] == [("imagine", "그림을 그립니다")]
            recorded = fake.calls_to("setMyCommands")
            assert [c.params.get("language_code") for c in recorded] == [None, "ko"]
            with pytest.raises(BadRequest):
                await bot.set_my_commands([BotCommand("Imagine", "Draw")])
            assert fake.refused_calls[-1].description == "Bad Request: BOT_COMMAND_INVALID"
            assert fake.commands_for(language_code="ko")[0]["command"] == "imagine"
            await bot.set_my_description("Easel은 그림을 그립니다", language_code="ko")
            assert (await bot.get_my_description("ko")).description == "Easel은 그림을 그립니다"
            assert (await bot.get_my_description()).description == ""

    run(scenario)


def test_edit_media_and_a_media_group_carry_their_uploads() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            chat = fake.private_chat(fake.user)
            red, blue = png_bytes(colour=(250, 0, 0)), png_bytes(colour=(0, 0, 250))
            sent = await bot.send_photo(chat.id, red, caption="preview 1/4")
            await bot.edit_message_media(
                InputMediaPhoto(blue, caption="done"),
                chat_id=chat.id,
                message_id=sent.message_id,
                reply_markup=keyboard([("U1", "easel:1:u1")]),
            )
            shown = fake.message(chat, sent.message_id)
            assert shown.photo_bytes == blue and shown.caption == "done"
            assert shown.button("U1")["callback_data"] == "easel:1:u1"
            document = await bot.send_document(chat.id, red, filename="grid.png")
            stored = fake.message(chat, document.message_id).document
            assert stored is not None and stored.file_name == "grid.png" and stored.data == red
            album = await bot.send_media_group(
                chat.id, [InputMediaPhoto(red), InputMediaPhoto(blue)]
            )
            assert len({m.media_group_id for m in album}) == 1
            assert [fake.message(chat, m.message_id).photo_bytes for m in album] == [red, blue]

    run(scenario)


def test_a_webhook_gets_updates_with_its_secret_token() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            seen: list[tuple[str | None, dict[str, Any]]] = []

            async def receive(request: web.Request) -> web.Response:
                secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token")
                if secret != "s3cret":
                    return web.Response(status=403)
                seen.append((secret, await request.json()))
                return web.Response()

            port = free_port()
            app = web.Application()
            app.router.add_post("/telegram", receive)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                url = f"http://127.0.0.1:{port}/telegram"
                await bot.set_webhook(url, secret_token="s3cret", allowed_updates=["message"])
                assert fake.webhook is not None and fake.webhook.secret_token == "s3cret"
                fake.send_message(fake.private_chat(fake.user), text="hello")
                await fake.wait_until(lambda: bool(seen), WAIT_S)
                assert seen[0][1]["message"]["text"] == "hello"
                assert not fake.pending_updates
                assert await fake.post_webhook({"update_id": 1}, secret_token="wrong") == 403
                with pytest.raises(Conflict):
                    await bot.get_updates()
                await bot.delete_webhook()
                assert await bot.get_updates() == ()
            finally:
                await runner.cleanup()

    run(scenario)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- refusals -----------------------------------------------------------------------------------


def test_an_unknown_token_is_refused_as_unauthorized() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake:
            with pytest.raises(InvalidToken):
                async with bot_for(fake, token="42:not-the-token"):
                    pass
            assert fake.refused_calls[-1].status == 401
            assert fake.refused_calls[-1].response == {
                "ok": False,
                "error_code": 401,
                "description": "Unauthorized",
            }

    run(scenario)


def test_callback_data_over_64_bytes_is_refused() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            chat = fake.private_chat(fake.user)
            await bot.send_message(chat.id, "ok", reply_markup=keyboard([("K", "가" * 21)]))
            with pytest.raises(BadRequest):  # 22 Korean syllables: 66 bytes, 22 characters
                await bot.send_message(chat.id, "no", reply_markup=keyboard([("K", "가" * 22)]))
            assert fake.refused_calls[-1].response == {
                "ok": False,
                "error_code": 400,
                "description": "Bad Request: BUTTON_DATA_INVALID",
            }
            assert [m.text for m in fake.messages_in(chat)] == ["ok"]

    run(scenario)


def test_long_captions_and_texts_are_refused_after_entities_parsing() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            chat = fake.private_chat(fake.user)
            picture = png_bytes()
            await bot.send_photo(
                chat.id, picture, caption="<b>" + "c" * 1024 + "</b>", parse_mode="HTML"
            )
            with pytest.raises(BadRequest):
                await bot.send_photo(chat.id, picture, caption="c" * 1025)
            assert fake.refused_calls[-1].description == "Bad Request: message caption is too long"
            await bot.send_message(chat.id, "t" * 4096)
            with pytest.raises(BadRequest):
                await bot.send_message(chat.id, "t" * 4097)
            assert fake.refused_calls[-1].description == "Bad Request: message is too long"
            with pytest.raises(BadRequest):
                await bot.send_message(chat.id, "<b></b>", parse_mode="HTML")
            assert fake.refused_calls[-1].description == "Bad Request: message text is empty"

    run(scenario)


@pytest.mark.parametrize(
    ("html", "reason"),
    [
        ("<b>open", 'Can\'t find end tag corresponding to start tag "b"'),
        ("a < b", 'Unsupported start tag "" at byte offset 2'),
        ("line<br>break", 'Unsupported start tag "br" at byte offset 4'),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ("그림 <p>", 'Unsupported start tag "p" at byte offset 7'),
        ("<b", "Unclosed start tag at byte offset 0"),
        ('<tg-emoji emoji-id="x">👍</tg-emoji>', "Invalid custom emoji identifier specified"),
    ],
)
def test_unparseable_html_is_refused(html: str, reason: str) -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            with pytest.raises(BadRequest):
                await bot.send_message(fake.private_chat(fake.user).id, html, parse_mode="HTML")
            assert fake.refused_calls[-1].description == (
                f"Bad Request: can't parse entities: {reason}"
            )

    run(scenario)


def test_the_html_telegram_allows_parses() -> None:
    source = (
        "<b>b</b><strong>s</strong><i>i</i><em>e</em><u>u</u><ins>n</ins><s>s</s>"
        '<strike>k</strike><del>d</del><span class="tg-spoiler">p</span>'
        '<tg-spoiler>q</tg-spoiler><a href="https://example.com/?a=1&amp;b=2">a</a>'
        '<code>c</code><pre><code class="language-python">x</code></pre>'
        "<blockquote expandable>z</blockquote>"
        '<tg-emoji emoji-id="5368324170671202286">👍</tg-emoji>'
        " 1 &lt; 2 &amp;&amp; 3 &gt; 2 &#44032; & bare >"
    )
    text, entities = parse_html(source)
    assert text == "bsieunskdpqacxz👍 1 < 2 && 3 > 2 가 & bare >"
    kinds = [e["type"] for e in entities]
    for kind in ("bold", "italic", "underline", "strikethrough", "spoiler", "text_link", "code"):
        assert kind in kinds
    assert {"pre", "expandable_blockquote", "custom_emoji"} <= set(kinds)
    link = next(e for e in entities if e["type"] == "text_link")
    assert link["url"] == "https://example.com/?a=1&b=2"
    emoji = next(e for e in entities if e["type"] == "custom_emoji")
    assert emoji["length"] == 2  # UTF-16 code units


def test_a_photo_over_10_mb_is_refused() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            chat = fake.private_chat(fake.user)
            too_big = b"\x89PNG\r\n\x1a\n" + bytes(10 * 1024 * 1024)
            with pytest.raises(BadRequest):
                await bot.send_photo(chat.id, too_big, write_timeout=20)
            assert fake.refused_calls[-1].description == "Bad Request: PHOTO_SAVE_FILE_INVALID"
            with pytest.raises(BadRequest):
                await bot.send_photo(chat.id, png_bytes((2000, 90)))
            assert fake.refused_calls[-1].description == "Bad Request: PHOTO_INVALID_DIMENSIONS"
            assert fake.messages_in(chat) == []

    run(scenario)


def test_editing_with_the_same_content_is_refused_as_not_modified() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            chat = fake.private_chat(fake.user)
            markup = keyboard([("U1", "easel:1:u1")])
            sent = await bot.send_message(
                chat.id, "<b>grid</b>", parse_mode="HTML", reply_markup=markup
            )
            with pytest.raises(BadRequest):
                await bot.edit_message_text(
                    "<b>grid</b>", chat.id, sent.message_id, parse_mode="HTML", reply_markup=markup
                )
            assert fake.refused_calls[-1].description.startswith(
                "Bad Request: message is not modified: specified new message content"
            )
            await bot.edit_message_text(
                "<i>grid</i>", chat.id, sent.message_id, parse_mode="HTML", reply_markup=markup
            )
            with pytest.raises(BadRequest):
                await bot.edit_message_reply_markup(chat.id, sent.message_id, reply_markup=markup)
            with pytest.raises(BadRequest):
                await bot.edit_message_caption(chat.id, sent.message_id, caption="x")
            assert fake.refused_calls[-1].description == (
                "Bad Request: there is no caption in the message to edit"
            )

    run(scenario)


def test_unknown_chats_and_messages_are_refused() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            with pytest.raises(BadRequest):
                await bot.send_message(424242, "hi")
            assert fake.refused_calls[-1].description == "Bad Request: chat not found"
            chat = fake.private_chat(fake.user)
            with pytest.raises(BadRequest):
                await bot.edit_message_text("x", chat.id, 99)
            assert fake.refused_calls[-1].description == "Bad Request: message to edit not found"
            theirs = fake.send_message(chat, text="mine")
            with pytest.raises(BadRequest):
                await bot.edit_message_text("x", chat.id, theirs.message_id)
            assert fake.refused_calls[-1].description == "Bad Request: message can't be edited"
            sent = await bot.send_message(chat.id, "bye")
            assert await bot.delete_message(chat.id, sent.message_id)
            with pytest.raises(BadRequest):
                await bot.delete_message(chat.id, sent.message_id)
            assert fake.refused_calls[-1].description == "Bad Request: message to delete not found"
            with pytest.raises(BadRequest):
                await bot.send_chat_action(chat.id, "dancing")
            fake.block(chat)
            with pytest.raises(Forbidden):
                await bot.send_message(chat.id, "hello?")

    run(scenario)


def test_answering_a_callback_query_twice_or_too_late_is_refused() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            chat = fake.private_chat(fake.user)
            sent = await bot.send_message(chat.id, "grid", reply_markup=keyboard([("U1", "u1")]))
            grid = fake.message(chat, sent.message_id)
            first = fake.press(grid, "u1")
            assert await bot.answer_callback_query(first.id)
            with pytest.raises(BadRequest):
                await bot.answer_callback_query(first.id)
            late = fake.press(grid, "u1")
            fake.advance_clock(fake.settings.callback_answer_window_s + 1)
            with pytest.raises(BadRequest):
                await bot.answer_callback_query(late.id)
            assert fake.refused_calls[-1].description == (
                "Bad Request: query is too old and response timeout expired or query ID is invalid"
            )
            assert not late.answered

    run(scenario)


def test_the_flood_switch_answers_429_with_retry_after() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as bot:
            chat = fake.private_chat(fake.user)
            fake.flood("sendPhoto", retry_after=7)
            with pytest.raises(RetryAfter) as refused:
                await bot.send_photo(chat.id, png_bytes())
            assert seconds(refused.value.retry_after) == 7
            assert fake.refused_calls[-1].response == {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 7",
                "parameters": {"retry_after": 7},
            }
            await bot.send_photo(chat.id, png_bytes())  # only the next one

    run(scenario)


def test_automatic_flood_control_limits_a_chat_and_a_group() -> None:
    async def scenario() -> None:
        settings = FakeTelegramSettings(flood_control=True)
        async with fake_telegram(settings) as fake, bot_for(fake) as bot:
            dm = fake.private_chat(fake.user)
            await bot.send_message(dm.id, "one")
            with pytest.raises(RetryAfter) as refused:
                await bot.send_message(dm.id, "two")
            assert seconds(refused.value.retry_after) == 1
            fake.advance_clock(1.0)
            await bot.send_message(dm.id, "two")

            group = fake.group_chat()
            for n in range(20):
                await bot.send_message(group.id, f"m{n}")
                fake.advance_clock(1.5)  # 20 messages in 30 s of the fake's clock
            with pytest.raises(RetryAfter) as refused:
                await bot.send_message(group.id, "m20")
            assert seconds(refused.value.retry_after) == 30
            fake.advance_clock(30)
            await bot.send_message(group.id, "m20")

    run(scenario)


def test_a_second_poller_ends_the_first_with_conflict() -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, bot_for(fake) as first, bot_for(fake) as second:
            waiting = asyncio.create_task(first.get_updates(timeout=5))
            await fake.wait_until(lambda: len(fake.calls) >= 3, WAIT_S)  # 2 getMe, 1 poll
            assert await second.get_updates(timeout=0) == ()
            with pytest.raises(Conflict):
                await asyncio.wait_for(waiting, WAIT_S)

    run(scenario)
