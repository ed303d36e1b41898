"""Core replies and job events as Discord message parts: text, files, buttons, and where the
job's message is (a string the core keeps with the job: its channel and id, never the
interaction's token, which is a credential)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import discord
from PIL import Image

from bot.core.buttons import ButtonRows
from bot.core.events import EventKind, JobEvent, Reply
from bot.core.messages import Key, Message

MAX_CONTENT = 2000  # Discord's limit on a message's text
# Discord's upload limit without boosts (a guild's `filesize_limit`; DMs have the same).
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
JPEG_QUALITIES = (95, 90, 85, 80, 75, 70)  # tried in turn before the picture is scaled down
DOWNSCALE = 0.75
MIN_SIDE = 16
# A control map sent with a grid gets at least this much, even when the grid filled the limit.
MIN_EXTRA_BYTES = 256 * 1024
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
class Upload:
    """A file to attach, as bytes: a discord.File is spent by one request (discord.py closes
    it), and a result may need more than one try (the interaction, the channel, a DM)."""

    data: bytes
    filename: str
    spoiler: bool = False

    def file(self) -> discord.File:
        """`spoiler`: Discord names the file SPOILER_... and blurs it until clicked."""
        return discord.File(io.BytesIO(self.data), filename=self.filename, spoiler=self.spoiler)


@dataclass(frozen=True)
class Rendered:
    content: str
    uploads: tuple[Upload, ...] = ()
    buttons: ButtonRows = ()

    @property
    def files(self) -> list[discord.File]:
        """Fresh discord.File objects for one request."""
        return [upload.file() for upload in self.uploads]


def content(reply: Reply, locale: str, *, notes: tuple[Message, ...] = (), room: int = 0) -> str:
    """The reply's text with `notes` as further lines, within Discord's 2000 characters less
    `room` (kept for a mention in front)."""
    text = reply.text(locale)
    if reply.editable is not None:
        text += f"\n```\n{reply.editable}\n```"
    limit = MAX_CONTENT - room
    tail = "".join(f"\n{note.render(locale)}" for note in notes)
    if len(text) + len(tail) > limit:
        text = text[: max(0, limit - len(tail) - 1)] + "…"
    return (text + tail)[:limit]


def render_event(event: JobEvent, upload_limit: int = DEFAULT_UPLOAD_LIMIT) -> Rendered:
    """What a job's message shows after `event`: the progress preview while it runs, the grid
    (or the one image) with its buttons when it is done, fitted under `upload_limit` bytes
    (a flagged job's behind a spoiler). Reads and may re-encode the image: call it off the
    event loop for a finished job."""
    if event.kind is EventKind.PROGRESS and event.preview is not None:
        preview = Upload(event.preview, f"job-{event.job_id}.jpg", spoiler=event.reply.flagged)
        return Rendered(content(event.reply, event.locale), (preview,))
    if event.kind is EventKind.FINISHED:
        picture = result_file(event.reply)
        if picture is None:
            return Rendered(content(event.reply, event.locale), (), event.reply.buttons)
        fitted = fit_upload(picture.read_bytes(), picture.name, upload_limit)
        notes: tuple[Message, ...] = ()
        if fitted.reencoded:
            args = {"format": fitted.format, "limit": size_text(upload_limit), "job": event.job_id}
            notes = (Message(Key.RESULT_REENCODED, args),)
        upload = Upload(fitted.data, fitted.filename, spoiler=event.reply.flagged)
        room = upload_limit - len(fitted.data)  # what the picture leaves of the message's limit
        extras = []
        for path in event.reply.attachments:
            extra = fit_upload(path.read_bytes(), path.name, max(MIN_EXTRA_BYTES, room))
            extras.append(Upload(extra.data, extra.filename, spoiler=event.reply.flagged))
            room -= len(extra.data)
        text = content(event.reply, event.locale, notes=notes)
        return Rendered(text, (upload, *extras), event.reply.buttons)
    return Rendered(content(event.reply, event.locale))


def result_file(reply: Reply) -> Path | None:
    """The grid of a finished job, or its one image."""
    if reply.grid is not None:
        return reply.grid
    return reply.images[0] if reply.images else None


@dataclass(frozen=True)
class Fitted:
    data: bytes
    filename: str
    format: str  # "PNG", or what it was re-encoded as
    reencoded: bool


def fit_upload(data: bytes, filename: str, limit: int) -> Fitted:
    """The PNG as it is when it fits under `limit` bytes; else a JPEG re-encoded under it:
    the quality goes down step by step, then the picture is scaled down until it fits."""
    if len(data) <= limit:
        return Fitted(data, filename, "PNG", reencoded=False)
    stem = filename.rsplit(".", 1)[0]
    with Image.open(io.BytesIO(data)) as opened:
        picture = opened.convert("RGB")
    while True:
        for quality in JPEG_QUALITIES:
            encoded = _jpeg(picture, quality)
            if len(encoded) <= limit:
                return Fitted(encoded, f"{stem}.jpg", "JPEG", reencoded=True)
        width, height = picture.size
        if width <= MIN_SIDE and height <= MIN_SIDE:
            raise ValueError(f"{filename} does not fit in {limit} bytes even at {width}x{height}")
        size = (max(1, int(width * DOWNSCALE)), max(1, int(height * DOWNSCALE)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)


def _jpeg(picture: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality, optimize=True, subsampling=0 if quality >= 90 else 2)
    return out.getvalue()


def size_text(size: int) -> str:
    """10485760 -> "10 MiB", 65536 -> "64 KiB"."""
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} B"
