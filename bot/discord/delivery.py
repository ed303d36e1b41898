"""A job's messages on Discord: the status message, its progress, and where the result goes.

A job's message is the interaction's own (the deferred `/imagine` answer, or a follow-up to a
press), edited through the interaction's webhook while its token lasts (kept in memory only:
it is a credential). The core keeps the message's channel and id with the job.

The result takes the first way that works:
1. the status message, edited through the interaction's webhook;
2. the status message was deleted (10008) while the token lasts: a follow-up in the
   interaction, unless the token's five follow-ups are spent;
3. a new message in the channel, replying to the status message where it still exists and
   mentioning the user (that user alone: never @everyone or roles, whatever the prompt says):
   the token expired (50027), the status message is gone, or the bot restarted;
4. the channel refuses the bot (50001 Missing Access, 50013 Missing Permissions, 10003 Unknown
   Channel, e.g. a user-installed app in a server it is not in): a DM to the user;
5. the user takes no DMs either (50007): `Undelivered` is raised, the core records the job as
   not delivered and tries again later (and at the next start).
Nothing is sent twice: each way either posts the result or fails without posting. After a
new message, the old status message (where the bot may still edit it) drops its preview and
says how the job ended.

Files fit the upload limit of where they go (bot/discord/render.py): the interaction's
`attachment_size_limit`, else the guild's `filesize_limit`, else 10 MiB (a DM's); a place that
still answers 40005 gets the file again at half the size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import discord

from bot.core.events import EventKind, JobEvent, UserRef
from bot.core.frontend import BotContext
from bot.core.messages import Key, Message
from bot.discord.buttons import grid_view
from bot.discord.render import (
    DEFAULT_UPLOAD_LIMIT,
    Rendered,
    StatusMessage,
    content,
    render_event,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Interaction tokens last 15 minutes; edits through the webhook stop a little before.
TOKEN_SECONDS = 14 * 60
# Discord lets a user-installed app send at most 5 follow-ups per interaction; the bot keeps to
# that everywhere.
MAX_FOLLOWUPS = 5

INVALID_WEBHOOK_TOKEN = 50027
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
UNKNOWN_MESSAGE = 10008
UNKNOWN_CHANNEL = 10003
MISSING_ACCESS = 50001
MISSING_PERMISSIONS = 50013
CANNOT_DM_USER = 50007
ENTITY_TOO_LARGE = 40005
UPLOAD_RETRIES = 3
TOKEN_GONE = frozenset({INVALID_WEBHOOK_TOKEN, UNKNOWN_WEBHOOK, UNKNOWN_INTERACTION})
CHANNEL_REFUSES = frozenset({MISSING_ACCESS, MISSING_PERMISSIONS, UNKNOWN_CHANNEL})


class Undelivered(ConnectionError):
    """Neither the channel nor a DM took the result: the core tries again later."""


class FollowUpLimit(Exception):
    """The interaction's five follow-ups are spent."""


@dataclass(frozen=True)
class Webhook:
    """An interaction's webhook, to edit its messages while the token lasts."""

    application_id: int
    token: str
    expires: float  # time.monotonic()


@dataclass(frozen=True)
class Waiting:
    """An interaction whose job was just queued: its QUEUED event posts the job's message
    there (`edit_original`: the deferred answer itself; else a new follow-up)."""

    interaction: discord.Interaction[Any]
    edit_original: bool


class FollowUps:
    """Follow-ups sent per interaction token, never more than MAX_FOLLOWUPS (edits of the
    original response are not follow-ups)."""

    def __init__(self, limit: int = MAX_FOLLOWUPS) -> None:
        self.limit = limit
        self._sent: dict[str, tuple[int, float]] = {}  # token -> (count, expires)

    def left(self, token: str) -> int:
        self._forget_expired()
        return self.limit - self._sent.get(token, (0, 0.0))[0]

    def take(self, token: str) -> None:
        """Count one follow-up for `token`; FollowUpLimit when none is left."""
        if self.left(token) <= 0:
            raise FollowUpLimit(f"{self.limit} follow-ups already sent for this interaction")
        count, expires = self._sent.get(token, (0, time.monotonic() + TOKEN_SECONDS + 60))
        self._sent[token] = (count + 1, expires)

    async def send(
        self, interaction: discord.Interaction[Any], *args: Any, **kwargs: Any
    ) -> discord.WebhookMessage | None:
        """`interaction.followup.send`, counted."""
        self.take(interaction.token)
        return await interaction.followup.send(*args, **kwargs)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for token in [t for t, (_, expires) in self._sent.items() if expires < now]:
            del self._sent[token]


Fit = Callable[[int], Awaitable[Rendered]]  # the final event rendered for an upload limit


async def _fitting(fit: Fit, limit: int, send: Callable[[Rendered], Awaitable[T]]) -> T:
    """`send` the event rendered under `limit`. Should the place refuse the file as too large
    (40005: its limit is lower than the bot knew, e.g. after a restart, when only the guild's
    boost level is known), it is sent again under half the size, a few times at most."""
    for _ in range(UPLOAD_RETRIES):
        rendered = await fit(limit)
        try:
            return await send(rendered)
        except discord.HTTPException as error:
            size = sum(len(upload.data) for upload in rendered.uploads)
            if code_of(error) != ENTITY_TOO_LARGE or size == 0:
                raise
            log.info("A %d-byte upload was too large; sending it under %d", size, size // 2)
            limit = size // 2
    return await send(await fit(limit))


def code_of(error: discord.HTTPException) -> int:
    return error.code


def mention_only(user_id: int) -> discord.AllowedMentions:
    """Ping this user and no one else (no @everyone, no roles, no one named in the prompt)."""
    return discord.AllowedMentions(
        everyone=False, roles=False, users=[discord.Object(user_id)], replied_user=False
    )


class JobMessages:
    """Job events as Discord messages, for one client."""

    def __init__(self, context: BotContext, client: discord.Client) -> None:
        self.service = context.service
        self.client = client
        self.followups = FollowUps()
        self._waiting: dict[str, Waiting] = {}  # interaction id -> where its job's message goes
        self._webhooks: dict[int, Webhook] = {}  # message id -> its interaction's webhook
        self._limits: dict[int, int] = {}  # channel id -> its interactions' upload limit

    # ------------------------------------------------------------------ interactions

    def expect(self, interaction: discord.Interaction[Any], edit_original: bool) -> None:
        """The job this interaction queues posts its message there."""
        self._waiting[str(interaction.id)] = Waiting(interaction, edit_original)
        if interaction.channel_id is not None:
            self._limits[interaction.channel_id] = interaction.filesize_limit

    def forget(self, interaction: discord.Interaction[Any]) -> None:
        self._waiting.pop(str(interaction.id), None)

    # ------------------------------------------------------------------ job events

    async def on_event(self, event: JobEvent) -> None:
        if self.client.is_closed():  # stopping: a result waits for the next start
            if event.is_final:
                raise ConnectionError(f"Discord is disconnected; job {event.job_id} waits")
            return
        if event.kind is EventKind.QUEUED:
            await self._post_queued(event)
        elif event.kind is EventKind.FINISHED:
            await self._deliver_result(event)
        elif event.is_final:
            rendered = render_event(event)

            async def same(_limit: int) -> Rendered:
                return rendered

            await self._deliver(event, same)
        else:
            await self._show_progress(event)

    async def _post_queued(self, event: JobEvent) -> None:
        waiting = self._waiting.pop(event.origin.message or "", None)
        if waiting is None:
            return
        interaction = waiting.interaction
        text = content(event.reply, event.locale)
        try:
            if waiting.edit_original:
                message: discord.Message = await interaction.edit_original_response(content=text)
            else:
                sent = await self.followups.send(interaction, text, wait=True)
                assert sent is not None
                message = sent
        except FollowUpLimit:
            return  # the result goes to the channel
        except discord.HTTPException as error:
            if code_of(error) in TOKEN_GONE or code_of(error) == UNKNOWN_MESSAGE:
                return  # no status message: the result goes to the channel
            raise
        expires = time.monotonic() + TOKEN_SECONDS
        self._webhooks[message.id] = Webhook(interaction.application_id, interaction.token, expires)
        channel = interaction.channel_id or int(event.origin.chat)
        status = StatusMessage(channel, message.id).encode()
        await self.service.bind_status_message(event.job_id, status)

    async def _show_progress(self, event: JobEvent) -> None:
        """Progress edits the status message where the bot can; where it cannot (the token
        expired in a channel the bot may not edit in, the message was deleted) the progress
        is shown nowhere: the result still finds its way."""
        target = StatusMessage.parse(event.status_message)
        if target is None:
            return
        rendered = render_event(event)
        hook = self._live_webhook(target)
        if hook is not None:
            try:
                await self._edit_by_webhook(hook, target, rendered, event.locale)
                return
            except discord.HTTPException as error:
                if code_of(error) not in TOKEN_GONE:
                    if code_of(error) == UNKNOWN_MESSAGE:
                        return
                    raise
                self._webhooks.pop(target.message_id, None)
        try:
            await self._edit_in_channel(target, rendered, event.locale)
        except (discord.Forbidden, discord.NotFound) as error:
            log.debug("Progress of job %s not shown: %s", event.job_id, error)

    async def _deliver_result(self, event: JobEvent) -> None:
        """A finished job's result, rendered (read, and re-encoded when too large) off the
        event loop, once per upload limit it is sent under."""
        fitted: dict[int, Rendered] = {}

        async def fit(limit: int) -> Rendered:
            if limit not in fitted:
                fitted[limit] = await asyncio.to_thread(render_event, event, limit)
            return fitted[limit]

        await self._deliver(event, fit)

    async def _deliver(self, event: JobEvent, fit: Fit) -> None:
        """The final event by the first way that works (see the module's docstring); `fit`
        renders it for an upload limit."""
        target = StatusMessage.parse(event.status_message)
        channel_id = target.channel_id if target is not None else int(event.origin.chat)
        limit = self.upload_limit(channel_id)
        message_gone = False
        hook = self._live_webhook(target)
        if target is not None and hook is not None:
            try:
                await _fitting(
                    fit, limit, lambda r: self._edit_by_webhook(hook, target, r, event.locale)
                )
                self._webhooks.pop(target.message_id, None)
                return
            except discord.HTTPException as error:
                if code_of(error) in TOKEN_GONE:
                    self._webhooks.pop(target.message_id, None)
                    hook = None
                elif code_of(error) == UNKNOWN_MESSAGE:
                    message_gone = True
                else:
                    raise
        if target is not None and hook is not None and message_gone:
            sent = await _fitting(
                fit, limit, lambda r: self._followup_result(hook, target, r, event)
            )
            if sent:
                return
        reply_to = target if target is not None and not message_gone else None
        owner = _discord_user(event.owner)
        try:
            await _fitting(fit, limit, lambda r: self._post(event, channel_id, r, owner, reply_to))
            await self._settle_status(reply_to, event)
            return
        except discord.HTTPException as error:
            if code_of(error) not in CHANNEL_REFUSES:
                raise
            log.info("Job %s: channel %s refused the result (%s)", event.job_id, channel_id, error)
        if owner is None:
            raise Undelivered(f"job {event.job_id}: the channel refused and no user to DM")
        by_dm = Message(Key.RESULT_BY_DM, {"job": event.job_id})
        try:
            dm = await self.client.create_dm(discord.Object(owner))
            await _fitting(
                fit,
                DEFAULT_UPLOAD_LIMIT,
                lambda r: self._post(event, dm.id, r, None, None, note=by_dm),
            )
        except discord.HTTPException as error:
            if code_of(error) == CANNOT_DM_USER:
                raise Undelivered(
                    f"job {event.job_id}: channel {channel_id} and the user's DMs refuse the bot"
                ) from error
            raise
        await self._settle_status(reply_to, event)

    async def _settle_status(self, status: StatusMessage | None, event: JobEvent) -> None:
        """The old status message (last showing progress) says how the job ended, without its
        preview; the result itself went out as a new message. Best effort: where the bot may
        not edit, it stays as it was."""
        if status is None:
            return
        try:
            await self._edit_in_channel(status, Rendered(content(event.reply, event.locale)), "")
        except discord.HTTPException as error:
            log.debug("Job %s: its status message stays as it was (%s)", event.job_id, error)

    async def _followup_result(
        self, hook: Webhook, target: StatusMessage, rendered: Rendered, event: JobEvent
    ) -> bool:
        """The result as a follow-up in the interaction (its status message was deleted);
        False when the token or its follow-ups are spent."""
        try:
            self.followups.take(hook.token)
        except FollowUpLimit:
            return False
        webhook = discord.Webhook.partial(hook.application_id, hook.token, client=self.client)
        owner = _discord_user(event.owner)
        prefix = f"<@{owner}> " if owner is not None else ""
        view = grid_view(rendered.buttons, event.locale)
        try:
            message = await webhook.send(
                prefix + rendered.content[: 2000 - len(prefix)],
                files=rendered.files,
                allowed_mentions=mention_only(owner) if owner else discord.AllowedMentions.none(),
                wait=True,
                **({"view": view} if view is not None else {}),
            )
        except discord.HTTPException as error:
            if code_of(error) in TOKEN_GONE:
                self._webhooks.pop(target.message_id, None)
                return False
            raise
        await self._rebind(event, StatusMessage(target.channel_id, message.id))
        return True

    async def _post(
        self,
        event: JobEvent,
        channel_id: int,
        rendered: Rendered,
        owner: int | None,
        reply_to: StatusMessage | None,
        note: Message | None = None,
    ) -> None:
        """The result as a new message: replying to the status message where there is one,
        mentioning the owner when given (and no one else)."""
        channel = self.client.get_partial_messageable(channel_id)
        prefix = f"<@{owner}> " if owner is not None else ""
        text = rendered.content
        if note is not None:
            text = note.render(event.locale) + "\n" + text
        parts: dict[str, Any] = {
            "files": rendered.files,
            "allowed_mentions": (
                mention_only(owner) if owner is not None else discord.AllowedMentions.none()
            ),
        }
        view = grid_view(rendered.buttons, event.locale)
        if view is not None:
            parts["view"] = view
        if reply_to is not None:
            parts["reference"] = discord.MessageReference(
                message_id=reply_to.message_id,
                channel_id=reply_to.channel_id,
                fail_if_not_exists=False,
            )
        message = await channel.send((prefix + text)[:2000], **parts)
        await self._rebind(event, StatusMessage(channel_id, message.id))

    async def _rebind(self, event: JobEvent, message: StatusMessage) -> None:
        """The result's message is the job's message from now on."""
        if event.kind is EventKind.FINISHED:
            await self.service.bind_status_message(event.job_id, message.encode())

    # ------------------------------------------------------------------ helpers

    def upload_limit(self, channel_id: int) -> int:
        """The most bytes a file may have in this channel: what its interactions said
        (`attachment_size_limit`), else its guild's `filesize_limit`, else Discord's default."""
        known = self._limits.get(channel_id)
        if known:
            return known
        channel = self.client.get_channel(channel_id)
        guild = getattr(channel, "guild", None)
        if isinstance(guild, discord.Guild):
            return guild.filesize_limit
        return DEFAULT_UPLOAD_LIMIT

    def _live_webhook(self, target: StatusMessage | None) -> Webhook | None:
        if target is None:
            return None
        hook = self._webhooks.get(target.message_id)
        if hook is not None and hook.expires <= time.monotonic():
            self._webhooks.pop(target.message_id, None)
            return None
        return hook

    def _parts(self, rendered: Rendered, locale: str) -> dict[str, Any]:
        parts: dict[str, Any] = {"content": rendered.content, "attachments": rendered.files}
        view = grid_view(rendered.buttons, locale)
        if view is not None:
            parts["view"] = view
        return parts

    async def _edit_by_webhook(
        self, hook: Webhook, target: StatusMessage, rendered: Rendered, locale: str
    ) -> None:
        webhook = discord.Webhook.partial(hook.application_id, hook.token, client=self.client)
        parts = self._parts(rendered, locale)
        await webhook.edit_message(
            target.message_id, allowed_mentions=discord.AllowedMentions.none(), **parts
        )

    async def _edit_in_channel(
        self, target: StatusMessage, rendered: Rendered, locale: str
    ) -> None:
        channel = self.client.get_partial_messageable(target.channel_id)
        parts = self._parts(rendered, locale)
        await channel.get_partial_message(target.message_id).edit(
            allowed_mentions=discord.AllowedMentions.none(), **parts
        )


def _discord_user(owner: UserRef | None) -> int | None:
    if owner is None or not owner.platform_user_id.isdigit():
        return None
    return int(owner.platform_user_id)
