"""Core replies as Telegram messages: HTML text, inline keyboards, which way a picture goes
(photo or document), and where a job's status message is (a string the core keeps with the job).

Texts are sent with parse mode HTML and escaped: prompts hold `<lora:...>`, brackets and
underscores.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

from PIL import Image
from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.core.buttons import ButtonRows
from bot.core.events import Reply

MAX_TEXT = 4096  # a message's text, after entities are parsed
MAX_CAPTION = 1024  # a photo's or document's caption
# sendPhoto: at most 10 MB, width + height at most 10000, and a ratio at most 20.
MAX_PHOTO_BYTES = 10 * 1000 * 1000
MAX_PHOTO_SIDES = 10_000
MAX_PHOTO_RATIO = 20
THUMBNAIL_SIDE = 320  # a document's thumbnail: JPEG, at most 320x320 and 200 kB
_STATUS_PREFIX = "telegram"


@dataclass(frozen=True)
class StatusMessage:
    """A job's status message: its chat, id, and whether it shows a photo (edited by its
    caption and media) or text."""

    chat_id: int
    message_id: int
    photo: bool = False

    def encode(self) -> str:
        return f"{_STATUS_PREFIX}:{self.chat_id}:{self.message_id}:{'p' if self.photo else 't'}"

    @classmethod
    def parse(cls, text: str | None) -> StatusMessage | None:
        """The message a stored string names, or None for none or one that is not ours."""
        parts = (text or "").split(":")
        if len(parts) != 4 or parts[0] != _STATUS_PREFIX or parts[3] not in ("p", "t"):
            return None
        chat, message = parts[1], parts[2]
        if not (_is_int(chat) and message.isascii() and message.isdigit()):
            return None
        return cls(int(chat), int(message), parts[3] == "p")


def _is_int(text: str) -> bool:
    digits = text.removeprefix("-")
    return digits.isascii() and digits.isdigit()


def escape(text: str) -> str:
    return html.escape(text, quote=False)


def reply_html(reply: Reply, locale: str, limit: int = MAX_TEXT) -> str:
    """The reply's text, escaped, with a line to edit (remix) as a code block to copy; cut to
    `limit` characters (Telegram counts them after the tags are parsed)."""
    text = reply.text(locale)
    code = f"\n<pre>{escape(reply.editable)}</pre>" if reply.editable is not None else ""
    room = limit - (len(reply.editable) + 1 if reply.editable is not None else 0)
    if len(text) > room:
        text = text[: max(0, room - 1)] + "…"
    return escape(text) + code


def keyboard(rows: ButtonRows, locale: str) -> InlineKeyboardMarkup | None:
    """The grid's buttons: U1-U4, V1-V4, S1-S4, then reroll and remix; callback_data is the
    core's button id (`easel:<job>:<action>`, at most 64 bytes)."""
    if not rows:
        return None
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(button.text(locale), callback_data=button.custom_id)
                for button in row
            ]
            for row in rows
        ]
    )


def fits_as_photo(data: bytes) -> bool:
    """Whether Telegram takes the image as a photo: 10 MB at most, sides together at most
    10000 px, and no more than 20 times as long as it is wide."""
    if len(data) > MAX_PHOTO_BYTES:
        return False
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return width + height <= MAX_PHOTO_SIDES and max(width, height) <= MAX_PHOTO_RATIO * min(
        width, height
    )


def jpeg_preview(data: bytes, side: int, quality: int = 85) -> bytes:
    """A JPEG of the image scaled to at most `side` px a side (a thumbnail, a preview)."""
    with Image.open(io.BytesIO(data)) as opened:
        picture = opened.convert("RGB")
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality)
    return out.getvalue()
