"""A fake Discord for tests: REST and the gateway websocket on one port on 127.0.0.1.

The real discord.py client talks to it unchanged. It records every REST call (method, route,
JSON payload, uploaded files with their bytes, the fake's clock) and refuses what Discord
refuses, with Discord's error shapes (`{"code": ..., "message": ..., "errors": ...}` and the
HTTP status): a late or repeated interaction acknowledgement, webhook calls after the
interaction token's window, oversized uploads, component and command payloads outside the
documented limits, a bad token, and 429s a test asks for.

Pointing discord.py at it takes two patches, and `pointed_at` makes both:

- `discord.http.Route.BASE`: every REST route, webhooks and interaction callbacks included,
  is built from this class attribute when the route is made.
- `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`: `Client.connect` opens the websocket at
  this hard-coded URL and never asks `GET /gateway/bot`, so patching the REST base alone would
  send the gateway to the real Discord. (After READY the client reconnects to the
  `resume_gateway_url` the fake hands out, which points back at the fake.)

Usage, inside one event loop (`asyncio.run` in a plain test; the fake's server and the client
must share the loop, which is why these are async context managers and not pytest fixtures):

    async with fake_discord() as fake:           # started, and discord.py pointed at it
        bot = commands.Bot(command_prefix="!", intents=discord.Intents.default(),
                           guild_ready_timeout=0.05)
        ... add commands ...
        async with running(bot, fake):           # logged in and READY; closed at the end
            await bot.tree.sync()                # recorded; the fake keeps the commands
            sent = await fake.slash("imagine", {"prompt": "a cat"})   # INTERACTION_CREATE
            ack = await sent.next_call(timeout=5)                     # its callback
            edit = await sent.next_call(lambda c: c.method == "PATCH", timeout=5)
            await fake.press(int(edit.response["id"]), "easel:1:u1")  # a button on it

Interactions are dispatched only for commands synced to the fake (globally, or to the guild
they come from): the fake types the options from the synced command, as Discord does.
`guild_ready_timeout` matters: discord.py dispatches READY only after that long without a
further GUILD_CREATE (2 s by default). A client that identifies again on the same connection
loop (after a refused RESUME) first sleeps 5 s, unless given `no_identify_wait`; a new client
(a restart) does not.

The rules about time (3 s to acknowledge, 15 minutes of webhook token) run on the fake's own
clock, which a test moves with `advance_clock` or shortens through `FakeDiscordSettings`; no
test needs to wait for them.

Switches for the hard cases, each answered with Discord's own code: `expire_token` (401,
50027 for one interaction's webhook), `delete_message` (10008 for edits), `block_channel`
(403, 50013) and `leave_channel` (403, 50001: a user-installed app in a server without the
bot), `close_dms` (403, 50007), a guild's `filesize_limit` (its interactions'
`attachment_size_limit`; larger uploads there get 413, 40005), and user-installed
interactions stop at 5 follow-ups (400, 40094). `after_call` throws a switch right after a
given call is answered (a token that dies after the first edit). Mentions are recorded as
the message's `allowed_mentions` let them ping, and `slash` offers a command only in the
contexts and installation types it was synced with.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import secrets
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord
import discord.gateway
import discord.http
from aiohttp import WSMsgType, web

from bot.discord import pointed_at as discord_pointed_at
from tests.fakes.recorded import RecordedFile

API_PREFIX = "/api/v10"
GATEWAY_PATH = "/gateway-ws/"
ATTACHMENTS_PATH = "/attachments"
MIB = 1024 * 1024
MESSAGE_FLAG_EPHEMERAL = 1 << 6
MESSAGE_FLAG_LOADING = 1 << 7
MESSAGE_FLAG_COMPONENTS_V2 = 1 << 15
PERMISSION_ALL = (1 << 50) - 1
DEFAULT_MEMBER_PERMISSIONS = 0x0000_0000_0006_3E41  # view, send, embed, attach, history, ...

# Interaction types (Discord's numbering).
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
# Interaction callback types.
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE = 4, 5, 6, 7
AUTOCOMPLETE_RESULT, MODAL = 8, 9

# Discord's rule for slash command, group and option names (and their localizations):
# ^[-_'\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$, in lower case where a letter has a case.
NAME_PUNCTUATION = frozenset("-_'")
DEVANAGARI = range(0x0900, 0x0980)
THAI = range(0x0E00, 0x0E80)
VALID_LOCALES = frozenset(locale.value for locale in discord.Locale)


# -- errors -------------------------------------------------------------------------------------


class DiscordError(Exception):
    """A refusal the fake answers with Discord's JSON error shape."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        errors: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.extra = dict(extra or {})
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code, **self.extra}
        if self.errors:
            body["errors"] = self.errors
        return body


class FormErrors:
    """Collects field errors the way Discord nests them for 50035 Invalid Form Body."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}

    def add(self, path: Sequence[str | int], code: str, message: str) -> None:
        node = self.tree
        for key in path:
            node = node.setdefault(str(key), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def max_length(self, path: Sequence[str | int], value: Sized, limit: int) -> None:
        if len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def length_between(self, path: Sequence[str | int], value: Any, low: int, high: int) -> None:
        if not isinstance(value, str):
            self.add(path, "BASE_TYPE_REQUIRED", "This field is required")
        elif not low <= len(value) <= high:
            self.add(
                path,
                "BASE_TYPE_BAD_LENGTH",
                f"Must be between {low} and {high} in length.",
            )

    def raise_if_any(self) -> None:
        if self.tree:
            raise DiscordError(400, 50035, "Invalid Form Body", self.tree)


def json_response(body: Any, status: int) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly "application/json",
    # without the "; charset=utf-8" aiohttp's json_response adds; else it hands on the text.
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def unknown_interaction() -> DiscordError:
    return DiscordError(404, 10062, "Unknown interaction")


def invalid_webhook_token() -> DiscordError:
    return DiscordError(401, 50027, "Invalid Webhook Token")


def unknown_message() -> DiscordError:
    return DiscordError(404, 10008, "Unknown Message")


def unknown_channel() -> DiscordError:
    return DiscordError(404, 10003, "Unknown Channel")


# -- the world the fake serves ------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "global_name": self.global_name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass
class FakeChannel:
    id: int
    name: str
    nsfw: bool = False
    type: int = 0  # 0 guild text, 1 DM, 3 group DM

    def payload(self, guild_id: int | None) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(self.id), "type": self.type, "name": self.name}
        if guild_id is not None:
            data.update(
                guild_id=str(guild_id),
                position=0,
                permission_overwrites=[],
                nsfw=self.nsfw,
                topic=None,
                last_message_id=None,
                rate_limit_per_user=0,
                parent_id=None,
            )
        return data


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    channels: list[FakeChannel]
    preferred_locale: str = "en-US"
    # The guild's upload limit in bytes (boosts raise it); None: the fake's `max_upload_bytes`.
    # Its interactions carry it as `attachment_size_limit`, and larger uploads to its channels
    # are refused with 40005.
    filesize_limit: int | None = None

    @property
    def channel(self) -> FakeChannel:
        return self.channels[0]

    def payload(self, bot_user: FakeUser) -> dict[str, Any]:
        gid = str(self.id)
        return {
            "id": gid,
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": self.preferred_locale,
            "features": [],
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "roles": [
                {
                    "id": gid,
                    "name": "@everyone",
                    "permissions": str(DEFAULT_MEMBER_PERMISSIONS),
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "emojis": [],
            "stickers": [],
            "unavailable": False,
            "large": False,
            "member_count": 2,
            "joined_at": now_iso(),
            "members": [member_payload(bot_user, None)],
            "channels": [channel.payload(self.id) for channel in self.channels],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


def member_payload(user: FakeUser, permissions: int | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "user": user.payload(),
        "roles": [],
        "joined_at": now_iso(),
        "deaf": False,
        "mute": False,
        "flags": 0,
        "nick": None,
        "avatar": None,
        "pending": False,
    }
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


@dataclass
class FakeDiscordSettings:
    # The shape of a real bot token (the settings refuse any other), not a real one.
    token: str = "ZmFrZS1ib3Q.fake-bot.token-for-easel-tests"
    application_id: int = 1_100_000_000_000_000_001
    bot_user: FakeUser = field(
        default_factory=lambda: FakeUser(1_100_000_000_000_000_001, "easel", bot=True)
    )
    owner: FakeUser = field(default_factory=lambda: FakeUser(1_100_000_000_000_000_002, "owner"))
    guilds: list[FakeGuild] = field(
        default_factory=lambda: [
            FakeGuild(
                1_100_000_000_000_000_010,
                "Easel Test Guild",
                owner_id=1_100_000_000_000_000_002,
                channels=[FakeChannel(1_100_000_000_000_000_011, "general")],
            )
        ]
    )
    ack_deadline_s: float = 3.0
    token_window_s: float = 15 * 60.0
    max_upload_bytes: int = 10 * MIB
    heartbeat_interval_ms: int = 41_250
    allow_resume: bool = True
    user_install_followup_limit: int = 5


# -- what the fake records ----------------------------------------------------------------------


@dataclass
class RecordedCall:
    index: int
    method: str
    route: str  # the template, e.g. "/webhooks/{application_id}/{token}/messages/@original"
    path: str  # the path as requested, without the API prefix
    params: dict[str, str]
    query: dict[str, str]
    json: Any
    files: list[RecordedFile]
    at: float  # the fake's clock
    status: int = 0
    response: Any = None

    @property
    def key(self) -> str:
        return f"{self.method} {self.route}"

    def matches(self, key: str) -> bool:
        """True when `key` ("METHOD /route/{template}") names this call's route."""
        return self.key == key

    def __repr__(self) -> str:
        files = [f"{f.filename}({len(f.data)} B)" for f in self.files]
        return f"<{self.index} {self.method} {self.path} -> {self.status} files={files}>"


@dataclass
class InteractionState:
    id: int
    token: str
    type: int
    created_at: float
    payload: dict[str, Any]
    channel_id: int
    user_install_only: bool
    acknowledged_with: int | None = None
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)


@dataclass
class AfterCall:
    """A test's action run once, right after the first answered call that matches."""

    predicate: Callable[[RecordedCall], bool]
    action: Callable[[RecordedCall], None]


@dataclass
class RateLimitRule:
    predicate: Callable[[RecordedCall], bool]
    retry_after: float
    times: int
    is_global: bool


@dataclass
class GatewaySession:
    id: str
    sequence: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    socket: web.WebSocketResponse | None = None


@dataclass
class SentInteraction:
    """An interaction the fake dispatched, with a cursor over the REST calls made for it."""

    fake: FakeDiscord
    id: int
    token: str
    payload: dict[str, Any]
    cursor: int
    dispatched_at: float  # the fake's clock, comparable with `RecordedCall.at`

    def concerns(self, call: RecordedCall) -> bool:
        return call.params.get("token") == self.token

    async def next_call(
        self, predicate: Callable[[RecordedCall], bool] | None = None, timeout: float = 5.0
    ) -> RecordedCall:
        """The next REST call for this interaction (callback or webhook) after the last one this
        handle returned, that satisfies `predicate`."""

        def wanted(call: RecordedCall) -> bool:
            return self.concerns(call) and (predicate is None or predicate(call))

        call = await self.fake.wait_for_call(wanted, timeout=timeout, start=self.cursor)
        self.cursor = call.index + 1
        return call


# -- payload checks -----------------------------------------------------------------------------


def check_message_payload(payload: Mapping[str, Any], errors: FormErrors) -> None:
    content = payload.get("content")
    if isinstance(content, str):
        errors.max_length(["content"], content, 2000)
    embeds = payload.get("embeds") or []
    errors.max_length(["embeds"], embeds, 10)
    for i, embed in enumerate(embeds):
        errors.max_length(["embeds", i, "title"], embed.get("title") or "", 256)
        errors.max_length(["embeds", i, "description"], embed.get("description") or "", 4096)
        errors.max_length(["embeds", i, "fields"], embed.get("fields") or [], 25)
    components = payload.get("components")
    if components:
        v2 = bool((payload.get("flags") or 0) & MESSAGE_FLAG_COMPONENTS_V2)
        check_components(components, errors, v2=v2)


def check_components(components: list[dict[str, Any]], errors: FormErrors, *, v2: bool) -> None:
    if not v2:
        errors.max_length(["components"], components, 5)
    seen: set[str] = set()
    for i, row in enumerate(components):
        path: list[str | int] = ["components", i]
        if not v2 and row.get("type") != 1:
            errors.add([*path, "type"], "UNION_TYPE_CHOICES", 'Value of field "type" must be 1.')
            continue
        check_component(row, path, errors, seen)


def check_component(
    component: dict[str, Any], path: list[str | int], errors: FormErrors, seen: set[str]
) -> None:
    kind = component.get("type")
    children = component.get("components")
    if kind == 1:
        children = children or []
        if not children:
            errors.add([*path, "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5.")
        errors.max_length([*path, "components"], children, 5)
        selects = [c for c in children if c.get("type") in (3, 5, 6, 7, 8)]
        if selects and len(children) > 1:
            errors.add(
                [*path, "components"],
                "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                "The specified component exceeds the maximum width",
            )
    for j, child in enumerate(children or []):
        check_component(child, [*path, "components", j], errors, seen)
    if kind in (9, 17) and isinstance(component.get("accessory"), dict):
        check_component(component["accessory"], [*path, "accessory"], errors, seen)
    if kind == 18 and isinstance(component.get("component"), dict):
        check_component(component["component"], [*path, "component"], errors, seen)
    custom_id = component.get("custom_id")
    if kind == 2:
        check_button(component, path, errors)
    if kind in (3, 5, 6, 7, 8):
        check_select(component, path, errors)
    if custom_id is not None:
        errors.length_between([*path, "custom_id"], custom_id, 1, 100)
        if custom_id in seen:
            errors.add(
                [*path, "custom_id"],
                "COMPONENT_CUSTOM_ID_DUPLICATED",
                "Component custom id cannot be duplicated",
            )
        seen.add(custom_id)


def check_button(button: dict[str, Any], path: list[str | int], errors: FormErrors) -> None:
    style = button.get("style")
    if style == 5:
        if not button.get("url"):
            errors.add([*path, "url"], "BASE_TYPE_REQUIRED", "This field is required")
        if "custom_id" in button:
            errors.add(
                [*path, "custom_id"], "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED", "Not allowed"
            )
    elif style != 6 and not button.get("custom_id"):
        errors.add([*path, "custom_id"], "BASE_TYPE_REQUIRED", "This field is required")
    errors.max_length([*path, "label"], button.get("label") or "", 80)


def check_select(select: dict[str, Any], path: list[str | int], errors: FormErrors) -> None:
    errors.max_length([*path, "placeholder"], select.get("placeholder") or "", 150)
    if select.get("type") == 3:
        options = select.get("options") or []
        if not options:
            errors.add([*path, "options"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 25.")
        errors.max_length([*path, "options"], options, 25)
        for k, option in enumerate(options):
            errors.length_between([*path, "options", k, "label"], option.get("label"), 1, 100)
            errors.length_between([*path, "options", k, "value"], option.get("value"), 1, 100)
            errors.max_length(
                [*path, "options", k, "description"], option.get("description") or "", 100
            )
    for key in ("min_values", "max_values"):
        value = select.get(key)
        if value is not None and not 0 <= value <= 25:
            errors.add([*path, key], "NUMBER_TYPE_MAX", "int value should be <= 25 and >= 0.")


def check_autocomplete_result(data: Mapping[str, Any], errors: FormErrors) -> None:
    choices = data.get("choices") or []
    errors.max_length(["data", "choices"], choices, 25)
    for i, choice in enumerate(choices):
        errors.length_between(["data", "choices", i, "name"], choice.get("name"), 1, 100)
        value = choice.get("value")
        if isinstance(value, str):
            errors.max_length(["data", "choices", i, "value"], value, 100)


def check_modal(data: Mapping[str, Any], errors: FormErrors) -> None:
    errors.length_between(["data", "custom_id"], data.get("custom_id"), 1, 100)
    errors.length_between(["data", "title"], data.get("title"), 1, 45)
    rows = data.get("components") or []
    if not 1 <= len(rows) <= 5:
        errors.add(["data", "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5.")
    for i, row in enumerate(rows):
        inner = row.get("components") or ([row["component"]] if "component" in row else [])
        for j, item in enumerate(inner):
            path: list[str | int] = ["data", "components", i, "components", j]
            errors.length_between([*path, "custom_id"], item.get("custom_id"), 1, 100)
            if item.get("type") == 4:
                errors.max_length([*path, "value"], item.get("value") or "", 4000)
                low, high = item.get("min_length"), item.get("max_length")
                for key, value, least in (("min_length", low, 0), ("max_length", high, 1)):
                    if value is not None and not least <= value <= 4000:
                        message = f"int value should be <= 4000 and >= {least}."
                        errors.add([*path, key], "NUMBER_TYPE_MAX", message)
                if high is not None:
                    errors.max_length([*path, "value"], item.get("value") or "", high)
                errors.max_length([*path, "placeholder"], item.get("placeholder") or "", 100)
                errors.max_length([*path, "label"], item.get("label") or "", 45)
        if row.get("type") == 18:
            errors.length_between(["data", "components", i, "label"], row.get("label"), 1, 45)


def check_commands(commands: list[dict[str, Any]], errors: FormErrors) -> None:
    counts = {1: 0, 2: 0, 3: 0}
    names: set[tuple[int, str]] = set()
    for i, command in enumerate(commands):
        kind = command.get("type", 1)
        counts[kind] = counts.get(kind, 0) + 1
        key = (kind, command.get("name", ""))
        if key in names:
            errors.add(
                [i, "name"],
                "APPLICATION_COMMANDS_DUPLICATE_NAME",
                f"Application command names must be unique: {key[1]}",
            )
        names.add(key)
        check_command(command, [i], errors)
    if counts[1] > 100:
        errors.add([], "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer chat input commands.")
    for kind in (2, 3):
        if counts.get(kind, 0) > 5:
            errors.add([], "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer context menu commands.")


def check_name(value: Any, path: list[str | int], errors: FormErrors, *, chat_input: bool) -> None:
    if not isinstance(value, str):
        errors.add(path, "BASE_TYPE_REQUIRED", "This field is required")
    elif chat_input and not is_chat_input_name(value):
        errors.add(
            path,
            "APPLICATION_COMMAND_INVALID_NAME",
            f"Command name is invalid: {value!r}",
        )
    else:
        errors.length_between(path, value, 1, 32)


def is_chat_input_name(value: str) -> bool:
    return 1 <= len(value) <= 32 and value == value.lower() and all(map(_name_character, value))


def _name_character(char: str) -> bool:
    if char in NAME_PUNCTUATION or unicodedata.category(char)[0] in "LN":
        return True
    return ord(char) in DEVANAGARI or ord(char) in THAI


def check_localizations(
    command: Mapping[str, Any], path: list[str | int], errors: FormErrors, *, chat_input: bool
) -> None:
    for key in ("name_localizations", "description_localizations"):
        for locale, text in (command.get(key) or {}).items():
            where = [*path, key, locale]
            if locale not in VALID_LOCALES:
                errors.add(where, "LOCALE_INVALID", f"Invalid locale: {locale}")
            elif key == "name_localizations":
                check_name(text, where, errors, chat_input=chat_input)
            else:
                errors.length_between(where, text, 1, 100)


def text_size(command: Mapping[str, Any]) -> int:
    """Discord's count for the 4000-character command limit: names, descriptions and choice
    names and values, in every locale."""
    total = len(command.get("name", "")) + len(command.get("description", ""))
    for key in ("name_localizations", "description_localizations"):
        total += sum(len(v) for v in (command.get(key) or {}).values())
    for choice in command.get("choices") or []:
        total += len(choice.get("name", "")) + len(str(choice.get("value", "")))
        total += sum(len(v) for v in (choice.get("name_localizations") or {}).values())
    total += sum(text_size(option) for option in command.get("options") or [])
    return total


def check_command(command: Mapping[str, Any], path: list[str | int], errors: FormErrors) -> None:
    kind = command.get("type", 1)
    chat_input = kind == 1
    check_name(command.get("name"), [*path, "name"], errors, chat_input=chat_input)
    description = command.get("description", "")
    if chat_input:
        errors.length_between([*path, "description"], description, 1, 100)
    elif description:
        errors.add([*path, "description"], "BASE_TYPE_MAX_LENGTH", "Must be 0 in length.")
    check_localizations(command, path, errors, chat_input=chat_input)
    options = command.get("options") or []
    if options and not chat_input:
        errors.add([*path, "options"], "BASE_TYPE_MAX_LENGTH", "Must be 0 in length.")
    check_options(options, [*path, "options"], errors)
    if text_size(command) > 4000:
        errors.add(path, "APPLICATION_COMMAND_TOO_LARGE", "Command exceeds maximum size (4000)")


def check_options(options: list[dict[str, Any]], path: list[str | int], errors: FormErrors) -> None:
    errors.max_length(path, options, 25)
    seen: set[str] = set()
    optional_seen = False
    for i, option in enumerate(options):
        where = [*path, i]
        kind = option.get("type")
        if kind not in range(1, 12):
            errors.add([*where, "type"], "BASE_TYPE_CHOICES", f"Value must be one of 1..11: {kind}")
        check_name(option.get("name"), [*where, "name"], errors, chat_input=True)
        errors.length_between([*where, "description"], option.get("description"), 1, 100)
        check_localizations(option, where, errors, chat_input=True)
        if option.get("name") in seen:
            errors.add(
                [*where, "name"], "APPLICATION_COMMAND_OPTION_NAME_ALREADY_EXISTS", "Duplicate"
            )
        seen.add(option.get("name", ""))
        if kind in (1, 2):
            check_options(option.get("options") or [], [*where, "options"], errors)
            continue
        if option.get("required"):
            if optional_seen:
                errors.add(
                    [*where, "required"],
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            optional_seen = True
        check_choices(option, where, errors)


def check_choices(option: Mapping[str, Any], where: list[str | int], errors: FormErrors) -> None:
    choices = option.get("choices") or []
    errors.max_length([*where, "choices"], choices, 25)
    if choices and option.get("autocomplete"):
        errors.add(
            [*where, "autocomplete"],
            "APPLICATION_COMMAND_OPTION_CHOICES_AUTOCOMPLETE",
            "Autocomplete cannot be set with choices",
        )
    for k, choice in enumerate(choices):
        errors.length_between([*where, "choices", k, "name"], choice.get("name"), 1, 100)
        value = choice.get("value")
        if isinstance(value, str):
            errors.length_between([*where, "choices", k, "value"], value, 1, 100)
        for locale, text in (choice.get("name_localizations") or {}).items():
            errors.length_between(
                [*where, "choices", k, "name_localizations", locale], text, 1, 100
            )
    for key in ("min_length", "max_length"):
        value = option.get(key)
        if value is not None and not 0 <= value <= 6000:
            errors.add([*where, key], "NUMBER_TYPE_MAX", "int value should be <= 6000 and >= 0.")


# -- the server ---------------------------------------------------------------------------------


Handler = Callable[[web.Request, RecordedCall], Any]
ANY: Any = object()


class FakeDiscord:
    """The fake Discord: start it, point discord.py at it, dispatch interactions, assert calls."""

    def __init__(self, settings: FakeDiscordSettings | None = None) -> None:
        self.settings = settings or FakeDiscordSettings()
        self.calls: list[RecordedCall] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.interactions: dict[str, InteractionState] = {}  # by token
        self.identify_payloads: list[dict[str, Any]] = []
        self.internal_errors: list[Exception] = []  # the fake's own faults (answered with 418)
        self.heartbeats = 0
        self.blocked_channels: set[int] = set()
        self.left_channels: set[int] = set()
        self.closed_dms: set[int] = set()
        self.expired_tokens: set[str] = set()
        self._after_calls: list[AfterCall] = []
        self.users: dict[int, FakeUser] = {
            u.id: u for u in (self.settings.bot_user, self.settings.owner)
        }
        self.channels: dict[int, tuple[FakeChannel, int | None]] = {
            c.id: (c, g.id) for g in self.settings.guilds for c in g.channels
        }
        self.dm_channels: dict[int, int] = {}  # user id -> DM channel id
        self.attachments: dict[str, tuple[bytes, str]] = {}  # path -> (bytes, content type)
        self._ids = itertools.count(1_200_000_000_000_000_000)
        self._clock_offset = 0.0
        self._rate_limits: list[RateLimitRule] = []
        self._sessions: dict[str, GatewaySession] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * MIB)
        self._add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for socket in list(self._sockets):
            await socket.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{GATEWAY_PATH}"

    @property
    def guild(self) -> FakeGuild:
        """The first configured guild."""
        return self.settings.guilds[0]

    # -- the fake's clock

    def clock(self) -> float:
        return time.monotonic() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock on: a test's way past the 3 s and 15 minute rules."""
        self._clock_offset += seconds

    def next_id(self) -> int:
        return next(self._ids)

    # -- knobs for tests

    def rate_limit(
        self,
        match: str | Callable[[RecordedCall], bool],
        *,
        retry_after: float = 0.2,
        times: int = 1,
        is_global: bool = False,
    ) -> None:
        """Answer the next `times` calls matching `match` ("METHOD /route/{template}" or a
        predicate) with 429 and `retry_after`, before doing anything else for them."""
        predicate = match if callable(match) else (lambda call, key=match: call.matches(key))
        self._rate_limits.append(RateLimitRule(predicate, retry_after, times, is_global))

    def block_channel(self, channel_id: int) -> None:
        """Refuse the bot's messages in this channel (403, 50013 Missing Permissions)."""
        self.blocked_channels.add(channel_id)

    def unblock_channel(self, channel_id: int) -> None:
        self.blocked_channels.discard(channel_id)

    def leave_channel(self, channel_id: int) -> None:
        """The bot is not in this channel (a user-installed app in a server without the bot):
        its messages there are refused with 403, 50001 Missing Access."""
        self.left_channels.add(channel_id)

    def close_dms(self, user_id: int) -> None:
        """This user does not take DMs (403, 50007 Cannot send messages to this user)."""
        self.closed_dms.add(user_id)

    def open_dms(self, user_id: int) -> None:
        self.closed_dms.discard(user_id)

    def expire_token(self, token: str) -> None:
        """The interaction's token is past its 15 minutes from now on: its webhook calls are
        refused with 401, 50027 Invalid Webhook Token (as `advance_clock` would, for one)."""
        self.expired_tokens.add(token)

    def delete_message(self, message_id: int) -> None:
        """Someone deleted the message: edits and replies to it find 10008 Unknown Message."""
        self.messages.pop(message_id, None)

    def after_call(
        self, predicate: Callable[[RecordedCall], bool], action: Callable[[RecordedCall], None]
    ) -> None:
        """Run `action` once, right after the first call from now on that satisfies
        `predicate` is answered and before the client gets the answer: a switch thrown at an
        exact point of a conversation (e.g. a token that expires after the first edit)."""
        self._after_calls.append(AfterCall(predicate, action))

    def upload_limit(self, channel_id: int | None) -> int:
        """The most bytes the files of one message may have in a channel."""
        found = self.channels.get(channel_id) if channel_id is not None else None
        guild_id = found[1] if found is not None else None
        guild = next((g for g in self.settings.guilds if g.id == guild_id), None)
        if guild is not None and guild.filesize_limit is not None:
            return guild.filesize_limit
        return self.settings.max_upload_bytes

    def add_user(self, user_id: int, username: str) -> FakeUser:
        user = FakeUser(user_id, username)
        self.users[user.id] = user
        return user

    def add_attachment(
        self, filename: str, data: bytes, content_type: str = "image/png"
    ) -> dict[str, Any]:
        """An attachment the fake serves at its URL; returns Discord's attachment payload."""
        attachment_id = self.next_id()
        path = f"{ATTACHMENTS_PATH}/{attachment_id}/{filename}"
        self.attachments[path] = (data, content_type)
        return {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": self.url + path,
            "proxy_url": self.url + path,
            "content_type": content_type,
        }

    def post_user_message(
        self,
        channel_id: int,
        author: FakeUser,
        content: str = "",
        attachments: Sequence[Mapping[str, Any]] = (),
        embeds: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """A message a person posted (no REST call): for context menus and replies. An embed
        image is `{"image": {"url": add_attachment(...)["url"]}}`."""
        payload = {"content": content, "embeds": [dict(e) for e in embeds]}
        return self._store_message(channel_id, author, payload, [dict(a) for a in attachments])

    # -- waiting for calls

    @property
    def refused_calls(self) -> list[RecordedCall]:
        """Every call the fake answered with an error (4xx), 429s included."""
        return [call for call in self.calls if call.status >= 400]

    def calls_to(self, key: str) -> list[RecordedCall]:
        return [call for call in self.calls if call.matches(key)]

    async def wait_for_call(
        self, predicate: Callable[[RecordedCall], bool], *, timeout: float = 5.0, start: int = 0
    ) -> RecordedCall:
        """The first recorded call from index `start` on that satisfies `predicate`, waiting up
        to `timeout` seconds for it. Fails with the list of calls recorded so far."""

        def found() -> RecordedCall | None:
            return next(
                (c for c in self.calls[start:] if c.status and predicate(c)),
                None,
            )

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
            except TimeoutError:
                raise AssertionError(
                    f"no matching REST call within {timeout} s; recorded: {self.calls[start:]}"
                    + (f"; the fake failed: {self.internal_errors}" if self.internal_errors else "")
                ) from None
        call = found()
        assert call is not None
        return call

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the gateway

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway event to every identified connection."""
        sessions = [s for s in self._sessions.values() if s.socket is not None]
        if not sessions:
            raise RuntimeError("no client is connected to the fake gateway")
        for session in sessions:
            await self._send_event(session, event, data)

    async def _send_event(self, session: GatewaySession, event: str, data: Any) -> None:
        session.sequence += 1
        frame = {"op": 0, "t": event, "s": session.sequence, "d": data}
        session.sent.append(frame)
        if session.socket is not None and not session.socket.closed:
            await session.socket.send_str(json.dumps(frame))

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait up to `timeout` seconds for `condition` about the fake's state to hold; it is
        checked again after every REST call, IDENTIFY and RESUME."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), timeout)

    async def wait_connected(self, timeout: float = 5.0) -> None:
        """Wait for a client with an identified or resumed gateway session."""
        await self.wait_until(
            lambda: any(s.socket is not None for s in self._sessions.values()), timeout
        )

    async def disconnect(self, code: int = 4000) -> None:
        """Close the gateway connections with `code` (4000: the client reconnects and resumes)."""
        for socket in list(self._sockets):
            await socket.close(code=code)

    async def request_reconnect(self) -> None:
        """Ask the clients to reconnect (op 7); discord.py resumes at `resume_gateway_url`."""
        for socket in list(self._sockets):
            await socket.send_json({"op": 7, "d": None})

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self._sockets.add(socket)
        session: GatewaySession | None = None
        try:
            await socket.send_json(
                {"op": 10, "d": {"heartbeat_interval": self.settings.heartbeat_interval_ms}}
            )
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(message.data)
                session = await self._gateway_frame(socket, session, frame) or session
        finally:
            self._sockets.discard(socket)
            if session is not None and session.socket is socket:
                session.socket = None
        return socket

    async def _gateway_frame(
        self,
        socket: web.WebSocketResponse,
        session: GatewaySession | None,
        frame: dict[str, Any],
    ) -> GatewaySession | None:
        op, data = frame.get("op"), frame.get("d")
        if op == 1:
            self.heartbeats += 1
            await socket.send_json({"op": 11})
        elif op == 2:
            return await self._identify(socket, data)
        elif op == 6:
            return await self._resume(socket, data)
        return None

    async def _identify(
        self, socket: web.WebSocketResponse, data: dict[str, Any]
    ) -> GatewaySession | None:
        self.identify_payloads.append(data)
        if data.get("token") != self.settings.token:
            await socket.close(code=4004, message=b"Authentication failed.")
            return None
        session = GatewaySession(secrets.token_hex(16), socket=socket)
        self._sessions[session.id] = session
        bot = self.settings.bot_user
        ready = {
            "v": 10,
            "user": {**bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in self.settings.guilds],
            "session_id": session.id,
            "resume_gateway_url": self.gateway_url,
            "shard": [0, 1],
            "application": {"id": str(self.settings.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
        }
        await self._send_event(session, "READY", ready)
        for guild in self.settings.guilds:
            await self._send_event(session, "GUILD_CREATE", guild.payload(bot))
        await self._notify()
        return session

    async def _resume(
        self, socket: web.WebSocketResponse, data: dict[str, Any]
    ) -> GatewaySession | None:
        session = self._sessions.get(data.get("session_id", ""))
        if (
            not self.settings.allow_resume
            or session is None
            or data.get("token") != self.settings.token
        ):
            await socket.send_json({"op": 9, "d": False})
            return None
        session.socket = socket
        missed = [f for f in session.sent if f["s"] > (data.get("seq") or 0)]
        for frame in missed:
            await socket.send_str(json.dumps(frame))
        await self._send_event(session, "RESUMED", {})
        await self._notify()
        return session

    # -- REST plumbing

    def _add_routes(self, app: web.Application) -> None:
        api = API_PREFIX
        apps, hook = "/applications/{application_id}", "/webhooks/{application_id}/{token}"
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/users/@me", self._get_me),
            ("GET", "/users/{user_id}", self._get_user),
            ("POST", "/users/@me/channels", self._create_dm),
            ("GET", "/oauth2/applications/@me", self._application_info),
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("PUT", apps + "/commands", self._put_commands),
            ("GET", apps + "/commands", self._get_commands),
            ("PUT", apps + "/guilds/{guild_id}/commands", self._put_commands),
            ("GET", apps + "/guilds/{guild_id}/commands", self._get_commands),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._callback),
            ("GET", hook + "/messages/@original", self._get_original),
            ("PATCH", hook + "/messages/@original", self._edit_original),
            ("DELETE", hook + "/messages/@original", self._delete_original),
            ("POST", hook, self._followup),
            ("GET", hook + "/messages/{message_id}", self._get_followup),
            ("PATCH", hook + "/messages/{message_id}", self._edit_followup),
            ("DELETE", hook + "/messages/{message_id}", self._delete_followup),
            ("GET", "/channels/{channel_id}", self._get_channel),
            ("POST", "/channels/{channel_id}/messages", self._create_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message),
        ]  # fmt: skip
        for method, path, handler in routes:
            app.router.add_route(method, api + path, self._wrap(path, handler))
        app.router.add_get(GATEWAY_PATH, self._gateway)
        app.router.add_get(ATTACHMENTS_PATH + "/{attachment_id}/{filename}", self._attachment)
        app.router.add_route("*", api + "/{tail:.*}", self._wrap(None, self._unknown_route))

    def _wrap(self, template: str | None, handler: Handler) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            call = await self._read_call(request, template)
            try:
                self._apply_rate_limits(call)
                if self._needs_bot_auth(call) and not self._authorized(request):
                    raise DiscordError(401, 0, "401: Unauthorized")
                body = await handler(request, call)
                response = web.Response(status=204) if body is None else json_response(body, 200)
                call.response = body
            except DiscordError as error:
                call.response = error.body()
                response = json_response(error.body(), error.status)
                response.headers.update(error.headers)
            except Exception as error:
                # A fault in the fake itself. 418 is no status Discord uses, so no test takes it
                # for a refusal, and discord.py raises at once where it would retry a 5xx.
                self.internal_errors.append(error)
                call.response = {"message": f"fake Discord failed: {error!r}", "code": 0}
                response = json_response(call.response, 418)
            call.status = response.status
            self._run_after_calls(call)
            await self._notify()
            return response

        return handle

    def _run_after_calls(self, call: RecordedCall) -> None:
        for hook in list(self._after_calls):
            if hook.predicate(call):
                self._after_calls.remove(hook)
                hook.action(call)

    async def _read_call(self, request: web.Request, template: str | None) -> RecordedCall:
        payload: Any = None
        files: list[RecordedFile] = []
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                name = part.name or ""  # type: ignore[union-attr]
                data = await part.read()  # type: ignore[union-attr]
                if name == "payload_json":
                    payload = json.loads(data)
                else:
                    files.append(
                        RecordedFile(
                            name,
                            part.filename or "",  # type: ignore[union-attr]
                            part.headers.get("Content-Type", "application/octet-stream"),
                            bytes(data),
                        )
                    )
        elif request.can_read_body:
            raw = await request.read()
            payload = json.loads(raw) if raw else None
        path = request.path.removeprefix(API_PREFIX)
        call = RecordedCall(
            index=len(self.calls),
            method=request.method,
            route=template or path,
            path=path,
            params=dict(request.match_info),
            query=dict(request.query),
            json=payload,
            files=files,
            at=self.clock(),
        )
        self.calls.append(call)
        return call

    def _apply_rate_limits(self, call: RecordedCall) -> None:
        for rule in self._rate_limits:
            if rule.times > 0 and rule.predicate(call):
                rule.times -= 1
                raise DiscordError(
                    429,
                    0,
                    "You are being rate limited.",
                    headers=self._rate_limit_headers(rule),
                    extra={"retry_after": rule.retry_after, "global": rule.is_global},
                ) from None

    @staticmethod
    def _rate_limit_headers(rule: RateLimitRule) -> dict[str, str]:
        headers = {
            "Retry-After": str(math.ceil(rule.retry_after)),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
            "X-RateLimit-Bucket": "fake-bucket",
            "X-RateLimit-Scope": "global" if rule.is_global else "user",
            # discord.py takes a 429 without `Via` for a Cloudflare ban and does not retry it.
            "Via": "1.1 google",
        }
        if rule.is_global:
            headers["X-RateLimit-Global"] = "true"
        return headers

    @staticmethod
    def _needs_bot_auth(call: RecordedCall) -> bool:
        return not call.route.startswith(("/interactions/", "/webhooks/", "/gateway"))

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.settings.token}"

    async def _unknown_route(self, request: web.Request, call: RecordedCall) -> Any:
        raise DiscordError(404, 0, "404: Not Found")

    async def _attachment(self, request: web.Request) -> web.Response:
        found = self.attachments.get(request.path)
        if found is None:
            return web.Response(status=404, text="Not Found")
        data, content_type = found
        return web.Response(body=data, content_type=content_type)

    # -- REST: users, application, gateway

    async def _get_me(self, request: web.Request, call: RecordedCall) -> Any:
        bot = self.settings.bot_user
        return {**bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0}

    async def _get_user(self, request: web.Request, call: RecordedCall) -> Any:
        user = self.users.get(int(call.params["user_id"]))
        if user is None:
            raise DiscordError(404, 10013, "Unknown User")
        return user.payload()

    async def _application_info(self, request: web.Request, call: RecordedCall) -> Any:
        return {
            "id": str(self.settings.application_id),
            "name": self.settings.bot_user.username,
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.settings.owner.payload(),
            "verify_key": "0" * 64,
            "flags": 0,
            "team": None,
            "summary": "",
            "rpc_origins": [],
        }

    async def _get_gateway(self, request: web.Request, call: RecordedCall) -> Any:
        return {"url": self.gateway_url.rstrip("/")}

    async def _get_gateway_bot(self, request: web.Request, call: RecordedCall) -> Any:
        return {
            "url": self.gateway_url.rstrip("/"),
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 0,
                "max_concurrency": 1,
            },
        }

    async def _create_dm(self, request: web.Request, call: RecordedCall) -> Any:
        user = self.users.get(int((call.json or {}).get("recipient_id", 0)))
        if user is None:
            raise DiscordError(400, 50035, "Invalid Form Body", {"recipient_id": {"_errors": [
                {"code": "USER_UNKNOWN", "message": "Unknown user"}]}})  # fmt: skip
        channel_id = self.dm_channels.setdefault(user.id, self.next_id())
        channel = FakeChannel(channel_id, "", type=1)
        self.channels[channel_id] = (channel, None)
        return {
            "id": str(channel_id),
            "type": 1,
            "last_message_id": None,
            "recipients": [user.payload()],
        }

    # -- REST: application commands

    def _check_application(self, call: RecordedCall) -> None:
        if int(call.params["application_id"]) != self.settings.application_id:
            raise DiscordError(403, 50001, "Missing Access")

    async def _put_commands(self, request: web.Request, call: RecordedCall) -> Any:
        self._check_application(call)
        commands = call.json
        if not isinstance(commands, list):
            raise DiscordError(400, 50035, "Invalid Form Body")
        errors = FormErrors()
        check_commands(commands, errors)
        errors.raise_if_any()
        guild_id = int(call.params["guild_id"]) if "guild_id" in call.params else None
        stored = [self._stored_command(command, guild_id) for command in commands]
        self.commands[guild_id] = stored
        return stored

    def _stored_command(self, command: dict[str, Any], guild_id: int | None) -> dict[str, Any]:
        previous = {c["name"]: c["id"] for c in self.commands.get(guild_id, [])}
        stored = {
            "id": previous.get(command["name"]) or str(self.next_id()),
            "application_id": str(self.settings.application_id),
            "version": str(self.next_id()),
            "type": 1,
            "description": "",
            "default_member_permissions": None,
            "nsfw": False,
            **command,
        }
        if stored["default_member_permissions"] is not None:  # Discord answers with a string
            stored["default_member_permissions"] = str(stored["default_member_permissions"])
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        return stored

    async def _get_commands(self, request: web.Request, call: RecordedCall) -> Any:
        self._check_application(call)
        guild_id = int(call.params["guild_id"]) if "guild_id" in call.params else None
        return self.commands.get(guild_id, [])

    # -- REST: interaction callbacks and webhooks

    def _interaction_for_callback(self, call: RecordedCall) -> InteractionState:
        state = self.interactions.get(call.params["token"])
        if state is None or str(state.id) != call.params["interaction_id"]:
            raise unknown_interaction()
        if self.clock() - state.created_at > self.settings.ack_deadline_s:
            raise unknown_interaction()
        if state.acknowledged_with is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        return state

    async def _callback(self, request: web.Request, call: RecordedCall) -> Any:
        state = self._interaction_for_callback(call)
        body = call.json or {}
        kind = body.get("type")
        data = body.get("data") or {}
        self._check_callback_type(state, kind)
        errors = FormErrors()
        if kind in (CHANNEL_MESSAGE, UPDATE_MESSAGE):
            check_message_payload(data, errors)
        elif kind == AUTOCOMPLETE_RESULT:
            check_autocomplete_result(data, errors)
        elif kind == MODAL:
            check_modal(data, errors)
        errors.raise_if_any()
        self._check_upload_size(call)
        message = self._apply_callback(state, kind, data, call.files)
        state.acknowledged_with = kind
        if call.query.get("with_response") not in ("1", "true", "True"):
            return None
        return self._callback_response(state, kind, data, message)

    def _check_callback_type(self, state: InteractionState, kind: Any) -> None:
        allowed = {
            APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
            MESSAGE_COMPONENT: {
                CHANNEL_MESSAGE,
                DEFERRED_CHANNEL_MESSAGE,
                DEFERRED_UPDATE,
                UPDATE_MESSAGE,
                MODAL,
            },
            AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
            MODAL_SUBMIT: {
                CHANNEL_MESSAGE,
                DEFERRED_CHANNEL_MESSAGE,
                DEFERRED_UPDATE,
                UPDATE_MESSAGE,
            },
        }[state.type]
        if kind not in allowed:
            raise DiscordError(
                400,
                50035,
                "Invalid Form Body",
                {"type": {"_errors": [{
                    "code": "INTERACTION_RESPONSE_TYPE_INVALID",
                    "message": f"Interaction response type {kind} is not valid here",
                }]}},
            )  # fmt: skip

    def _apply_callback(
        self,
        state: InteractionState,
        kind: int,
        data: dict[str, Any],
        files: list[RecordedFile],
    ) -> dict[str, Any] | None:
        if kind == CHANNEL_MESSAGE:
            message = self._store_message(
                state.channel_id, self.settings.bot_user, data, self._uploads(data, files), state
            )
            state.original_message_id = int(message["id"])
            return message
        if kind == DEFERRED_CHANNEL_MESSAGE:
            flags = MESSAGE_FLAG_LOADING | ((data.get("flags") or 0) & MESSAGE_FLAG_EPHEMERAL)
            message = self._store_message(
                state.channel_id, self.settings.bot_user, {"content": "", "flags": flags}, [], state
            )
            state.original_message_id = int(message["id"])
            return message
        source = state.payload.get("message")
        if kind in (DEFERRED_UPDATE, UPDATE_MESSAGE) and source is not None:
            state.original_message_id = int(source["id"])
            if kind == UPDATE_MESSAGE:
                return self._edit_stored(int(source["id"]), data, files)
            return self.messages.get(int(source["id"]))
        return None

    def _callback_response(
        self, state: InteractionState, kind: int, data: dict[str, Any], message: Any
    ) -> dict[str, Any]:
        interaction: dict[str, Any] = {
            "id": str(state.id),
            "type": state.type,
            "response_message_loading": kind == DEFERRED_CHANNEL_MESSAGE,
            "response_message_ephemeral": bool((data.get("flags") or 0) & MESSAGE_FLAG_EPHEMERAL),
        }
        response: dict[str, Any] = {"interaction": interaction}
        if message is not None:
            interaction["response_message_id"] = message["id"]
            response["resource"] = {"type": kind, "message": message}
        else:
            response["resource"] = {"type": kind}
        return response

    def _interaction_for_webhook(self, call: RecordedCall) -> InteractionState:
        state = self.interactions.get(call.params["token"])
        if state is None or int(call.params["application_id"]) != self.settings.application_id:
            raise invalid_webhook_token()
        if self.clock() - state.created_at > self.settings.token_window_s:
            raise invalid_webhook_token()
        if state.token in self.expired_tokens:
            raise invalid_webhook_token()
        if state.acknowledged_with is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        return state

    def _original(self, state: InteractionState) -> dict[str, Any]:
        message = self.messages.get(state.original_message_id or 0)
        if message is None:
            raise unknown_message()
        return message

    async def _get_original(self, request: web.Request, call: RecordedCall) -> Any:
        return self._original(self._interaction_for_webhook(call))

    async def _edit_original(self, request: web.Request, call: RecordedCall) -> Any:
        state = self._interaction_for_webhook(call)
        message = self._original(state)
        self._check_message_call(call)
        return self._edit_stored(int(message["id"]), call.json or {}, call.files)

    async def _delete_original(self, request: web.Request, call: RecordedCall) -> Any:
        state = self._interaction_for_webhook(call)
        message = self._original(state)
        del self.messages[int(message["id"])]
        return None

    async def _followup(self, request: web.Request, call: RecordedCall) -> Any:
        state = self._interaction_for_webhook(call)
        self._check_message_call(call)
        limit = self.settings.user_install_followup_limit
        if state.user_install_only and len(state.followup_ids) >= limit:
            raise DiscordError(
                400, 40094, "This interaction has hit the maximum number of follow up messages"
            )
        payload = call.json or {}
        message = self._store_message(
            state.channel_id,
            self.settings.bot_user,
            payload,
            self._uploads(payload, call.files),
            state,
        )
        state.followup_ids.append(int(message["id"]))
        return message if call.query.get("wait") in ("1", "true", "True") else None

    def _followup_message(self, state: InteractionState, call: RecordedCall) -> dict[str, Any]:
        message_id = int(call.params["message_id"])
        if message_id not in (*state.followup_ids, state.original_message_id):
            raise unknown_message()
        message = self.messages.get(message_id)
        if message is None:
            raise unknown_message()
        return message

    async def _get_followup(self, request: web.Request, call: RecordedCall) -> Any:
        return self._followup_message(self._interaction_for_webhook(call), call)

    async def _edit_followup(self, request: web.Request, call: RecordedCall) -> Any:
        message = self._followup_message(self._interaction_for_webhook(call), call)
        self._check_message_call(call)
        return self._edit_stored(int(message["id"]), call.json or {}, call.files)

    async def _delete_followup(self, request: web.Request, call: RecordedCall) -> Any:
        message = self._followup_message(self._interaction_for_webhook(call), call)
        del self.messages[int(message["id"])]
        return None

    # -- REST: channels and messages

    def _channel(self, call: RecordedCall) -> tuple[FakeChannel, int | None]:
        found = self.channels.get(int(call.params["channel_id"]))
        if found is None:
            raise unknown_channel()
        if found[0].id in self.left_channels:
            raise DiscordError(403, 50001, "Missing Access")
        return found

    async def _get_channel(self, request: web.Request, call: RecordedCall) -> Any:
        channel, guild_id = self._channel(call)
        if channel.type == 1:
            user_id = next(u for u, c in self.dm_channels.items() if c == channel.id)
            return {"id": str(channel.id), "type": 1, "recipients": [self.users[user_id].payload()]}
        return channel.payload(guild_id)

    async def _create_message(self, request: web.Request, call: RecordedCall) -> Any:
        channel, _ = self._channel(call)
        if channel.id in self.blocked_channels:
            raise DiscordError(403, 50013, "Missing Permissions")
        if channel.type == 1:
            user_id = next(u for u, c in self.dm_channels.items() if c == channel.id)
            if user_id in self.closed_dms:
                raise DiscordError(403, 50007, "Cannot send messages to this user")
        self._check_message_call(call)
        payload = call.json or {}
        reference = payload.get("message_reference")
        if reference and int(reference.get("message_id", 0)) not in self.messages:
            if reference.get("fail_if_not_exists", True):
                raise DiscordError(
                    400,
                    50035,
                    "Invalid Form Body",
                    {"message_reference": {"_errors": [{
                        "code": "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                        "message": "Unknown message",
                    }]}},
                )  # fmt: skip
            payload = {k: v for k, v in payload.items() if k != "message_reference"}
        return self._store_message(
            channel.id, self.settings.bot_user, payload, self._uploads(payload, call.files)
        )

    def _channel_message(self, call: RecordedCall) -> dict[str, Any]:
        self._channel(call)
        message = self.messages.get(int(call.params["message_id"]))
        if message is None or message["channel_id"] != call.params["channel_id"]:
            raise unknown_message()
        return message

    async def _get_message(self, request: web.Request, call: RecordedCall) -> Any:
        return self._channel_message(call)

    async def _edit_message(self, request: web.Request, call: RecordedCall) -> Any:
        message = self._channel_message(call)
        if int(message["author"]["id"]) != self.settings.bot_user.id:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        self._check_message_call(call)
        return self._edit_stored(int(message["id"]), call.json or {}, call.files)

    async def _delete_message(self, request: web.Request, call: RecordedCall) -> Any:
        message = self._channel_message(call)
        del self.messages[int(message["id"])]
        return None

    # -- messages

    def _check_message_call(self, call: RecordedCall) -> None:
        errors = FormErrors()
        check_message_payload(call.json or {}, errors)
        errors.raise_if_any()
        self._check_upload_size(call)

    def _check_upload_size(self, call: RecordedCall) -> None:
        if sum(len(f.data) for f in call.files) > self.upload_limit(self._call_channel(call)):
            raise DiscordError(413, 40005, "Request entity too large")

    def _call_channel(self, call: RecordedCall) -> int | None:
        """The channel a message call posts in: its route's, or its interaction's."""
        if "channel_id" in call.params:
            return int(call.params["channel_id"])
        state = self.interactions.get(call.params.get("token", ""))
        return state.channel_id if state is not None else None

    def _uploads(self, payload: Mapping[str, Any], files: list[RecordedFile]) -> list[dict]:
        """Attachment payloads for uploaded files, matched to `payload["attachments"]` by the
        index in their `files[n]` field name."""
        described = {str(a.get("id")): a for a in payload.get("attachments") or []}
        uploads = []
        for file in files:
            index = file.field.removeprefix("files[").removesuffix("]")
            attachment = self.add_attachment(file.filename, file.data, file.content_type)
            extra = described.get(index, {})
            if extra.get("description"):
                attachment["description"] = extra["description"]
            attachment["upload_index"] = index
            uploads.append(attachment)
        return uploads

    def _store_message(
        self,
        channel_id: int,
        author: FakeUser,
        payload: Mapping[str, Any],
        attachments: list[dict[str, Any]],
        interaction: InteractionState | None = None,
    ) -> dict[str, Any]:
        message_id = self.next_id()
        channel = self.channels.get(channel_id)
        message: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": author.payload(),
            "content": payload.get("content") or "",
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": bool(payload.get("tts")),
            "mention_everyone": self._pings_everyone(
                payload.get("content") or "", payload.get("allowed_mentions")
            ),
            "mentions": self._mentions(
                payload.get("content") or "", payload.get("allowed_mentions")
            ),
            "mention_roles": [],
            "attachments": [self._public_attachment(a) for a in attachments],
            "embeds": payload.get("embeds") or [],
            "components": payload.get("components") or [],
            "pinned": False,
            "type": 0,
            "flags": payload.get("flags") or 0,
        }
        if channel is not None and channel[1] is not None:
            message["guild_id"] = str(channel[1])
        if payload.get("message_reference"):
            reference = payload["message_reference"]
            message["type"] = 19
            message["message_reference"] = {
                "message_id": str(reference["message_id"]),
                "channel_id": str(reference.get("channel_id") or channel_id),
            }
        if interaction is not None:
            message["webhook_id"] = str(self.settings.application_id)
            message["application_id"] = str(self.settings.application_id)
            message["type"] = 20 if interaction.type == APPLICATION_COMMAND else 0
            message["allowed_mentions"] = payload.get("allowed_mentions")
        else:
            message["allowed_mentions"] = payload.get("allowed_mentions")
        self.messages[message_id] = message
        return message

    @staticmethod
    def _public_attachment(attachment: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in attachment.items() if k != "upload_index"}

    def _mentions(
        self, content: str, allowed: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The users a message pings: those named in its text, as far as its
        `allowed_mentions` lets them be (none given: all of them, Discord's default)."""
        ids = {int(m) for m in re.findall(r"<@!?(\d+)>", content)}
        if allowed is not None and "users" not in (allowed.get("parse") or []):
            ids &= {int(i) for i in allowed.get("users") or []}
        return [self.users[i].payload() for i in sorted(ids) if i in self.users]

    @staticmethod
    def _pings_everyone(content: str, allowed: Mapping[str, Any] | None) -> bool:
        if "@everyone" not in content and "@here" not in content:
            return False
        return allowed is None or "everyone" in (allowed.get("parse") or [])

    def _edit_stored(
        self, message_id: int, payload: Mapping[str, Any], files: list[RecordedFile]
    ) -> dict[str, Any]:
        message = self.messages[message_id]
        for key in ("content", "embeds", "components"):
            if key in payload:
                message[key] = payload[key] or ([] if key != "content" else "")
        if "content" in payload:
            allowed = payload.get("allowed_mentions")
            message["mentions"] = self._mentions(message["content"], allowed)
            message["mention_everyone"] = self._pings_everyone(message["content"], allowed)
        if "flags" in payload:
            message["flags"] = payload["flags"] or 0
        else:
            message["flags"] &= ~MESSAGE_FLAG_LOADING
        uploads = self._uploads(payload, files)
        if "attachments" in payload:
            kept_ids = {str(a.get("id")) for a in payload["attachments"]}
            kept = [a for a in message["attachments"] if a["id"] in kept_ids]
            new = [a for a in uploads if a["upload_index"] in kept_ids or not kept_ids]
            message["attachments"] = kept + [self._public_attachment(a) for a in new]
        else:
            message["attachments"] += [self._public_attachment(a) for a in uploads]
        message["edited_timestamp"] = now_iso()
        return message

    # -- dispatching interactions

    def _command(self, name: str, guild: FakeGuild | None, kind: int) -> dict[str, Any]:
        scopes = ([guild.id] if guild is not None else []) + [None]
        for scope in scopes:
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == kind:
                    return command
        raise LookupError(f"the command {name!r} (type {kind}) was never synced to the fake")

    async def _send_interaction(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user: FakeUser | None,
        guild: FakeGuild | None,
        channel_id: int | None,
        locale: str,
        permissions: int | None,
        user_install: bool,
        message: dict[str, Any] | None = None,
    ) -> SentInteraction:
        user = user or self.settings.owner
        self.users.setdefault(user.id, user)
        interaction_id, token = self.next_id(), "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.settings.application_id),
            "type": kind,
            "data": data,
            "token": token,
            "version": 1,
            "locale": locale,
            "app_permissions": str(PERMISSION_ALL),
            "entitlements": [],
            "attachment_size_limit": (
                guild.filesize_limit
                if guild is not None and guild.filesize_limit is not None
                else self.settings.max_upload_bytes
            ),
        }
        if guild is not None:
            channel_id = channel_id or guild.channel.id
            channel, _ = self.channels[channel_id]
            payload.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": guild.preferred_locale, "features": []},
                guild_locale=guild.preferred_locale,
                channel_id=str(channel_id),
                channel=channel.payload(guild.id),
                member=member_payload(
                    user, DEFAULT_MEMBER_PERMISSIONS if permissions is None else permissions
                ),
                context=0,
                authorizing_integration_owners=(
                    {"1": str(user.id)} if user_install else {"0": str(guild.id)}
                ),
            )
        else:
            if channel_id is None:
                channel_id = self.dm_channels.setdefault(user.id, self.next_id())
                self.channels[channel_id] = (FakeChannel(channel_id, "", type=1), None)
            channel, _ = self.channels.get(channel_id, (FakeChannel(channel_id, "", type=3), None))
            channel_payload = {"id": str(channel_id), "type": channel.type, "recipients": [
                user.payload()]}  # fmt: skip
            payload.update(
                user=user.payload(),
                channel_id=str(channel_id),
                channel=channel_payload,
                context=2 if channel.type == 3 else 1,
                authorizing_integration_owners=(
                    {"1": str(user.id)} if user_install else {"0": "0"}
                ),
            )
        if message is not None:
            payload["message"] = message
        state = InteractionState(
            interaction_id,
            token,
            kind,
            self.clock(),
            payload,
            channel_id,
            user_install_only=user_install,
        )
        self.interactions[token] = state
        sent = SentInteraction(
            self,
            interaction_id,
            token,
            payload,
            cursor=len(self.calls),
            dispatched_at=state.created_at,
        )
        await self.dispatch("INTERACTION_CREATE", payload)
        return sent

    def _check_available(
        self,
        command: dict[str, Any],
        guild: FakeGuild | None,
        channel_id: int | None,
        user_install: bool,
    ) -> None:
        """Discord offers a command only in the contexts (0 server, 1 the bot's DM, 2 a group
        or other private channel) and for the installations (0 server, 1 user) its synced
        `contexts` and `integration_types` list, where it lists them."""
        if guild is not None:
            context = 0
        elif channel_id is None:
            context = 1
        else:
            known = self.channels.get(channel_id)
            context = 1 if known is not None and known[0].type == 1 else 2
        install = 1 if user_install else 0
        contexts, installs = command.get("contexts"), command.get("integration_types")
        if contexts is not None and context not in contexts:
            raise LookupError(f"/{command['name']} is not offered in context {context}")
        if installs is not None and install not in installs:
            raise LookupError(f"/{command['name']} is not offered to installation type {install}")

    def _command_options(
        self,
        command: dict[str, Any],
        path: Sequence[str],
        values: Mapping[str, Any],
        focused: str | None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Discord's nested option list for `/command sub... name:value`, typed from the synced
        command, and the `resolved` map for attachments and users."""
        specs = command.get("options") or []
        chain: list[dict[str, Any]] = []
        for part in path:
            spec = next((o for o in specs if o["name"] == part and o["type"] in (1, 2)), None)
            if spec is None:
                raise LookupError(f"{command['name']} has no subcommand {part!r}")
            chain.append({"name": part, "type": spec["type"], "options": []})
            specs = spec.get("options") or []
        resolved: dict[str, Any] = {}
        leaf: list[dict[str, Any]] = []
        for name, value in values.items():
            spec = next((o for o in specs if o["name"] == name), None)
            if spec is None:
                raise LookupError(f"{command['name']} has no option {name!r}")
            leaf.append(self._option_value(spec, value, resolved, focused == name))
        options = leaf
        for link in reversed(chain):
            link["options"] = options
            options = [link]
        return options, resolved

    def _option_value(
        self, spec: dict[str, Any], value: Any, resolved: dict[str, Any], focused: bool
    ) -> dict[str, Any]:
        kind = spec["type"]
        option: dict[str, Any] = {"name": spec["name"], "type": kind}
        if focused:
            option.update(value=str(value), focused=True)
            return option
        if kind == 11:
            resolved.setdefault("attachments", {})[value["id"]] = value
            option["value"] = value["id"]
        elif kind == 6:
            user = value if isinstance(value, FakeUser) else self.users[int(value)]
            resolved.setdefault("users", {})[str(user.id)] = user.payload()
            option["value"] = str(user.id)
        else:
            choices = [c["value"] for c in spec.get("choices") or []]
            if choices and value not in choices:
                raise ValueError(
                    f"{value!r} is not one of the choices of {spec['name']}: {choices}"
                )
            option["value"] = value
        return option

    async def slash(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: FakeUser | None = None,
        guild: FakeGuild | Any | None = ANY,
        channel_id: int | None = None,
        locale: str = "en-US",
        permissions: int | None = None,
        user_install: bool = False,
    ) -> SentInteraction:
        """Dispatch `/name sub... option:value` as INTERACTION_CREATE. `name` may hold
        subcommands ("admin ban"); attachment options take `add_attachment`'s payload, user
        options a `FakeUser`. `guild=None` sends it from a DM (a group DM with a `channel_id`
        the fake does not know)."""
        guild = self.guild if guild is ANY else guild
        top, *path = name.split()
        command = self._command(top, guild, 1)
        self._check_available(command, guild, channel_id, user_install)
        opts, resolved = self._command_options(command, path, options or {}, None)
        return await self._send_interaction(
            APPLICATION_COMMAND,
            self._command_data(command, opts, resolved),
            user=user,
            guild=guild,
            channel_id=channel_id,
            locale=locale,
            permissions=permissions,
            user_install=user_install,
        )

    async def autocomplete(
        self,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        user: FakeUser | None = None,
        guild: FakeGuild | Any | None = ANY,
        locale: str = "en-US",
        user_install: bool = False,
    ) -> SentInteraction:
        """Dispatch an autocomplete request: `options` as typed so far, `focused` the one being
        typed (its value sent as the typed text)."""
        guild = self.guild if guild is ANY else guild
        top, *path = name.split()
        command = self._command(top, guild, 1)
        opts, resolved = self._command_options(command, path, options, focused)
        return await self._send_interaction(
            AUTOCOMPLETE,
            self._command_data(command, opts, resolved),
            user=user,
            guild=guild,
            channel_id=None,
            locale=locale,
            permissions=None,
            user_install=user_install,
        )

    async def message_command(
        self,
        name: str,
        message_id: int,
        *,
        user: FakeUser | None = None,
        guild: FakeGuild | Any | None = ANY,
        locale: str = "en-US",
    ) -> SentInteraction:
        """Dispatch a message context menu command ("Apps" > `name`) on a stored message."""
        guild = self.guild if guild is ANY else guild
        command = self._command(name, guild, 3)
        target = self.messages[message_id]
        data = self._command_data(command, [], {"messages": {str(message_id): target}})
        data["target_id"] = str(message_id)
        return await self._send_interaction(
            APPLICATION_COMMAND,
            data,
            user=user,
            guild=guild,
            channel_id=int(target["channel_id"]) if guild is not None else None,
            locale=locale,
            permissions=None,
            user_install=False,
        )

    @staticmethod
    def _command_data(
        command: dict[str, Any], options: list[dict[str, Any]], resolved: dict[str, Any]
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": command["id"],
            "name": command["name"],
            "type": command.get("type", 1),
        }
        if options:
            data["options"] = options
        if resolved:
            data["resolved"] = resolved
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return data

    async def press(
        self,
        message_id: int,
        custom_id: str,
        *,
        values: Sequence[str] | None = None,
        user: FakeUser | None = None,
        locale: str = "en-US",
        permissions: int | None = None,
        user_install: bool = False,
    ) -> SentInteraction:
        """Dispatch a press on a button (or a choice in a select menu, with `values`) of a stored
        message. The component must be on the message as Discord has it."""
        message = self.messages[message_id]
        component = find_component(message.get("components") or [], custom_id)
        if component is None:
            raise LookupError(f"message {message_id} has no component {custom_id!r}")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if values is not None:
            check_picked(component, values)
            data["values"] = list(values)
        guild_id = message.get("guild_id")
        guild = next((g for g in self.settings.guilds if str(g.id) == guild_id), None)
        return await self._send_interaction(
            MESSAGE_COMPONENT,
            data,
            user=user,
            guild=guild,
            channel_id=int(message["channel_id"]),
            locale=locale,
            permissions=permissions,
            user_install=user_install,
            message=message,
        )

    async def submit_modal(
        self,
        custom_id: str,
        values: Mapping[str, str],
        *,
        shown: Mapping[str, Any] | None = None,
        message_id: int | None = None,
        user: FakeUser | None = None,
        guild: FakeGuild | Any | None = ANY,
        locale: str = "en-US",
    ) -> SentInteraction:
        """Dispatch a modal submission: text inputs by custom_id, each in its own row. With
        `shown` (the modal as `modal_shown` gives it), the submission has its layout, and a
        value the Discord client would not let through (over the input's max_length, under
        its min_length, an input it does not have) raises ValueError."""
        guild = self.guild if guild is ANY else guild
        if shown is not None:
            if custom_id != shown.get("custom_id"):
                raise ValueError(
                    f"the modal shown is {shown.get('custom_id')!r}, not {custom_id!r}"
                )
            rows = submitted_rows(shown, values)
        else:
            rows = [
                {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]}
                for key, value in values.items()
            ]
        message = self.messages[message_id] if message_id is not None else None
        return await self._send_interaction(
            MODAL_SUBMIT,
            {"custom_id": custom_id, "components": rows},
            user=user,
            guild=guild,
            channel_id=int(message["channel_id"]) if message and guild else None,
            locale=locale,
            permissions=None,
            user_install=False,
            message=message,
        )

    def modal_shown(self, sent: SentInteraction) -> dict[str, Any]:
        """The modal (callback type 9 data) shown in answer to `sent`."""
        for call in self.calls:
            if sent.concerns(call) and call.status < 300 and (call.json or {}).get("type") == MODAL:
                return call.json["data"]
        raise LookupError("no modal was shown for this interaction")


def check_picked(select: Mapping[str, Any], values: Sequence[str]) -> None:
    """What Discord's client lets a user pick in a select menu: listed options, as many as
    min_values..max_values (1..1 by default)."""
    if select.get("type") != 3:
        return
    offered = [option["value"] for option in select.get("options") or []]
    unknown = [value for value in values if value not in offered]
    if unknown:
        raise ValueError(f"{unknown} are not options of {select.get('custom_id')}: {offered}")
    low, high = select.get("min_values", 1), select.get("max_values", 1)
    if not low <= len(values) <= high:
        raise ValueError(f"pick {low}-{high} options, not {len(values)}")


def submitted_rows(shown: Mapping[str, Any], values: Mapping[str, str]) -> list[dict[str, Any]]:
    """A modal's submitted components in its own layout (action rows or labels), each text
    input with its value, checked as the Discord client checks it before sending."""
    inputs: dict[str, Mapping[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for row in shown.get("components") or []:
        inner = row.get("components") or ([row["component"]] if "component" in row else [])
        answered = []
        for item in inner:
            if item.get("type") != 4:
                continue
            inputs[item["custom_id"]] = item
            value = values.get(item["custom_id"], item.get("value") or "")
            answered.append({"type": 4, "custom_id": item["custom_id"], "value": value})
        if row.get("type") == 18 and answered:
            rows.append({"type": 18, "component": answered[0]})
        elif answered:
            rows.append({"type": 1, "components": answered})
    for key, value in values.items():
        item = inputs.get(key)
        if item is None:
            raise ValueError(f"the modal has no text input {key!r}")
        high, low = item.get("max_length", 4000), item.get("min_length", 0)
        if not low <= len(value) <= high:
            raise ValueError(f"{key!r} takes {low}-{high} characters, not {len(value)}")
        if item.get("required", True) and not value:
            raise ValueError(f"{key!r} is required")
    return rows


def find_component(components: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for component in components:
        if component.get("custom_id") == custom_id:
            return component
        nested = list(component.get("components") or [])
        for key in ("accessory", "component"):
            if isinstance(component.get(key), dict):
                nested.append(component[key])
        found = find_component(nested, custom_id)
        if found is not None:
            return found
    return None


# -- pointing discord.py at the fake ------------------------------------------------------------


async def no_identify_wait(shard_id: int | None, *, initial: bool = False) -> None:
    """A `Client.before_identify_hook` without discord.py's 5 s sleep before every IDENTIFY
    but the first (the gateway's identify rate limit, which the fake does not have). Set it on
    a client that a test makes identify again after a refused RESUME."""
    return None


def pointed_at(fake: FakeDiscord) -> contextlib.AbstractContextManager[None]:
    """Point discord.py's REST base and its gateway at `fake`, and restore both after."""
    return discord_pointed_at(fake.api_base, fake.gateway_url)


@contextlib.asynccontextmanager
async def fake_discord(settings: FakeDiscordSettings | None = None) -> AsyncIterator[FakeDiscord]:
    """A started fake Discord with discord.py pointed at it, for the body of the block; fails
    the block if the fake itself faulted on a request."""
    fake = FakeDiscord(settings)
    await fake.start()
    try:
        with pointed_at(fake):
            yield fake
        if fake.internal_errors:
            raise AssertionError(f"the fake Discord failed: {fake.internal_errors}")
    finally:
        await fake.close()


@contextlib.asynccontextmanager
async def running(
    client: discord.Client, fake: FakeDiscord, *, timeout: float = 10.0
) -> AsyncIterator[discord.Client]:
    """`client` logged in to `fake` and READY for the block, then closed. Give the client a
    short `guild_ready_timeout`: discord.py waits that long after the last GUILD_CREATE before
    it dispatches READY (2 s by default)."""
    task = asyncio.create_task(client.start(fake.settings.token))
    try:
        ready = asyncio.create_task(client.wait_until_ready())
        done, _ = await asyncio.wait({task, ready}, timeout=timeout, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            if task in done:
                task.result()  # the login failed: raise why
            raise AssertionError(f"the client was not READY within {timeout} s")
        yield client
    finally:
        await client.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout)


__all__ = [
    "DiscordError",
    "FakeChannel",
    "FakeDiscord",
    "FakeDiscordSettings",
    "FakeGuild",
    "FakeUser",
    "InteractionState",
    "RecordedCall",
    "RecordedFile",
    "SentInteraction",
    "fake_discord",
    "no_identify_wait",
    "pointed_at",
    "running",
]
