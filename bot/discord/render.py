"""Core replies and job events as Discord message parts: text, files, buttons, and where the
job's message is (a string the core keeps with the job: its channel and id, never the
interaction's token, which is a credential)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import discord

from bot.core.buttons import ButtonRows
from bot.core.events import EventKind, JobEvent, Reply

MAX_CONTENT = 2000  # Discord's limit on a message's text
_STATUS_PREFIX = "discord"


@dataclass(frozen=True)
class StatusMessage:
    """A job's message: its channel and id."""

    channel_id: int
    message_id: int

    def encode(self) -> str:
        return f"{_STATUS_PREFIX}:{self.channel_id}:{self.message_id}"

    @classmethod
    def parse(cls, text: str | None) -> StatusMessage | None:
        """The message a stored string names, or None for none or one that is not ours."""
        parts = (text or "").split(":")
        if len(parts) != 3 or parts[0] != _STATUS_PREFIX:
            return None
        _, channel, message = parts
        if not all(part.isascii() and part.isdigit() for part in (channel, message)):
            return None
        return cls(int(channel), int(message))


@dataclass(frozen=True)
class Rendered:
    content: str
    files: tuple[discord.File, ...] = ()
    buttons: ButtonRows = ()


def content(reply: Reply, locale: str) -> str:
    text = reply.text(locale)
    if reply.editable is not None:
        text += f"\n```\n{reply.editable}\n```"
    if len(text) > MAX_CONTENT:
        text = text[: MAX_CONTENT - 1] + "…"
    return text


def render_event(event: JobEvent) -> Rendered:
    """What a job's message shows after `event`: the progress preview while it runs, the grid
    (or the one image) with its buttons when it is done."""
    text = content(event.reply, event.locale)
    if event.kind is EventKind.PROGRESS and event.preview is not None:
        preview = discord.File(io.BytesIO(event.preview), filename=f"job-{event.job_id}.jpg")
        return Rendered(text, (preview,))
    if event.kind is EventKind.FINISHED:
        picture = result_file(event.reply)
        files = (discord.File(picture, filename=picture.name),) if picture is not None else ()
        return Rendered(text, files, event.reply.buttons)
    return Rendered(text)


def result_file(reply: Reply) -> Path | None:
    """The grid of a finished job, or its one image."""
    if reply.grid is not None:
        return reply.grid
    return reply.images[0] if reply.images else None
