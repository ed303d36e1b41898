"""How Telegram results go out: NSFW results behind a spoiler, pictures Telegram refuses as
photos sent as documents, HTML escaping and Telegram's length limits, status message ids, and
the slower progress in groups."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from PIL import Image

from bot.core.events import Reply
from bot.core.messages import Key, Message
from bot.settings import Settings
from bot.telegram import incoming
from bot.telegram.delivery import JobMessages, _picture
from bot.telegram.render import StatusMessage, fits_as_photo, reply_html
from pipeline.engine import Engine
from tests.fakes.telegram import fake_telegram
from tests.telegram_serving import PROMPT_FLAGS, result_of, run, sent_to, serving


def test_an_nsfw_result_is_sent_behind_a_spoiler_where_the_chat_allows_it(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with (
            fake_telegram() as fake,
            serving(tmp_path, fake, engine, admins=f"telegram:{fake.user.id}"),
        ):
            group = fake.group_chat()
            fake.send_message(group, fake.user, "/admin@easel_test_bot rules nsfw on")
            await fake.wait_for_call(sent_to(group, "sendMessage"))
            fake.send_message(
                group, fake.user, f"/imagine@easel_test_bot a nude statue {PROMPT_FLAGS}"
            )
            await result_of(fake, group)
            grid = [c for c in fake.calls_to("sendPhoto") if "reply_markup" in c.params][-1]
            assert grid.params.get("has_spoiler") in (True, "true", "True")
            start = len(fake.calls)
            fake.send_message(group, fake.user, f"/imagine@easel_test_bot a vase {PROMPT_FLAGS}")
            await result_of(fake, group, start)
            plain = [c for c in fake.calls_to("sendPhoto") if "reply_markup" in c.params][-1]
            assert plain.params.get("has_spoiler") in (None, False, "false", "False")

    run(scenario)


def png_file(tmp_path: Path, size: tuple[int, int]) -> Path:
    path = tmp_path / f"{size[0]}x{size[1]}.png"
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def test_a_picture_telegram_would_refuse_as_a_photo_goes_as_a_document(tmp_path: Path) -> None:
    square = png_file(tmp_path, (64, 64))
    strip = png_file(tmp_path, (64, 64 * 21))  # more than 20 times as long as wide
    assert fits_as_photo(square.read_bytes()) and not fits_as_photo(strip.read_bytes())
    grid = _picture(Reply(Message(Key.FINISHED), grid=square))
    assert grid is not None and not grid.as_document and grid.data == square.read_bytes()
    tall = _picture(Reply(Message(Key.FINISHED), grid=strip))
    assert tall is not None and tall.as_document and tall.thumbnail is not None
    with Image.open(io.BytesIO(tall.thumbnail)) as thumbnail:
        assert max(thumbnail.size) <= 320 and thumbnail.format == "JPEG"
    upscale = _picture(Reply(Message(Key.FINISHED_UPSCALE_IMAGE), images=(square,)))
    assert upscale is not None and upscale.as_document and upscale.data.startswith(b"\x89PNG")


def test_texts_are_escaped_and_fit_telegram_limits() -> None:
    prompt = "<lora:fox:0.8> [red]_fox & <b>" + "x" * 5000
    reply = Reply(Message(Key.PNGINFO, {"parameters": prompt}), editable="a <lora:x:1> _y_")
    text = reply_html(reply, "en")
    assert "&lt;lora:fox:0.8&gt; [red]_fox &amp; &lt;b&gt;" in text
    assert text.endswith("<pre>a &lt;lora:x:1&gt; _y_</pre>")
    shown = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert len(shown.replace("<pre>", "").replace("</pre>", "")) <= 4096
    assert len(reply_html(Reply(Message(Key.PNGINFO, {"parameters": prompt})), "en", 1024)) >= 1000


def test_status_messages_are_stored_and_read_back() -> None:
    for status in (StatusMessage(-1001000000001, 42), StatusMessage(7, 9, photo=True)):
        assert StatusMessage.parse(status.encode()) == status
    assert StatusMessage.parse("discord:1:2") is None
    assert StatusMessage.parse("telegram:x:2:t") is None
    assert StatusMessage.parse(None) is None


def test_progress_in_a_group_is_slower_than_in_a_private_chat(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, telegram_group_interval=60)

    class NoService:
        service = None

    messages = JobMessages(NoService(), None, settings.telegram_group_interval)  # type: ignore[arg-type]
    assert messages._may_edit(-100123)
    assert not messages._may_edit(-100123)  # within the group's interval
    assert messages._may_edit(-100456)  # another group
    assert messages._may_edit(5) and messages._may_edit(5)  # a private chat: the core's pace
    asyncio.run(messages.close(0.1))


def test_unanswered_questions_are_forgotten_oldest_first_past_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(incoming, "MAX_OPEN_QUESTIONS", 3)
    asking = incoming.Incoming.__new__(incoming.Incoming)
    asking._asks = {}
    for number in range(5):
        asking._remember((1, number), incoming.Ask("remix", number))
    assert list(asking._asks) == [(1, 2), (1, 3), (1, 4)]
