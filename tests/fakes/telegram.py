"""A fake Telegram Bot API server for tests, on 127.0.0.1.

The real python-telegram-bot talks to it unchanged when built with

    Application.builder().token(fake.token)
        .base_url(f"{fake.url}/bot").base_file_url(f"{fake.url}/file/bot")

(`fake.base_url` and `fake.base_file_url` spell those out). It serves `/bot<token>/<method>`
the way the Bot API does (query string, url-encoded form, JSON body or multipart/form-data;
PTB sends a url-encoded form, or multipart with the files when it uploads; method names are
case-insensitive) and `/file/bot<token>/<file_path>` for downloads. Answers have the Bot API's
shape: `{"ok": true, "result": ...}` or `{"ok": false, "error_code": ..., "description": ...,
"parameters": {...}}`.

It keeps a small world: users, chats, messages with ids per chat and what they show now (text
or caption, photo sizes, document, inline keyboard), files, the update queue, the bot's
commands per scope and language, the webhook. A test scripts what people do
(`send_message`, `send_photo`, `send_document`, `reply_to`, `press`) and those become updates
that `getUpdates` hands out (long polling, `offset`, `limit`, `timeout`, `allowed_updates`)
or that are POSTed to the bot's webhook with `X-Telegram-Bot-Api-Secret-Token`. Every API call
is recorded (method, parsed parameters, uploaded files with their bytes, the fake's clock when
it came in and when its answer was ready) for `calls_to`, `wait_for_call` and `wait_until`;
`handed_out` says which getUpdates answer carried an update.

What it refuses, and where the rule comes from (core.telegram.org/bots/api, "Bot API" below;
the Bots FAQ at core.telegram.org/bots/faq; tdlib's HTML parser, which the Bot API server runs;
descriptions as the Bot API server words them, "Bad Request: " + the reason):

- An unknown token: 401 "Unauthorized"; an unknown method: 404 "Not Found" (PTB raises
  InvalidToken for both).
- Text: 1-4096 characters after entities parsing (Bot API, sendMessage.text): "message text is
  empty", "message is too long". Captions: 0-1024 characters after entities parsing (Bot API,
  sendPhoto.caption): "message caption is too long". Counted in code points, as tdlib's
  utf8_length does for its "Message is too long".
- parse_mode HTML (Bot API, "HTML style"): only the tags b, strong, i, em, u, ins, s, strike,
  del, span class="tg-spoiler", tg-spoiler, a href, code, pre, blockquote [expandable],
  tg-emoji emoji-id; `<` that starts no tag is a tag with an empty name. Errors as tdlib's
  parse_html words them after "can't parse entities: ": `Unsupported start tag "x" at byte
  offset N`, `Unclosed start tag at byte offset N`, `Unexpected end tag at byte offset N`,
  `Unmatched end tag at byte offset N, expected "</b>", found "</i>"`, `Can't find end tag
  corresponding to start tag "b"`, `Tag "span" must have class "tg-spoiler" at byte offset N`,
  `Invalid custom emoji identifier specified`.
  Only &lt; &gt; &amp; &quot; and numeric entities are decoded (Bot API); a bare `&` or `>`
  is kept as it is, as tdlib does (Telegram accepts it), so the fake accepts it too.
  MarkdownV2 and Markdown texts are stored as sent, unchecked.
- Inline keyboards (Bot API, InlineKeyboardButton): callback_data is 1-64 bytes, else
  "BUTTON_DATA_INVALID"; a button must have exactly one of the optional action fields, else
  "text buttons are unallowed in the inline keyboard".
- Photos (Bot API, sendPhoto): at most 10 MB, else "PHOTO_SAVE_FILE_INVALID"; width + height
  at most 10000 and a ratio at most 20, else "PHOTO_INVALID_DIMENSIONS"; bytes that are no
  image: "IMAGE_PROCESS_FAILED". Other uploads: 50 MB (Bot API, "Sending files"), beyond it the
  HTTP 413 "Request Entity Too Large". Empty files: "file must be non-empty". getFile: 20 MB
  (Bot API, getFile), "file is too big"; an unknown file_id: "wrong file identifier/HTTP URL
  specified" (an HTTP URL too: the fake fetches nothing).
- Edits (Bot API, "Updating messages"): an unknown message "message to edit not found"; a
  message the bot did not send "message can't be edited"; editMessageText on a media message
  "there is no text in the message to edit", editMessageCaption on a text message "there is no
  caption in the message to edit"; the same text, entities and keyboard again "message is not
  modified: specified new message content and reply markup are exactly the same as a current
  content and reply markup of the message". An edit without reply_markup removes the keyboard,
  as Telegram does. editMessageMedia on a text message: "there is no media in the message to
  edit" (unconfirmed wording). deleteMessage (Bot API): "message to delete not found"; older
  than 48 hours "message can't be deleted for everyone"; someone else's message in a group
  where the bot is no admin "message can't be deleted" (both unconfirmed wordings).
- answerCallbackQuery (Bot API): a query answered already, one the fake never sent, or one
  older than the answer window: "query is too old and response timeout expired or query ID is
  invalid". Telegram documents no figure for the window; the fake's is
  `FakeTelegramSettings.callback_answer_window_s` (15 s) on its own clock (`advance_clock`).
  Notification text over 200 characters: "MESSAGE_TOO_LONG".
- Unknown chats "chat not found"; a blocked private chat 403 "Forbidden: bot was blocked by the
  user"; replies to a missing message "message to be replied not found" (unless
  allow_sending_without_reply); sendChatAction with another action "wrong parameter action in
  request"; setMyCommands (Bot API, BotCommand): command 1-32 of a-z, 0-9, _ else
  "BOT_COMMAND_INVALID", description 1-256 characters else "BOT_COMMAND_DESCRIPTION_INVALID"
  (the server's wording of that one is unconfirmed), at most 100 commands else
  "BOT_COMMANDS_TOO_MUCH", language_code empty or two letters else "LANG_CODE_INVALID"
  (unconfirmed wording).
- getUpdates while a webhook is set: 409 "Conflict: can't use getUpdates method while webhook
  is active; use deleteWebhook to delete the webhook first"; a second getUpdates ends the one
  still waiting with 409 "Conflict: terminated by other getUpdates request; make sure that only
  one bot instance is running" (PTB raises Conflict).
- Flood control (Bots FAQ, "My bot is hitting limits"): 429 "Too Many Requests: retry after N"
  with `parameters.retry_after` N (PTB raises RetryAfter). A test asks for the next ones with
  `flood`; `FakeTelegramSettings.flood_control` adds the FAQ's limits on the fake's clock: more
  than one message a second to one chat, or more than 20 a minute to one group. (Telegram
  allows short bursts over the first; the fake does not, so a test that turns it on sees it.)

Group privacy (core.telegram.org/bots/features#privacy-mode): on by default, as for a new bot;
in a group where the bot is no admin, a person's message becomes an update only when it starts
with a command (for this bot or for none in particular), mentions the bot, or replies to one of
the bot's messages (`FakeTelegramSettings.group_privacy`, `FakeTelegram.sees`).

Webhooks: setWebhook takes http URLs on any port, as a self-hosted Bot API server in --local
mode does (api.telegram.org wants HTTPS on 443, 80, 88 or 8443).

Usage, inside one event loop:

    async with fake_telegram() as fake:
        app = Application.builder().token(fake.token).base_url(fake.base_url)
              .base_file_url(fake.base_file_url).build()
        ...
        bora = fake.add_user(2001, "Bo-ra", language_code="ko")
        message = fake.send_message(fake.private_chat(bora), bora, "/imagine 고양이")
        call = await fake.wait_for_call(lambda c: c.method == "sendPhoto")
        shown = fake.message(call.chat_id, call.result["message_id"])
        await fake.wait_until(lambda: shown.caption == "done")
        query = fake.press(shown, "easel:1:u1", user=bora)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

from tests.fakes.recorded import RecordedFile

MB = 1024 * 1024
MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_CALLBACK_DATA_BYTES = 64
MAX_CALLBACK_ANSWER_LENGTH = 200
MAX_PHOTO_BYTES = 10 * MB
MAX_UPLOAD_BYTES = 50 * MB
MAX_DOWNLOAD_BYTES = 20 * MB
MAX_PHOTO_SIDES_SUM = 10_000
MAX_PHOTO_RATIO = 20
MAX_COMMANDS = 100
DELETE_WINDOW_S = 48 * 3600
PHOTO_SIZE_LIMITS = (90, 320, 800, 1280)  # the longest side of the smaller sizes Telegram makes
SECRET_TOKEN_HEADER = "X-Telegram-Bot-Api-Secret-Token"
CLIENT_CLOSED_REQUEST = 499  # recorded for a call whose client left before it was read

CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
UPDATE_TYPES = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
)
# Bot API, getUpdates.allowed_updates: by default all but these.
OPT_IN_UPDATE_TYPES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
BUTTON_ACTIONS = (
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)
JSON_PARAMETERS = frozenset(
    {
        "reply_markup",
        "media",
        "entities",
        "caption_entities",
        "commands",
        "scope",
        "allowed_updates",
        "link_preview_options",
        "reply_parameters",
    }
)
COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
BOT_COMMAND = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")
SEND_METHODS = frozenset(
    {"sendmessage", "sendphoto", "senddocument", "sendmediagroup"}
)  # what flood control counts as messages


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# -- errors -------------------------------------------------------------------------------------


class TelegramApiError(Exception):
    """A refusal the fake answers with the Bot API's error shape."""

    def __init__(
        self, status: int, description: str, parameters: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {description}")
        self.status = status
        self.description = description
        self.parameters = dict(parameters or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.status,
            "description": self.description,
        }
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(reason: str) -> TelegramApiError:
    return TelegramApiError(400, f"Bad Request: {reason}")


def too_many_requests(retry_after: int) -> TelegramApiError:
    return TelegramApiError(
        429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
    )


CHAT_NOT_FOUND = "chat not found"
QUERY_TOO_OLD = "query is too old and response timeout expired or query ID is invalid"
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly the "
    "same as a current content and reply markup of the message"
)
WRONG_FILE = "wrong file identifier/HTTP URL specified"


# -- HTML parse mode ----------------------------------------------------------------------------

HTML_TAGS = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    }
)
TAG_ENTITY = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
NAMED_HTML_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
NUMERIC_ENTITY = re.compile(r"&#(?:x([0-9a-fA-F]{1,6})|([0-9]{1,7}));")
NAMED_ENTITY = re.compile(r"&([a-zA-Z]{2,4});")
UNQUOTED_VALUE = re.compile(r"[A-Za-z0-9.\-]*")


@dataclass
class OpenTag:
    name: str
    attributes: dict[str, str]
    start: int  # UTF-16 offset in the parsed text


def decode_html_entity(source: str, at: int) -> tuple[str, int] | None:
    """The character an HTML entity at `at` stands for and where it ends, or None when the
    `&` starts none of the entities the Bot API decodes."""
    numeric = NUMERIC_ENTITY.match(source, at)
    if numeric:
        code = int(numeric.group(1), 16) if numeric.group(1) else int(numeric.group(2))
        if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
            return chr(code), numeric.end()
        return None
    named = NAMED_ENTITY.match(source, at)
    if named and named.group(1) in NAMED_HTML_ENTITIES:
        return NAMED_HTML_ENTITIES[named.group(1)], named.end()
    return None


def parse_html(source: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's HTML parse mode: the plain text and its entities (UTF-16 offsets), or a
    400 "can't parse entities: ..." in the words of tdlib's parser."""
    text: list[str] = []
    entities: list[dict[str, Any]] = []
    stack: list[OpenTag] = []
    offset = 0  # UTF-16 length of the text so far
    i, n = 0, len(source)

    def fail(reason: str) -> TelegramApiError:
        return bad_request(f"can't parse entities: {reason}")

    def byte_offset(position: int) -> int:
        return len(source[:position].encode())

    while i < n:
        char = source[i]
        if char == "&":
            decoded = decode_html_entity(source, i)
            if decoded is not None:
                text.append(decoded[0])
                offset += utf16_length(decoded[0])
                i = decoded[1]
                continue
        if char != "<":
            text.append(char)
            offset += utf16_length(char)
            i += 1
            continue
        begin = i
        i += 1
        if i < n and source[i] == "/":
            j = i + 1
            while j < n and not source[j].isspace() and source[j] != ">":
                j += 1
            name = source[i + 1 : j].lower()
            while j < n and source[j].isspace():
                j += 1
            if not stack:
                raise fail(f"Unexpected end tag at byte offset {byte_offset(begin)}")
            if j >= n or source[j] != ">":
                raise fail(f"Unclosed end tag at byte offset {byte_offset(begin)}")
            top = stack[-1]
            if name and name != top.name:
                raise fail(
                    f"Unmatched end tag at byte offset {byte_offset(begin)}, "
                    f'expected "</{top.name}>", found "</{name}>"'
                )
            stack.pop()
            if top.name == "tg-emoji" and not top.attributes.get("emoji-id", "").isdigit():
                raise fail("Invalid custom emoji identifier specified")
            if offset > top.start:
                entities.append(tag_entity(top, offset))
            i = j + 1
            continue
        j = i
        while j < n and not source[j].isspace() and source[j] != ">":
            j += 1
        if j >= n:
            raise fail(f"Unclosed start tag at byte offset {byte_offset(begin)}")
        name = source[i:j].lower()
        if name not in HTML_TAGS:
            raise fail(f'Unsupported start tag "{name}" at byte offset {byte_offset(begin)}')
        attributes, j = parse_attributes(source, j, name, byte_offset(begin), fail)
        if name == "span" and attributes.get("class") != "tg-spoiler":
            raise fail(
                f'Tag "span" must have class "tg-spoiler" at byte offset {byte_offset(begin)}'
            )
        stack.append(OpenTag(name, attributes, offset))
        i = j + 1
    if stack:
        raise fail(f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(text), entities


def parse_attributes(
    source: str,
    j: int,
    tag: str,
    tag_offset: int,
    fail: Callable[[str], TelegramApiError],
) -> tuple[dict[str, str], int]:
    """The attributes of a start tag from `j` (after its name) to its `>`, and where that is."""
    n = len(source)
    attributes: dict[str, str] = {}
    while True:
        while j < n and source[j].isspace():
            j += 1
        if j >= n:
            raise fail(f'Unclosed start tag "{tag}" at byte offset {tag_offset}')
        if source[j] == ">":
            return attributes, j
        start = j
        while j < n and not source[j].isspace() and source[j] not in "=>/\"'":
            j += 1
        name = source[start:j].lower()
        if not name:
            raise fail(f'Empty attribute name in the tag "{tag}" at byte offset {tag_offset}')
        while j < n and source[j].isspace():
            j += 1
        if j >= n:
            raise fail(f'Unclosed start tag "{tag}" at byte offset {tag_offset}')
        if source[j] != "=":
            attributes[name] = ""
            continue
        j += 1
        while j < n and source[j].isspace():
            j += 1
        if j >= n:
            raise fail(f'Unclosed start tag "{tag}" at byte offset {tag_offset}')
        if source[j] in "\"'":
            quote, j = source[j], j + 1
            value: list[str] = []
            while j < n and source[j] != quote:
                decoded = decode_html_entity(source, j) if source[j] == "&" else None
                if decoded is not None:
                    value.append(decoded[0])
                    j = decoded[1]
                else:
                    value.append(source[j])
                    j += 1
            if j >= n:
                raise fail(f'Unclosed start tag "{tag}" at byte offset {tag_offset}')
            j += 1
            attributes[name] = "".join(value)
        else:
            token = UNQUOTED_VALUE.match(source, j)
            assert token is not None
            end = token.end()
            if end >= n or (not source[end].isspace() and source[end] != ">"):
                raise fail(
                    f"Unexpected end of name token at byte offset {len(source[:end].encode())}"
                )
            attributes[name] = token.group(0).lower()
            j = end


def tag_entity(tag: OpenTag, end: int) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "type": TAG_ENTITY[tag.name],
        "offset": tag.start,
        "length": end - tag.start,
    }
    if tag.name == "a":
        entity["url"] = tag.attributes.get("href", "")
    elif tag.name == "tg-emoji":
        entity["custom_emoji_id"] = tag.attributes.get("emoji-id", "")
    elif tag.name == "blockquote" and "expandable" in tag.attributes:
        entity["type"] = "expandable_blockquote"
    elif tag.name == "code" and tag.attributes.get("class", "").startswith("language-"):
        entity["language"] = tag.attributes["class"].removeprefix("language-")
    return entity


def command_entities(text: str) -> list[dict[str, Any]]:
    """The bot_command entities Telegram marks in a person's text (PTB's CommandHandler needs
    the one at offset 0)."""
    return [
        {
            "type": "bot_command",
            "offset": utf16_length(text[: match.start()]),
            "length": utf16_length(match.group(0)),
        }
        for match in BOT_COMMAND.finditer(text)
    ]


# -- the world ----------------------------------------------------------------------------------


@dataclass
class FakeUser:
    id: int
    first_name: str
    username: str | None = None
    language_code: str | None = "en"
    is_bot: bool = False

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.username:
            data["username"] = self.username
        if self.language_code and not self.is_bot:
            data["language_code"] = self.language_code
        return data


@dataclass
class FakeChat:
    id: int
    type: str  # "private", "group", "supergroup", "channel"
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    bot_is_admin: bool = False
    blocked: bool = False  # a private chat whose user blocked the bot

    @property
    def is_group(self) -> bool:
        return self.type in ("group", "supergroup")

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "type": self.type}
        for key in ("title", "username", "first_name"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        return data


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str
    mime_type: str
    file_name: str | None = None
    width: int = 0
    height: int = 0

    def photo_size(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "width": self.width,
            "height": self.height,
            "file_size": len(self.data),
        }

    def document(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "mime_type": self.mime_type,
            "file_size": len(self.data),
        }
        if self.file_name:
            data["file_name"] = self.file_name
        return data


@dataclass
class FakeMessage:
    """A message as Telegram has it now: edits change it in place."""

    chat: FakeChat
    message_id: int
    sender: FakeUser
    date: int
    sent_at: float  # the fake's clock
    text: str | None = None
    entities: list[dict[str, Any]] = field(default_factory=list)
    caption: str | None = None
    caption_entities: list[dict[str, Any]] = field(default_factory=list)
    photo: list[StoredFile] = field(default_factory=list)  # smallest to largest
    document: StoredFile | None = None
    reply_markup: dict[str, Any] | None = None
    reply_to: FakeMessage | None = None
    media_group_id: str | None = None
    edit_date: int | None = None
    deleted: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier states, oldest first
    update_id: int | None = None  # the update that brought a person's message to the bot

    @property
    def has_media(self) -> bool:
        return bool(self.photo) or self.document is not None

    @property
    def photo_bytes(self) -> bytes:
        """The largest size of the photo."""
        if not self.photo:
            raise LookupError(f"message {self.message_id} has no photo")
        return self.photo[-1].data

    @property
    def keyboard(self) -> list[list[dict[str, Any]]]:
        """The inline keyboard's rows of buttons (empty when there is none)."""
        return list((self.reply_markup or {}).get("inline_keyboard") or [])

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [button for row in self.keyboard for button in row]

    def button(self, text: str) -> dict[str, Any]:
        """The inline button labelled `text`."""
        for button in self.buttons:
            if button.get("text") == text:
                return button
        raise LookupError(f"message {self.message_id} has no button {text!r}: {self.buttons}")

    def snapshot(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "caption": self.caption,
            "photo": [f.file_id for f in self.photo],
            "document": self.document.file_id if self.document else None,
            "reply_markup": self.reply_markup,
        }

    def payload(self, *, nested: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "message_id": self.message_id,
            "from": self.sender.payload(),
            "chat": self.chat.payload(),
            "date": self.date,
        }
        if self.text is not None:
            data["text"] = self.text
            if self.entities:
                data["entities"] = self.entities
        if self.caption is not None:
            data["caption"] = self.caption
            if self.caption_entities:
                data["caption_entities"] = self.caption_entities
        if self.photo:
            data["photo"] = [size.photo_size() for size in self.photo]
        if self.document is not None:
            data["document"] = self.document.document()
        if self.reply_markup and "inline_keyboard" in self.reply_markup:
            data["reply_markup"] = self.reply_markup
        if self.media_group_id:
            data["media_group_id"] = self.media_group_id
        if self.edit_date is not None:
            data["edit_date"] = self.edit_date
        if nested and self.reply_to is not None:
            data["reply_to_message"] = self.reply_to.payload(nested=False)
        return data


@dataclass
class CallbackQueryState:
    id: str
    user: FakeUser
    message: FakeMessage
    data: str
    created_at: float  # the fake's clock
    update_id: int
    answer: dict[str, Any] | None = None  # the answerCallbackQuery parameters, once answered

    @property
    def answered(self) -> bool:
        return self.answer is not None


@dataclass
class WebhookState:
    url: str
    secret_token: str | None
    allowed_updates: list[str] | None
    max_connections: int


@dataclass
class RecordedCall:
    index: int
    method: str  # as PTB spelled it, e.g. "sendPhoto"
    token: str
    params: dict[str, Any]  # JSON parameters decoded, the rest as sent (strings)
    files: dict[str, RecordedFile]  # by multipart field name
    at: float  # the fake's clock, when the request came in
    status: int = 0
    response: Any = None
    answered_at: float | None = None  # the fake's clock, when the answer was ready
    abandoned: bool = False  # the client had gone before the answer (a cancelled long poll)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def result(self) -> Any:
        """The `result` of a successful call."""
        if not self.ok:
            raise AssertionError(f"{self!r} was refused: {self.response}")
        return self.response["result"]

    @property
    def description(self) -> str:
        return (self.response or {}).get("description", "")

    @property
    def chat_id(self) -> int | str | None:
        value = self.params.get("chat_id")
        return int(value) if isinstance(value, str) and value.lstrip("-").isdigit() else value

    def file(self, field_or_attach: str | None = None) -> RecordedFile:
        """An uploaded file: by field name ("photo") or `attach://` name; the only one if None."""
        if field_or_attach is None:
            if len(self.files) != 1:
                raise LookupError(f"{self!r} uploaded {len(self.files)} files")
            return next(iter(self.files.values()))
        return self.files[field_or_attach.removeprefix("attach://")]

    def __repr__(self) -> str:
        files = [f"{f.field}:{f.filename}({len(f.data)} B)" for f in self.files.values()]
        return f"<{self.index} {self.method} -> {self.status} files={files}>"


@dataclass
class FloodRule:
    predicate: Callable[[RecordedCall], bool]
    retry_after: int
    times: int


@dataclass
class FakeTelegramSettings:
    token: str = "123456789:AAFakeTelegramTokenForEaselTests000"
    bot_user: FakeUser = field(
        default_factory=lambda: FakeUser(
            123456789, "Easel", username="easel_test_bot", language_code=None, is_bot=True
        )
    )
    callback_answer_window_s: float = 15.0
    flood_control: bool = False
    per_chat_interval_s: float = 1.0  # one message a second to one chat
    group_messages_per_minute: int = 20
    max_photo_bytes: int = MAX_PHOTO_BYTES
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_download_bytes: int = MAX_DOWNLOAD_BYTES
    group_privacy: bool = True  # Telegram's default for bots; see FakeTelegram.sees


# -- request parsing ----------------------------------------------------------------------------


def decode_parameters(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters with the JSON-serialized ones decoded, as the Bot API reads them."""
    params: dict[str, Any] = {}
    for name, value in raw.items():
        if name in JSON_PARAMETERS and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                if name == "reply_markup":
                    raise bad_request("can't parse reply keyboard markup JSON object") from None
                raise bad_request(f"can't parse {name} JSON object") from None
        params[name] = value
    return params


def integer(params: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = params.get(name, default)
    if value is None:
        raise bad_request(
            f"{name} is empty" if name != "message_id" else "message identifier is not specified"
        )
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad_request(f"invalid {name} specified") from None


def flag(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return bool(value)


def check_reply_markup(markup: Any) -> dict[str, Any] | None:
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    rows = markup.get("inline_keyboard")
    if rows is None:
        return markup  # a reply keyboard, remove_keyboard or force_reply: kept as sent
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise bad_request(
            "can't parse inline keyboard button: InlineKeyboardButton must be an Object"
        )
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or "text" not in button:
                raise bad_request(
                    'can\'t parse inline keyboard button: Field "text" must be of type String'
                )
            actions = [key for key in BUTTON_ACTIONS if key in button]
            if len(actions) != 1:
                raise bad_request("text buttons are unallowed in the inline keyboard")
            if "callback_data" in button:
                data = button["callback_data"]
                if (
                    not isinstance(data, str)
                    or not 1 <= len(data.encode()) <= MAX_CALLBACK_DATA_BYTES
                ):
                    raise bad_request("BUTTON_DATA_INVALID")
    return markup


def image_info(data: bytes) -> tuple[int, int, str] | None:
    """Width, height and MIME type of an image, or None for bytes that are no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size[0], image.size[1], f"image/{(image.format or 'jpeg').lower()}"
    except (UnidentifiedImageError, OSError):
        return None


def smaller_sizes(data: bytes, width: int, height: int) -> list[tuple[bytes, int, int]]:
    """The JPEG thumbnails Telegram makes of a photo, smallest first."""
    from PIL import Image

    sizes: list[tuple[bytes, int, int]] = []
    longest = max(width, height)
    for limit in PHOTO_SIZE_LIMITS:
        if limit >= longest:
            break
        with Image.open(io.BytesIO(data)) as image:
            scale = limit / longest
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = image.convert("RGB").resize(size)
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=80)
            sizes.append((buffer.getvalue(), size[0], size[1]))
    return sizes


# -- the server ---------------------------------------------------------------------------------

Handler = Callable[[RecordedCall], Any]


class FakeTelegram:
    """The fake Bot API server: start it, point PTB at it, script updates, assert calls."""

    def __init__(self, settings: FakeTelegramSettings | None = None) -> None:
        self.settings = settings or FakeTelegramSettings()
        self.calls: list[RecordedCall] = []
        self.internal_errors: list[Exception] = []
        self.users: dict[int, FakeUser] = {self.settings.bot_user.id: self.settings.bot_user}
        self.chats: dict[int, FakeChat] = {}
        self.messages: dict[tuple[int, int], FakeMessage] = {}
        self.files: dict[str, StoredFile] = {}  # by file_id
        self.files_by_path: dict[str, StoredFile] = {}
        self.updates: list[dict[str, Any]] = []  # not yet confirmed
        self.callback_queries: dict[str, CallbackQueryState] = {}
        self.commands: dict[tuple[str, str], list[dict[str, str]]] = {}
        # (field, language_code) -> text, for setMyDescription and setMyShortDescription
        self.descriptions: dict[tuple[str, str], str] = {}
        self.webhook: WebhookState | None = None
        self.webhook_deliveries: list[tuple[int, int]] = []  # (update_id, HTTP status)
        self.allowed_updates: list[str] | None = None
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._update_ids = itertools.count(100_000_001)
        self._file_ids = itertools.count(1)
        self._group_ids = itertools.count(1_000_000_001)
        self._media_groups = itertools.count(13_000_000_000_000_001)
        self._clock_offset = 0.0
        self._flood_rules: list[FloodRule] = []
        self._sent_at: dict[int, list[float]] = {}  # chat id -> when messages were sent to it
        self._poll_generation = 0
        self._closing = False
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._webhook_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.user = self.add_user(1001, "Alice", username="alice")

    # -- lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=self.settings.max_upload_bytes + MB)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._closing = True
        await self._notify()  # long polls still waiting answer at once
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.settings.token

    @property
    def base_url(self) -> str:
        """For `ApplicationBuilder.base_url` (PTB appends the token)."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        """For `ApplicationBuilder.base_file_url` (PTB appends the token)."""
        return f"{self.url}/file/bot"

    @property
    def bot(self) -> FakeUser:
        return self.settings.bot_user

    # -- the fake's clock

    def clock(self) -> float:
        return time.monotonic() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock on: past the callback answer window, the 48 hours to delete,
        the flood windows."""
        self._clock_offset += seconds

    def unix_time(self) -> int:
        return int(time.time() + self._clock_offset)

    # -- the world, for tests

    def add_user(
        self,
        user_id: int,
        first_name: str,
        *,
        username: str | None = None,
        language_code: str | None = "en",
    ) -> FakeUser:
        user = FakeUser(user_id, first_name, username=username, language_code=language_code)
        self.users[user.id] = user
        return user

    def private_chat(self, user: FakeUser) -> FakeChat:
        """The private chat between `user` and the bot (its id is the user's)."""
        chat = self.chats.get(user.id)
        if chat is None:
            chat = FakeChat(user.id, "private", username=user.username, first_name=user.first_name)
            self.chats[chat.id] = chat
        return chat

    def group_chat(
        self, title: str = "Easel Group", *, supergroup: bool = True, bot_is_admin: bool = False
    ) -> FakeChat:
        """A group the bot is in (a supergroup by default: ids -100...)."""
        number = next(self._group_ids)
        chat_id = -(1_000_000_000_000 + number) if supergroup else -number
        chat = FakeChat(
            chat_id, "supergroup" if supergroup else "group", title=title, bot_is_admin=bot_is_admin
        )
        self.chats[chat.id] = chat
        return chat

    def block(self, chat: FakeChat) -> None:
        """The user of this private chat blocked the bot (403 on every send)."""
        chat.blocked = True

    def add_photo(self, data: bytes) -> list[StoredFile]:
        """A photo as Telegram stores one a person sent: JPEG thumbnails (longest side 90, 320,
        800, 1280 px, those smaller than the photo) and the photo itself as the largest size,
        with the bytes given. Returns the sizes, smallest first."""
        info = image_info(data)
        if info is None:
            raise ValueError("add_photo needs the bytes of an image")
        return self._store_photo(data, *info)

    def add_document(
        self, data: bytes, filename: str, mime_type: str = "application/octet-stream"
    ) -> StoredFile:
        suffix = "." + filename.rsplit(".", 1)[-1] if "." in filename else ""
        return self._store_file(data, mime_type, "documents", suffix, file_name=filename)

    def message(self, chat: FakeChat | int, message_id: int) -> FakeMessage:
        """What message `message_id` in `chat` shows now (deleted ones too, flagged)."""
        chat_id = chat.id if isinstance(chat, FakeChat) else int(chat)
        return self.messages[(chat_id, message_id)]

    def messages_in(
        self, chat: FakeChat | int, *, from_bot: bool | None = None
    ) -> list[FakeMessage]:
        """The messages in `chat` that are not deleted, oldest first; only the bot's (or only
        the people's) with `from_bot`."""
        chat_id = chat.id if isinstance(chat, FakeChat) else int(chat)
        found = [m for (c, _), m in sorted(self.messages.items()) if c == chat_id and not m.deleted]
        if from_bot is not None:
            found = [m for m in found if (m.sender.id == self.bot.id) == from_bot]
        return found

    def commands_for(
        self, scope: Mapping[str, Any] | None = None, language_code: str = ""
    ) -> list[dict[str, str]]:
        """The commands set for `scope` (default scope if None) and `language_code`."""
        return list(self.commands.get((scope_key(scope), language_code), []))

    # -- what people do: updates

    def send_message(
        self,
        chat: FakeChat,
        user: FakeUser | None = None,
        text: str = "",
        *,
        reply_to: FakeMessage | None = None,
    ) -> FakeMessage:
        """`user` posts `text` in `chat` (bot commands marked as Telegram marks them)."""
        user = user or self.user
        message = self._new_message(chat, user, reply_to=reply_to)
        message.text = text
        message.entities = command_entities(text)
        self._deliver_message(message)
        return message

    def send_photo(
        self,
        chat: FakeChat,
        user: FakeUser | None = None,
        data: bytes = b"",
        *,
        caption: str | None = None,
        reply_to: FakeMessage | None = None,
    ) -> FakeMessage:
        """`user` sends a photo (several sizes, as Telegram delivers them) with a caption."""
        user = user or self.user
        message = self._new_message(chat, user, reply_to=reply_to)
        message.photo = self.add_photo(data)
        if caption is not None:
            message.caption = caption
            message.caption_entities = command_entities(caption)
        self._deliver_message(message)
        return message

    def send_document(
        self,
        chat: FakeChat,
        user: FakeUser | None = None,
        data: bytes = b"",
        *,
        filename: str = "file.png",
        mime_type: str = "image/png",
        caption: str | None = None,
        reply_to: FakeMessage | None = None,
    ) -> FakeMessage:
        """`user` sends a file as a document (an image sent uncompressed, say)."""
        user = user or self.user
        message = self._new_message(chat, user, reply_to=reply_to)
        message.document = self.add_document(data, filename, mime_type)
        if caption is not None:
            message.caption = caption
            message.caption_entities = command_entities(caption)
        self._deliver_message(message)
        return message

    def sees(self, message: FakeMessage) -> bool:
        """Whether the bot gets an update for a person's message. In groups, with privacy mode
        on (the default for bots, core.telegram.org/bots/features#privacy-mode) and the bot no
        admin, it gets only commands (for it, or general ones: it is the only bot here),
        messages that mention it, and replies to its own messages."""
        if (
            not message.chat.is_group
            or not self.settings.group_privacy
            or message.chat.bot_is_admin
        ):
            return True
        if message.reply_to is not None and message.reply_to.sender.id == self.bot.id:
            return True
        body = message.text if message.text is not None else message.caption or ""
        for entity in message.entities if message.text is not None else message.caption_entities:
            if entity["type"] == "bot_command" and entity["offset"] == 0:
                command = body[: entity["length"]]
                mention = command.partition("@")[2]
                return not mention or mention.lower() == (self.bot.username or "").lower()
        return f"@{self.bot.username}".lower() in body.lower()

    def _deliver_message(self, message: FakeMessage) -> None:
        if self.sees(message):
            message.update_id = self.enqueue_update("message", message.payload())

    def reply_to(
        self,
        message: FakeMessage,
        user: FakeUser | None = None,
        text: str | None = None,
        *,
        photo: bytes | None = None,
        caption: str | None = None,
    ) -> FakeMessage:
        """`user` replies to `message` with text, or with a photo and a caption."""
        if photo is not None:
            return self.send_photo(message.chat, user, photo, caption=caption, reply_to=message)
        return self.send_message(message.chat, user, text or "", reply_to=message)

    def press(
        self, message: FakeMessage, callback_data: str, user: FakeUser | None = None
    ) -> CallbackQueryState:
        """`user` presses the inline button with `callback_data` on `message` as it is now."""
        user = user or self.user
        if message.deleted:
            raise LookupError(f"message {message.message_id} is deleted")
        if not any(b.get("callback_data") == callback_data for b in message.buttons):
            raise LookupError(
                f"message {message.message_id} has no button {callback_data!r}: {message.buttons}"
            )
        query_id = str(secrets.randbits(62))
        payload = {
            "id": query_id,
            "from": user.payload(),
            "message": message.payload(),
            "chat_instance": str(abs(message.chat.id) * 7 + 1),
            "data": callback_data,
        }
        update_id = self.enqueue_update("callback_query", payload)
        state = CallbackQueryState(query_id, user, message, callback_data, self.clock(), update_id)
        self.callback_queries[query_id] = state
        return state

    def enqueue_update(self, kind: str, payload: dict[str, Any]) -> int:
        """Queue an update of type `kind` (any the Bot API has); returns its update_id. With a
        webhook set, it is POSTed there."""
        if kind not in UPDATE_TYPES:
            raise ValueError(f"unknown update type {kind!r}")
        update_id = next(self._update_ids)
        self.updates.append({"update_id": update_id, kind: payload})
        if self.webhook is not None:
            self._spawn(self._push_webhook())
        self._notify_soon()
        return update_id

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates not yet confirmed by a getUpdates offset (or a webhook's 2xx)."""
        return list(self.updates)

    # -- knobs for tests

    def flood(
        self,
        match: str | Callable[[RecordedCall], bool] | None = None,
        *,
        retry_after: int = 1,
        times: int = 1,
    ) -> None:
        """Answer the next `times` calls to method `match` (or that satisfy it; any call if None)
        with 429 and `parameters.retry_after`."""
        self._flood_rules.append(FloodRule(flood_predicate(match), retry_after, times))

    # -- waiting

    @property
    def refused_calls(self) -> list[RecordedCall]:
        """Calls answered with an error, but for long polls whose client had gone."""
        return [c for c in self.calls if c.status >= 400 and not c.abandoned]

    def handed_out(self, update_id: int) -> RecordedCall | None:
        """The first getUpdates answer that carried update `update_id` (its `answered_at` is
        when the bot got it), or None while none has."""
        return next(
            (
                call
                for call in self.calls_to("getUpdates")
                if call.ok and any(u["update_id"] == update_id for u in call.result)
            ),
            None,
        )

    def calls_to(self, method: str) -> list[RecordedCall]:
        """The answered calls to `method` (case-insensitive, as Telegram takes it)."""
        name = method.lower()
        return [c for c in self.calls if c.method.lower() == name and c.status]

    async def wait_for_call(
        self,
        predicate: Callable[[RecordedCall], bool],
        *,
        timeout: float = 5.0,
        start: int = 0,
    ) -> RecordedCall:
        """The first answered call from index `start` on that satisfies `predicate`, waiting up
        to `timeout` seconds. Fails with the calls recorded so far."""

        def found() -> RecordedCall | None:
            return next((c for c in self.calls[start:] if c.status and predicate(c)), None)

        try:
            await self.wait_until(lambda: found() is not None, timeout)
        except TimeoutError:
            raise AssertionError(
                f"no matching call within {timeout} s; recorded: {self.calls[start:]}"
                + (f"; the fake failed: {self.internal_errors}" if self.internal_errors else "")
            ) from None
        call = found()
        assert call is not None
        return call

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait up to `timeout` seconds for `condition` about the fake's state to hold; it is
        checked again after every call and every update."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _notify_soon(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nobody can be waiting
            self._spawn(self._notify())

    def _spawn(self, coroutine: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coroutine.close()
            raise
        task = loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- webhooks

    async def post_webhook(
        self, update: Mapping[str, Any], *, secret_token: str | Any | None = ...
    ) -> int:
        """POST `update` to the webhook set with setWebhook, with its secret token in
        X-Telegram-Bot-Api-Secret-Token (or `secret_token` instead, None for no header);
        returns the HTTP status the bot answered."""
        if self.webhook is None:
            raise RuntimeError("no webhook is set")
        token = self.webhook.secret_token if secret_token is ... else secret_token
        headers = {SECRET_TOKEN_HEADER: token} if token else {}
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(
            self.webhook.url, json=dict(update), headers=headers, timeout=aiohttp.ClientTimeout(10)
        ) as response:
            await response.read()
            return response.status

    async def _push_webhook(self) -> None:
        """Deliver the queued updates to the webhook in order; one that fails stays queued and
        goes with the next push (Telegram retries too)."""
        async with self._webhook_lock:
            while self.webhook is not None and self.updates:
                update = self.updates[0]
                try:
                    status = await self.post_webhook(update)
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                self.webhook_deliveries.append((update["update_id"], status))
                await self._notify()
                if not 200 <= status < 300:
                    return
                if self.updates and self.updates[0] is update:
                    self.updates.pop(0)

    # -- HTTP plumbing

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        method = request.match_info["method"]
        call = RecordedCall(len(self.calls), method, token, {}, {}, self.clock())
        self.calls.append(call)
        await self._notify()
        try:
            raw, files = await self._read_parameters(request)
        except ConnectionError:
            # The client went away mid-request (PTB cancelling a poll when it stops).
            call.status, call.abandoned = CLIENT_CLOSED_REQUEST, True
            await self._notify()
            return web.Response(status=CLIENT_CLOSED_REQUEST)  # nobody reads it
        try:
            call.files = files
            call.params = raw
            if token != self.settings.token:
                raise TelegramApiError(401, "Unauthorized")
            handler = self._handlers().get(method.lower())
            if handler is None:
                raise TelegramApiError(404, "Not Found")
            call.params = decode_parameters(raw)
            self._apply_flood(call)
            result = await handler(call)
            body: dict[str, Any] = {"ok": True, "result": result}
            status = 200
        except TelegramApiError as error:
            body, status = error.body(), error.status
        except Exception as error:
            # A fault in the fake itself. 418 is no status the Bot API uses, so no test takes
            # it for a refusal.
            self.internal_errors.append(error)
            body = {"ok": False, "error_code": 418, "description": f"fake failed: {error!r}"}
            status = 418
        call.response, call.status, call.answered_at = body, status, self.clock()
        transport = request.transport
        call.abandoned = transport is None or transport.is_closing()
        await self._notify()
        return web.Response(
            body=json.dumps(body).encode(), status=status, content_type="application/json"
        )

    async def _read_parameters(
        self, request: web.Request
    ) -> tuple[dict[str, Any], dict[str, RecordedFile]]:
        params: dict[str, Any] = dict(request.query)
        files: dict[str, RecordedFile] = {}
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                name = part.name or ""  # type: ignore[union-attr]
                data = bytes(await part.read())  # type: ignore[union-attr]
                filename = part.filename  # type: ignore[union-attr]
                if filename is None:
                    params[name] = data.decode()
                else:
                    content_type = part.headers.get("Content-Type", "application/octet-stream")
                    files[name] = RecordedFile(name, filename, content_type, data)
        elif request.content_type == "application/json":
            raw = await request.read()
            if raw:
                params.update(json.loads(raw))
        elif request.can_read_body:
            params.update(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        return params, files

    def _handlers(self) -> dict[str, Callable[[RecordedCall], Any]]:
        return {
            "getme": self._get_me,
            "logout": self._true,
            "close": self._true,
            "getupdates": self._get_updates,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
            "sendmessage": self._send_message,
            "sendphoto": self._send_photo,
            "senddocument": self._send_document,
            "sendmediagroup": self._send_media_group,
            "editmessagetext": self._edit_message_text,
            "editmessagecaption": self._edit_message_caption,
            "editmessagemedia": self._edit_message_media,
            "editmessagereplymarkup": self._edit_message_reply_markup,
            "deletemessage": self._delete_message,
            "answercallbackquery": self._answer_callback_query,
            "getfile": self._get_file,
            "sendchataction": self._send_chat_action,
            "getchat": self._get_chat,
            "setmydescription": self._set_my_description,
            "getmydescription": self._get_my_description,
            "setmyshortdescription": self._set_my_short_description,
            "getmyshortdescription": self._get_my_short_description,
        }

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.settings.token:
            return web.json_response(TelegramApiError(401, "Unauthorized").body(), status=401)
        stored = self.files_by_path.get(request.match_info["path"])
        if stored is None:
            return web.json_response(TelegramApiError(404, "Not Found").body(), status=404)
        return web.Response(body=stored.data, content_type=stored.mime_type)

    # -- flood control

    def _apply_flood(self, call: RecordedCall) -> None:
        for rule in self._flood_rules:
            if rule.times > 0 and rule.predicate(call):
                rule.times -= 1
                raise too_many_requests(rule.retry_after)
        if not self.settings.flood_control or call.method.lower() not in SEND_METHODS:
            return
        chat = self._known_chat(call.params)
        if chat is None:
            return
        now = self.clock()
        sent = self._sent_at.setdefault(chat.id, [])
        wait = 0.0
        if sent and now - sent[-1] < self.settings.per_chat_interval_s:
            wait = self.settings.per_chat_interval_s - (now - sent[-1])
        if chat.is_group:
            recent = [t for t in sent if now - t < 60.0]
            if len(recent) >= self.settings.group_messages_per_minute:
                wait = max(wait, 60.0 - (now - recent[-self.settings.group_messages_per_minute]))
        if wait > 0:
            raise too_many_requests(max(1, math.ceil(wait)))

    def _count_sent(self, chat: FakeChat) -> None:
        self._sent_at.setdefault(chat.id, []).append(self.clock())

    # -- shared checks

    def _known_chat(self, params: Mapping[str, Any]) -> FakeChat | None:
        value = params.get("chat_id")
        if value is None:
            return None
        if isinstance(value, str) and value.startswith("@"):
            return next((c for c in self.chats.values() if c.username == value[1:]), None)
        try:
            return self.chats.get(int(value))
        except (TypeError, ValueError):
            return None

    def _chat(self, params: Mapping[str, Any], *, sending: bool = False) -> FakeChat:
        if params.get("chat_id") in (None, ""):
            raise bad_request("chat_id is empty")
        chat = self._known_chat(params)
        if chat is None:
            raise bad_request(CHAT_NOT_FOUND)
        if sending and chat.blocked:
            raise TelegramApiError(403, "Forbidden: bot was blocked by the user")
        return chat

    def _formatted(
        self, params: Mapping[str, Any], key: str, limit: int, too_long: str
    ) -> tuple[str | None, list[dict[str, Any]]]:
        """The text or caption under `key` after entities parsing, checked against `limit`."""
        source = params.get(key)
        if source is None:
            return None, []
        source = str(source)
        entities_key = "entities" if key == "text" else "caption_entities"
        mode = str(params.get("parse_mode") or "")
        if mode.upper() == "HTML":
            text, entities = parse_html(source)
        else:
            text, entities = source, list(params.get(entities_key) or [])
        if len(text) > limit:
            raise bad_request(too_long)
        return text, entities

    def _text(self, params: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        text, entities = self._formatted(params, "text", MAX_TEXT_LENGTH, "message is too long")
        if not text or not text.strip():
            raise bad_request("message text is empty")
        return text, entities

    def _caption(self, params: Mapping[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
        return self._formatted(params, "caption", MAX_CAPTION_LENGTH, "message caption is too long")

    def _reply_target(self, chat: FakeChat, params: Mapping[str, Any]) -> FakeMessage | None:
        reply = params.get("reply_parameters") or {}
        message_id = reply.get("message_id") or params.get("reply_to_message_id")
        if not message_id:
            return None
        allow = flag(reply, "allow_sending_without_reply") or flag(
            params, "allow_sending_without_reply"
        )
        target = self.messages.get((chat.id, int(message_id)))
        if target is None or target.deleted:
            if allow:
                return None
            raise bad_request("message to be replied not found")
        return target

    def _new_message(
        self, chat: FakeChat, sender: FakeUser, *, reply_to: FakeMessage | None = None
    ) -> FakeMessage:
        self.chats.setdefault(chat.id, chat)
        counter = self._message_ids.setdefault(chat.id, itertools.count(1))
        message = FakeMessage(
            chat, next(counter), sender, self.unix_time(), self.clock(), reply_to=reply_to
        )
        self.messages[(chat.id, message.message_id)] = message
        return message

    def _store_file(
        self,
        data: bytes,
        mime_type: str,
        folder: str,
        suffix: str,
        *,
        file_name: str | None = None,
        width: int = 0,
        height: int = 0,
    ) -> StoredFile:
        number = next(self._file_ids)
        stored = StoredFile(
            file_id=f"AgAC{number:08d}{secrets.token_hex(8)}",
            file_unique_id=f"AQAD{number:08d}",
            data=data,
            file_path=f"{folder}/file_{number}{suffix}",
            mime_type=mime_type,
            file_name=file_name,
            width=width,
            height=height,
        )
        self.files[stored.file_id] = stored
        self.files_by_path[stored.file_path] = stored
        return stored

    def _input_file(
        self, call: RecordedCall, value: Any, field_name: str
    ) -> RecordedFile | StoredFile:
        """An upload (a multipart field, or `attach://name`) or a stored file by file_id."""
        if isinstance(value, str) and value.startswith("attach://"):
            upload = call.files.get(value.removeprefix("attach://"))
            if upload is None:
                raise bad_request(WRONG_FILE)
            return upload
        if value is None and field_name in call.files:
            return call.files[field_name]
        if isinstance(value, str) and value in self.files:
            return self.files[value]
        if value is None:
            raise bad_request(f"there is no {field_name} in the request")
        raise bad_request(WRONG_FILE)

    def _photo_sizes(self, source: RecordedFile | StoredFile) -> list[StoredFile]:
        if isinstance(source, StoredFile):
            return [source]
        if not source.data:
            raise bad_request("file must be non-empty")
        if len(source.data) > self.settings.max_photo_bytes:
            raise bad_request("PHOTO_SAVE_FILE_INVALID")
        info = image_info(source.data)
        if info is None:
            raise bad_request("IMAGE_PROCESS_FAILED")
        width, height, _ = info
        if width + height > MAX_PHOTO_SIDES_SUM or max(width, height) > MAX_PHOTO_RATIO * min(
            width, height
        ):
            raise bad_request("PHOTO_INVALID_DIMENSIONS")
        return self._store_photo(source.data, *info)

    def _store_photo(
        self, data: bytes, width: int, height: int, mime_type: str
    ) -> list[StoredFile]:
        """The sizes Telegram keeps of a photo, smallest first: JPEG thumbnails, then the photo
        itself with the bytes given (Telegram re-encodes it; the fake keeps it, so that a test
        reads back exactly what was sent)."""
        sizes = [
            self._store_file(small, "image/jpeg", "photos", ".jpg", width=w, height=h)
            for small, w, h in smaller_sizes(data, width, height)
        ]
        suffix = "." + mime_type.removeprefix("image/").replace("jpeg", "jpg")
        sizes.append(
            self._store_file(data, mime_type, "photos", suffix, width=width, height=height)
        )
        return sizes

    def _document(self, source: RecordedFile | StoredFile) -> StoredFile:
        if isinstance(source, StoredFile):
            return source
        if not source.data:
            raise bad_request("file must be non-empty")
        if len(source.data) > self.settings.max_upload_bytes:
            raise TelegramApiError(413, "Request Entity Too Large")
        return self.add_document(source.data, source.filename, source.content_type)

    def _bot_message(self, chat: FakeChat, params: Mapping[str, Any]) -> FakeMessage:
        """A new message from the bot, once its keyboard and reply target pass."""
        markup = check_reply_markup(params.get("reply_markup"))
        reply_to = self._reply_target(chat, params)
        message = self._new_message(chat, self.bot, reply_to=reply_to)
        message.reply_markup = markup
        return message

    def _message_to_edit(self, call: RecordedCall) -> FakeMessage:
        if call.params.get("inline_message_id"):
            raise bad_request("MESSAGE_ID_INVALID")  # the fake sends no inline messages
        chat = self._chat(call.params)
        message = self.messages.get((chat.id, integer(call.params, "message_id")))
        if message is None or message.deleted:
            raise bad_request("message to edit not found")
        if message.sender.id != self.bot.id:
            raise bad_request("message can't be edited")
        return message

    def _apply_edit(self, message: FakeMessage, changes: Mapping[str, Any]) -> dict[str, Any]:
        before = message.snapshot() | {
            "entities": message.entities,
            "caption_entities": message.caption_entities,
        }
        after = before | dict(changes)
        if after == before:
            raise bad_request(NOT_MODIFIED)
        message.history.append(message.snapshot())
        for key, value in changes.items():
            if key in ("photo", "document"):
                continue
            setattr(message, key, value)
        message.edit_date = self.unix_time()
        return message.payload()

    # -- methods

    async def _true(self, call: RecordedCall) -> Any:
        return True

    async def _get_me(self, call: RecordedCall) -> Any:
        return {
            **self.bot.payload(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_chat(self, call: RecordedCall) -> Any:
        chat = self._chat(call.params)
        return {**chat.payload(), "accent_color_id": 0, "max_reaction_count": 11}

    async def _get_updates(self, call: RecordedCall) -> Any:
        if self.webhook is not None:
            raise TelegramApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook "
                "to delete the webhook first",
            )
        params = call.params
        offset = integer(params, "offset", 0)
        limit = min(max(integer(params, "limit", 100), 1), 100)
        timeout = max(integer(params, "timeout", 0), 0)
        if "allowed_updates" in params:
            allowed = params["allowed_updates"]
            self.allowed_updates = list(allowed) if allowed else None
        self._confirm(offset)
        self._poll_generation += 1
        generation = self._poll_generation

        def ready() -> bool:
            return bool(self._deliverable()) or self._poll_generation != generation or self._closing

        if timeout and not ready():
            with contextlib.suppress(TimeoutError):
                await self.wait_until(ready, timeout)
        if self._poll_generation != generation:
            raise TelegramApiError(
                409,
                "Conflict: terminated by other getUpdates request; make sure that only one bot "
                "instance is running",
            )
        return self._deliverable()[:limit]

    def _confirm(self, offset: int) -> None:
        if offset > 0:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        elif offset < 0:
            self.updates = self.updates[offset:]

    def _wanted(self, update: Mapping[str, Any]) -> bool:
        kind = next(key for key in update if key != "update_id")
        if self.allowed_updates is None:
            return kind not in OPT_IN_UPDATE_TYPES
        return kind in self.allowed_updates

    def _deliverable(self) -> list[dict[str, Any]]:
        # Telegram does not keep updates of types the bot asked not to get.
        self.updates = [u for u in self.updates if self._wanted(u)]
        return list(self.updates)

    async def _set_webhook(self, call: RecordedCall) -> Any:
        params = call.params
        url = str(params.get("url") or "")
        if flag(params, "drop_pending_updates"):
            self.updates.clear()
        if not url:
            self.webhook = None
            return True
        if not url.startswith(("http://", "https://")):
            raise bad_request(
                "bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443"
            )
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise bad_request("secret token contains unallowed characters")
        allowed = params.get("allowed_updates")
        if "allowed_updates" in params:
            self.allowed_updates = list(allowed) if allowed else None
        self.webhook = WebhookState(
            url,
            str(secret) if secret is not None else None,
            list(allowed) if allowed else None,
            integer(params, "max_connections", 40),
        )
        self._poll_generation += 1  # a waiting long poll ends
        await self._notify()
        if self.updates:
            self._spawn(self._push_webhook())
        return True

    async def _delete_webhook(self, call: RecordedCall) -> Any:
        self.webhook = None
        if flag(call.params, "drop_pending_updates"):
            self.updates.clear()
        return True

    async def _get_webhook_info(self, call: RecordedCall) -> Any:
        info: dict[str, Any] = {
            "url": self.webhook.url if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }
        if self.webhook is not None:
            info["max_connections"] = self.webhook.max_connections
            if self.webhook.allowed_updates:
                info["allowed_updates"] = self.webhook.allowed_updates
        return info

    def _commands_key(self, params: Mapping[str, Any]) -> tuple[str, str]:
        language = str(params.get("language_code") or "")
        if language and not re.fullmatch(r"[a-z]{2}", language):
            raise bad_request("LANG_CODE_INVALID")
        scope = params.get("scope")
        if scope is not None and not isinstance(scope, dict):
            raise bad_request("can't parse BotCommandScope JSON object")
        return scope_key(scope), language

    async def _set_my_commands(self, call: RecordedCall) -> Any:
        commands = call.params.get("commands")
        if not isinstance(commands, list):
            raise bad_request("can't parse commands JSON object")
        if len(commands) > MAX_COMMANDS:
            raise bad_request("BOT_COMMANDS_TOO_MUCH")
        for command in commands:
            if not COMMAND_NAME.match(str(command.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        key = self._commands_key(call.params)
        self.commands[key] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        return True

    async def _get_my_commands(self, call: RecordedCall) -> Any:
        return list(self.commands.get(self._commands_key(call.params), []))

    async def _delete_my_commands(self, call: RecordedCall) -> Any:
        self.commands.pop(self._commands_key(call.params), None)
        return True

    def _language(self, params: Mapping[str, Any]) -> str:
        return self._commands_key(params)[1]

    def _set_text_setting(self, call: RecordedCall, name: str, limit: int) -> Any:
        text = str(call.params.get(name) or "")
        if len(text) > limit:
            raise bad_request(f"{name.upper()}_INVALID")  # the wording is unconfirmed
        language = self._language(call.params)
        if text:
            self.descriptions[(name, language)] = text
        else:
            self.descriptions.pop((name, language), None)
        return True

    async def _set_my_description(self, call: RecordedCall) -> Any:
        return self._set_text_setting(call, "description", 512)  # Bot API: 0-512 characters

    async def _get_my_description(self, call: RecordedCall) -> Any:
        return {
            "description": self.descriptions.get(("description", self._language(call.params)), "")
        }

    async def _set_my_short_description(self, call: RecordedCall) -> Any:
        return self._set_text_setting(call, "short_description", 120)  # Bot API: 0-120

    async def _get_my_short_description(self, call: RecordedCall) -> Any:
        key = ("short_description", self._language(call.params))
        return {"short_description": self.descriptions.get(key, "")}

    async def _send_message(self, call: RecordedCall) -> Any:
        chat = self._chat(call.params, sending=True)
        text, entities = self._text(call.params)
        message = self._bot_message(chat, call.params)
        message.text, message.entities = text, entities
        self._count_sent(chat)
        return message.payload()

    async def _send_photo(self, call: RecordedCall) -> Any:
        chat = self._chat(call.params, sending=True)
        caption, entities = self._caption(call.params)
        sizes = self._photo_sizes(self._input_file(call, call.params.get("photo"), "photo"))
        message = self._bot_message(chat, call.params)
        message.photo = sizes
        message.caption, message.caption_entities = caption, entities
        self._count_sent(chat)
        return message.payload()

    async def _send_document(self, call: RecordedCall) -> Any:
        chat = self._chat(call.params, sending=True)
        caption, entities = self._caption(call.params)
        document = self._document(self._input_file(call, call.params.get("document"), "document"))
        message = self._bot_message(chat, call.params)
        message.document = document
        message.caption, message.caption_entities = caption, entities
        self._count_sent(chat)
        return message.payload()

    async def _send_media_group(self, call: RecordedCall) -> Any:
        chat = self._chat(call.params, sending=True)
        media = call.params.get("media")
        if not isinstance(media, list) or not 2 <= len(media) <= 10:
            raise bad_request("wrong number of messages in the media group")  # Bot API: 2-10 items
        kinds = {item.get("type") for item in media}
        if not kinds <= {"photo", "video"} and len(kinds) > 1:
            raise bad_request("documents can't be mixed with other media types")
        prepared = [self._media_item(call, item) for item in media]
        reply_to = self._reply_target(chat, call.params)
        group_id = str(next(self._media_groups))
        messages = []
        for files, caption, entities, kind in prepared:
            message = self._new_message(chat, self.bot, reply_to=reply_to)
            if kind == "photo":
                message.photo = files
            else:
                message.document = files[-1]
            message.caption, message.caption_entities = caption, entities
            message.media_group_id = group_id
            messages.append(message.payload())
        self._count_sent(chat)
        return messages

    def _media_item(
        self, call: RecordedCall, item: Any
    ) -> tuple[list[StoredFile], str | None, list[dict[str, Any]], str]:
        if not isinstance(item, dict) or item.get("type") not in ("photo", "document"):
            raise bad_request("unsupported media type in the fake (photo and document only)")
        caption, entities = self._caption(item)
        source = self._input_file(call, item.get("media"), "media")
        if item["type"] == "photo":
            return self._photo_sizes(source), caption, entities, "photo"
        return [self._document(source)], caption, entities, "document"

    async def _edit_message_text(self, call: RecordedCall) -> Any:
        message = self._message_to_edit(call)
        if message.text is None:
            raise bad_request("there is no text in the message to edit")
        text, entities = self._text(call.params)
        markup = check_reply_markup(call.params.get("reply_markup"))
        return self._apply_edit(
            message, {"text": text, "entities": entities, "reply_markup": markup}
        )

    async def _edit_message_caption(self, call: RecordedCall) -> Any:
        message = self._message_to_edit(call)
        if not message.has_media:
            raise bad_request("there is no caption in the message to edit")
        caption, entities = self._caption(call.params)
        markup = check_reply_markup(call.params.get("reply_markup"))
        return self._apply_edit(
            message, {"caption": caption, "caption_entities": entities, "reply_markup": markup}
        )

    async def _edit_message_media(self, call: RecordedCall) -> Any:
        message = self._message_to_edit(call)
        if not message.has_media:
            raise bad_request("there is no media in the message to edit")
        media = call.params.get("media")
        files, caption, entities, kind = self._media_item(call, media)
        markup = check_reply_markup(call.params.get("reply_markup"))
        message.history.append(message.snapshot())
        if kind == "photo":
            message.photo, message.document = files, None
        else:
            message.photo, message.document = [], files[-1]
        message.caption, message.caption_entities = caption, entities
        message.reply_markup = markup
        message.edit_date = self.unix_time()
        return message.payload()

    async def _edit_message_reply_markup(self, call: RecordedCall) -> Any:
        message = self._message_to_edit(call)
        markup = check_reply_markup(call.params.get("reply_markup"))
        return self._apply_edit(message, {"reply_markup": markup})

    async def _delete_message(self, call: RecordedCall) -> Any:
        chat = self._chat(call.params)
        message = self.messages.get((chat.id, integer(call.params, "message_id")))
        if message is None or message.deleted:
            raise bad_request("message to delete not found")
        if self.clock() - message.sent_at > DELETE_WINDOW_S:
            raise bad_request("message can't be deleted for everyone")
        own = message.sender.id == self.bot.id
        if not own and chat.is_group and not chat.bot_is_admin:
            raise bad_request("message can't be deleted")
        message.deleted = True
        return True

    async def _answer_callback_query(self, call: RecordedCall) -> Any:
        query = self.callback_queries.get(str(call.params.get("callback_query_id", "")))
        if (
            query is None
            or query.answered
            or self.clock() - query.created_at > self.settings.callback_answer_window_s
        ):
            raise bad_request(QUERY_TOO_OLD)
        if len(str(call.params.get("text") or "")) > MAX_CALLBACK_ANSWER_LENGTH:
            raise bad_request("MESSAGE_TOO_LONG")
        query.answer = dict(call.params)
        return True

    async def _get_file(self, call: RecordedCall) -> Any:
        stored = self.files.get(str(call.params.get("file_id", "")))
        if stored is None:
            raise bad_request(WRONG_FILE)
        if len(stored.data) > self.settings.max_download_bytes:
            raise bad_request("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    async def _send_chat_action(self, call: RecordedCall) -> Any:
        self._chat(call.params, sending=True)
        if call.params.get("action") not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True


def flood_predicate(
    match: str | Callable[[RecordedCall], bool] | None,
) -> Callable[[RecordedCall], bool]:
    """Which calls a `flood` rule answers: all, those to one method, or those a test picks."""
    if callable(match):
        return match
    name = match.lower() if match is not None else None
    return lambda call: name is None or call.method.lower() == name


def scope_key(scope: Mapping[str, Any] | None) -> str:
    """A stable key for a BotCommandScope (the default scope when None)."""
    return json.dumps(dict(scope or {"type": "default"}), sort_keys=True)


@contextlib.asynccontextmanager
async def fake_telegram(
    settings: FakeTelegramSettings | None = None,
) -> AsyncIterator[FakeTelegram]:
    """A started fake Bot API server for the block; fails the block if the fake itself faulted
    on a request."""
    fake = FakeTelegram(settings)
    await fake.start()
    try:
        yield fake
        if fake.internal_errors:
            raise AssertionError(f"the fake Telegram failed: {fake.internal_errors}")
    finally:
        await fake.close()


def inline_keyboard(rows: Iterable[Iterable[tuple[str, str]]]) -> dict[str, Any]:
    """An inline keyboard payload from rows of (text, callback_data)."""
    return {
        "inline_keyboard": [
            [{"text": text, "callback_data": data} for text, data in row] for row in rows
        ]
    }


__all__ = [
    "CallbackQueryState",
    "FakeChat",
    "FakeMessage",
    "FakeTelegram",
    "FakeTelegramSettings",
    "FakeUser",
    "RecordedCall",
    "RecordedFile",
    "StoredFile",
    "TelegramApiError",
    "WebhookState",
    "command_entities",
    "fake_telegram",
    "inline_keyboard",
    "parse_html",
]
