"""A job's messages on Telegram: one status message per job, edited as it runs, then the result.

- QUEUED: a text message replying to the request (its position and ETA); the core keeps it
  with the job (`telegram:<chat>:<message>:t`).
- STARTED / PROGRESS: the status message is edited; the first preview replaces the text with a
  photo (a new message: Telegram cannot turn a text message into a photo), later previews
  change the photo in place (editMessageMedia). In a group, edits are at most one every
  `EASEL_TELEGRAM_GROUP_INTERVAL` seconds (Telegram allows 20 messages a minute there); the
  core already throttles per job and per chat.
- FINISHED: the grid as a photo replying to the request, with its keyboard (behind a spoiler
  for an NSFW prompt); a photo Telegram would refuse (over 10 MB, an extreme aspect ratio) and
  an upscale go out as a document (the full PNG with its parameters, a small preview as its
  thumbnail). The status message is deleted.
- FAILED / CANCELLED: the status message says so (or a new message, where it is gone).
A final result that Telegram refuses raises, and the core tries again later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telegram import Bot, InputMediaPhoto, Message, ReplyParameters
from telegram.constants import ParseMode
from telegram.error import BadRequest, TelegramError

from bot.core.events import EventKind, JobEvent, Reply
from bot.core.frontend import BotContext
from bot.core.messages import Key
from bot.core.messages import Message as CoreMessage
from bot.telegram.render import (
    MAX_CAPTION,
    THUMBNAIL_SIDE,
    StatusMessage,
    fits_as_photo,
    jpeg_preview,
    keyboard,
    reply_html,
)

log = logging.getLogger(__name__)
_UPSCALES = (Key.FINISHED_UPSCALE, Key.FINISHED_UPSCALE_IMAGE)


@dataclass(frozen=True)
class Picture:
    """A finished job's picture as it goes out."""

    data: bytes
    filename: str
    as_document: bool
    thumbnail: bytes | None = None


class JobMessages:
    """Job events as Telegram messages, through one bot."""

    def __init__(self, context: BotContext, bot: Bot, group_interval: float) -> None:
        self.service = context.service
        self.bot = bot
        self.group_interval = group_interval
        self.open = False  # set while the application runs
        self._last_group_edit: dict[int, float] = {}  # group chat -> when its status last changed
        self._sending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def close(self, timeout: float) -> None:
        """No new events are taken; those being sent get up to `timeout` seconds to finish,
        so that the application is not shut down under a result half sent (it would be sent
        again at the next start)."""
        self.open = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("Telegram: stopping with %d job message(s) still being sent", self._sending)

    async def on_event(self, event: JobEvent) -> None:
        if not self.open:  # stopping: a result waits for the next start
            if event.is_final:
                raise ConnectionError(f"Telegram is not connected; job {event.job_id} waits")
            return
        self._sending += 1
        self._idle.clear()
        try:
            await self._show(event)
        finally:
            self._sending -= 1
            if self._sending == 0:
                self._idle.set()

    async def _show(self, event: JobEvent) -> None:
        if event.kind is EventKind.QUEUED:
            await self._post_queued(event)
        elif event.kind is EventKind.FINISHED:
            await self._deliver_result(event)
        elif event.is_final:
            await self._say_ended(event)
        else:
            await self._show_progress(event)

    # ------------------------------------------------------------------ status

    async def _post_queued(self, event: JobEvent) -> None:
        chat = int(event.origin.chat)
        message = await self.bot.send_message(
            chat,
            reply_html(event.reply, event.locale),
            parse_mode=ParseMode.HTML,
            reply_parameters=_replying_to(event),
        )
        status = StatusMessage(chat, message.message_id)
        await self.service.bind_status_message(event.job_id, status.encode())

    async def _show_progress(self, event: JobEvent) -> None:
        """Best effort: progress Telegram refuses is logged and skipped; the result still
        goes out."""
        status = StatusMessage.parse(event.status_message)
        if status is None or not self._may_edit(status.chat_id):
            return
        try:
            if event.preview is not None and not status.photo:
                await self._switch_to_photo(event, status)
            elif event.preview is not None:
                await self.bot.edit_message_media(
                    InputMediaPhoto(
                        event.preview,
                        caption=reply_html(event.reply, event.locale, MAX_CAPTION),
                        parse_mode=ParseMode.HTML,
                        has_spoiler=event.reply.flagged,
                        filename=f"job-{event.job_id}.jpg",
                    ),
                    chat_id=status.chat_id,
                    message_id=status.message_id,
                )
            else:
                await self._edit_status(status, event)
        except BadRequest as error:
            log.debug("Progress of job %s not shown: %s", event.job_id, error.message)

    def _may_edit(self, chat_id: int) -> bool:
        """Groups get one progress edit every `group_interval` seconds at most."""
        if chat_id > 0:
            return True
        now = time.monotonic()
        if now - self._last_group_edit.get(chat_id, -self.group_interval) < self.group_interval:
            return False
        self._last_group_edit[chat_id] = now
        return True

    async def _switch_to_photo(self, event: JobEvent, status: StatusMessage) -> None:
        """The first preview: a photo message in place of the text one."""
        assert event.preview is not None
        sent = await self.bot.send_photo(
            status.chat_id,
            event.preview,
            caption=reply_html(event.reply, event.locale, MAX_CAPTION),
            parse_mode=ParseMode.HTML,
            has_spoiler=event.reply.flagged,
            reply_parameters=_replying_to(event),
            filename=f"job-{event.job_id}.jpg",
        )
        photo = StatusMessage(status.chat_id, sent.message_id, photo=True)
        await self.service.bind_status_message(event.job_id, photo.encode())
        await self._delete(status)

    async def _edit_status(self, status: StatusMessage, event: JobEvent) -> None:
        if status.photo:
            await self.bot.edit_message_caption(
                chat_id=status.chat_id,
                message_id=status.message_id,
                caption=reply_html(event.reply, event.locale, MAX_CAPTION),
                parse_mode=ParseMode.HTML,
            )
        else:
            await self.bot.edit_message_text(
                reply_html(event.reply, event.locale),
                chat_id=status.chat_id,
                message_id=status.message_id,
                parse_mode=ParseMode.HTML,
            )

    async def _say_ended(self, event: JobEvent) -> None:
        """A failed or cancelled job: its status message says so, or a new message does."""
        status = StatusMessage.parse(event.status_message)
        if status is not None:
            try:
                await self._edit_status(status, event)
                return
            except BadRequest as error:
                log.debug("Job %s: status message not edited (%s)", event.job_id, error.message)
        await self.bot.send_message(
            int(event.origin.chat),
            reply_html(event.reply, event.locale),
            parse_mode=ParseMode.HTML,
            reply_parameters=_replying_to(event),
        )

    # ------------------------------------------------------------------ the result

    async def _deliver_result(self, event: JobEvent) -> None:
        reply = event.reply
        picture = await asyncio.to_thread(_picture, reply)
        chat = int(event.origin.chat)
        if picture is None:
            await self._say_ended(event)
            return
        caption = reply_html(reply, event.locale, MAX_CAPTION)
        if picture.as_document and reply.message.key not in _UPSCALES:
            note = CoreMessage(Key.TELEGRAM_AS_DOCUMENT, {"job": event.job_id})
            caption = reply_html(
                Reply(reply.message, lines=(*reply.lines, note)), event.locale, MAX_CAPTION
            )
        markup = keyboard(reply.buttons, event.locale)
        common: dict[str, Any] = {
            "filename": picture.filename,
            "caption": caption,
            "parse_mode": ParseMode.HTML,
            "reply_markup": markup,
            "reply_parameters": _replying_to(event),
        }
        sent: Message
        if picture.as_document:
            sent = await self.bot.send_document(
                chat, picture.data, thumbnail=picture.thumbnail, **common
            )
        else:
            sent = await self.bot.send_photo(
                chat, picture.data, has_spoiler=reply.flagged, **common
            )
        for path in reply.attachments:  # the control map of a --cn-show job, under the grid
            data = await asyncio.to_thread(path.read_bytes)
            await self.bot.send_photo(
                chat,
                data,
                filename=path.name,
                has_spoiler=reply.flagged,
                reply_parameters=ReplyParameters(sent.message_id, allow_sending_without_reply=True),
            )
        status = StatusMessage.parse(event.status_message)
        if status is not None and status.message_id != sent.message_id:
            await self._delete(status)

    async def _delete(self, status: StatusMessage) -> None:
        try:
            await self.bot.delete_message(status.chat_id, status.message_id)
        except TelegramError as error:
            log.debug("Status message %s stays (%s)", status.message_id, error)


def _replying_to(event: JobEvent) -> ReplyParameters | None:
    """A reply to the request (the /imagine, or the grid whose button was pressed); sent all
    the same when that message is gone."""
    message = event.origin.message
    if message is None or not message.isdigit():
        return None
    return ReplyParameters(int(message), allow_sending_without_reply=True)


def _picture(reply: Reply) -> Picture | None:
    """The grid (or the one image) as a photo; an upscale, or a picture Telegram would not take
    as a photo, as a document with a thumbnail. Reads files: call it off the event loop."""
    path: Path | None = reply.grid or (reply.images[0] if reply.images else None)
    if path is None:
        return None
    data = path.read_bytes()
    if reply.message.key in _UPSCALES or not fits_as_photo(data):
        return Picture(data, path.name, True, jpeg_preview(data, THUMBNAIL_SIDE))
    return Picture(data, path.name, False)
