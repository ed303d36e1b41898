"""What the core tells front ends: replies and job events, with no platform types in them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from bot.core.buttons import ButtonRows
from bot.core.messages import Argument, Key, Localized, Message


@dataclass(frozen=True)
class UserRef:
    """Who is asking, as the platform knows them."""

    platform: str
    platform_user_id: str
    display_name: str | None = None
    locale: str | None = None


@dataclass(frozen=True)
class Origin:
    """Where a job came from and where its results go: enough to deliver after a restart."""

    platform: str
    chat: str
    message: str | None = None  # the user's message or interaction
    # The platform's word on adult content where the request was made: True for an
    # age-restricted channel, False for one that is not, None where the platform has no say
    # (the chat's NSFW setting decides; see bot/core/words.py). Not stored with the job.
    adult_ok: bool | None = None


@dataclass(frozen=True)
class Reply:
    message: Message
    images: tuple[Path, ...] = ()
    grid: Path | None = None
    buttons: ButtonRows = ()
    parameters: str | None = None  # the A1111 parameters of the first image
    private: bool = False  # only the requester should see it (Discord: ephemeral)
    lines: tuple[Message, ...] = ()  # further lines under the message (a history page)
    editable: str | None = None  # a line the user is asked to edit and send back (remix)
    # The prompt has NSFW words (allowed where it was made): images go behind a spoiler.
    flagged: bool = False
    # Files sent after the picture: the control map a job asked to see (--cn-show).
    attachments: tuple[Path, ...] = ()

    def text(self, locale: str) -> str:
        return "\n".join(part.render(locale) for part in (self.message, *self.lines))


class Refusal(Exception):
    """A request the core turns down; `reply` says why, in the user's language."""

    def __init__(self, message: Message) -> None:
        super().__init__(message.render("en"))
        self.reply = Reply(message)


@dataclass(frozen=True)
class Ticket:
    job_id: int
    position: int  # 1: runs next
    eta_seconds: float | None
    reply: Reply


class EventKind(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobEvent:
    kind: EventKind
    job_id: int
    user_id: int
    origin: Origin
    locale: str
    reply: Reply
    # The job's owner as their platform knows them: enough to mention them.
    owner: UserRef | None = None
    status_message: str | None = None  # the bot's own message about this job, to edit
    step: int | None = None
    total: int | None = None
    position: int | None = None
    preview: bytes | None = None  # PROGRESS: a small JPEG of the images being made

    @property
    def is_final(self) -> bool:
        return self.kind in (EventKind.FINISHED, EventKind.FAILED, EventKind.CANCELLED)


EventHandler = Callable[[JobEvent], Awaitable[None]]


def message_to_json(message: Message) -> str:
    """For the job's error column; arguments of a stored message are plain values, or both
    languages of a Localized one ({"en": ..., "ko": ...})."""
    args = {name: _stored_argument(value) for name, value in message.args.items()}
    return json.dumps({"key": message.key.value, "args": args}, ensure_ascii=False)


def message_from_json(text: str) -> Message:
    payload = json.loads(text)
    args = {name: _read_argument(value) for name, value in payload.get("args", {}).items()}
    return Message(Key(payload["key"]), args)


def _stored_argument(value: Argument) -> object:
    if isinstance(value, Localized):
        return {"en": value.en, "ko": value.ko}
    return value


def _read_argument(value: object) -> Argument:
    if isinstance(value, dict) and set(value) == {"en", "ko"}:
        return Localized(str(value["en"]), str(value["ko"]))
    return value  # type: ignore[return-value]
