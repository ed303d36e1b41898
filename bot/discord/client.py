"""The Discord client: `/imagine`, button presses, and job events as message edits.

Thin: options go to the core's parser, presses to `service.act`, and the core's replies and
events come back as Discord messages (bot/discord/render.py). A job's message is the
interaction's own (the deferred `/imagine` answer, or a follow-up to a press). It is edited
through the interaction's webhook while its token lasts; the token is kept in memory only (it
is a credential), and the core keeps the message's channel and id, so after a restart the bot
edits its message in the channel instead.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import discord
from discord import app_commands

from bot.core.buttons import REMIX, parse_action
from bot.core.errors import run_guarded
from bot.core.events import EventKind, JobEvent, Origin, Reply, Ticket, UserRef
from bot.core.frontend import BotContext
from bot.core.messages import Key, Message
from bot.discord.admin import add_admin_commands
from bot.discord.buttons import GridButton, grid_view
from bot.discord.commands import add_core_commands
from bot.discord.imagine import add_imagine
from bot.discord.interactions import locale_of, origin_of, user_ref
from bot.discord.menus import add_context_menus
from bot.discord.remix import fits, remix_modal, submitted
from bot.discord.render import Rendered, StatusMessage, content, render_event
from bot.discord.setting_menus import SettingSelect
from bot.discord.translator import CatalogTranslator

# Interaction tokens last 15 minutes; edits through the webhook stop a little before.
TOKEN_SECONDS = 14 * 60


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


class DiscordFrontEnd:
    """What Easel does with Discord's interactions and the core's job events."""

    def __init__(self, context: BotContext, client: EaselClient) -> None:
        self.service = context.service
        self.client = client
        self._waiting: dict[str, Waiting] = {}  # interaction id -> where its job's message goes
        self._webhooks: dict[int, Webhook] = {}  # message id -> its interaction's webhook

    # ------------------------------------------------------------------ interactions

    async def imagine(
        self, interaction: discord.Interaction[Any], prompt: str, **fields: object
    ) -> None:
        await interaction.response.defer(thinking=True)
        user, origin = user_ref(interaction), origin_of(interaction)
        typed = {name: value for name, value in fields.items() if value is not None}

        async def queue() -> Ticket:
            options = self.service.options(user, prompt, origin, **typed)
            return await self.service.imagine(user, options, origin)

        await self._queue(interaction, queue(), "discord /imagine", user, edit_original=True)

    async def press(self, interaction: discord.Interaction[Any], job_id: int, action: str) -> None:
        user, origin = user_ref(interaction), origin_of(interaction)
        chosen = parse_action(action)
        if chosen is not None and chosen.name == REMIX:
            await self._remix_line(interaction, user, job_id, origin)
            return
        await interaction.response.defer()
        call = self.service.act(user, job_id, action, origin)
        await self._queue(
            interaction, call, "discord button", user, edit_original=False, job=job_id
        )

    async def _remix_line(
        self, interaction: discord.Interaction[Any], user: UserRef, job_id: int, origin: Origin
    ) -> None:
        """The job's line in a modal to edit; a line too long for one is given to copy."""
        locale = locale_of(interaction)

        async def line() -> str:
            return self.service.remix_line(user, job_id, origin)

        editable = await run_guarded(line(), "discord remix", user, job_id)
        if isinstance(editable, str) and fits(editable):
            await interaction.response.send_modal(remix_modal(job_id, editable, locale))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        reply = (
            Reply(Message(Key.REMIX_COPY_LINE, {"job": job_id}), editable=editable)
            if isinstance(editable, str)
            else editable
        )
        await interaction.followup.send(content(reply, locale), ephemeral=True)

    async def remix_submitted(
        self, interaction: discord.Interaction[Any], job_id: int, line: str
    ) -> None:
        """The remix modal's edited line, queued as a new job under a new message; a bad
        line is told to the presser alone and queues nothing."""
        await interaction.response.defer()
        user, origin = user_ref(interaction), origin_of(interaction)
        call = self.service.remix(user, job_id, line, origin)
        await self._queue(interaction, call, "discord remix", user, edit_original=False, job=job_id)

    async def queue(
        self,
        interaction: discord.Interaction[Any],
        call: Awaitable[Ticket],
        what: str,
        user: UserRef,
        *,
        edit_original: bool,
    ) -> None:
        await self._queue(interaction, call, what, user, edit_original=edit_original)

    async def _queue(
        self,
        interaction: discord.Interaction[Any],
        call: Awaitable[Ticket],
        what: str,
        user: UserRef,
        *,
        edit_original: bool,
        job: int | None = None,
    ) -> None:
        """Queue through the core; the job's message is posted by its QUEUED event, and a
        refusal or error is told to the user alone."""
        key = str(interaction.id)
        self._waiting[key] = Waiting(interaction, edit_original)
        result = await run_guarded(call, what, user, job)
        if isinstance(result, Reply):
            self._waiting.pop(key, None)
            await self._tell_privately(interaction, result, edit_original)

    async def _tell_privately(
        self, interaction: discord.Interaction[Any], reply: Reply, deferred_public: bool
    ) -> None:
        """An ephemeral answer. A deferred public answer stays public whatever is sent into
        it, so it is removed and the answer goes out as an ephemeral follow-up."""
        if deferred_public:
            await interaction.delete_original_response()
        await interaction.followup.send(content(reply, locale_of(interaction)), ephemeral=True)

    # ------------------------------------------------------------------ job events

    async def on_event(self, event: JobEvent) -> None:
        if self.client.is_closed():  # stopping: a result waits for the next start
            if event.is_final:
                raise ConnectionError(f"Discord is disconnected; job {event.job_id} waits")
            return
        if event.kind is EventKind.QUEUED:
            await self._post_queued(event)
            return
        target = StatusMessage.parse(event.status_message)
        rendered = render_event(event)
        if target is None:
            if event.is_final:  # the QUEUED message was never posted: answer in the channel
                await self._send_to_channel(event, rendered)
            return
        await self._edit(target, rendered, event.locale)
        if event.is_final:
            self._webhooks.pop(target.message_id, None)

    async def _post_queued(self, event: JobEvent) -> None:
        waiting = self._waiting.pop(event.origin.message or "", None)
        if waiting is None:
            return
        interaction = waiting.interaction
        text = content(event.reply, event.locale)
        if waiting.edit_original:
            message: discord.Message = await interaction.edit_original_response(content=text)
        else:
            message = await interaction.followup.send(text, wait=True)
        expires = time.monotonic() + TOKEN_SECONDS
        self._webhooks[message.id] = Webhook(interaction.application_id, interaction.token, expires)
        channel = interaction.channel_id or int(event.origin.chat)
        self.service.bind_status_message(event.job_id, StatusMessage(channel, message.id).encode())

    async def _edit(self, target: StatusMessage, rendered: Rendered, locale: str) -> None:
        view = grid_view(rendered.buttons, locale)
        parts: dict[str, Any] = {"content": rendered.content, "attachments": list(rendered.files)}
        if view is not None:
            parts["view"] = view
        hook = self._webhooks.get(target.message_id)
        if hook is not None and hook.expires > time.monotonic():
            webhook = discord.Webhook.partial(hook.application_id, hook.token, client=self.client)
            await webhook.edit_message(target.message_id, **parts)
            return
        self._webhooks.pop(target.message_id, None)
        channel = self.client.get_partial_messageable(target.channel_id)
        await channel.get_partial_message(target.message_id).edit(**parts)

    async def _send_to_channel(self, event: JobEvent, rendered: Rendered) -> None:
        channel = self.client.get_partial_messageable(int(event.origin.chat))
        view = grid_view(rendered.buttons, event.locale)
        await channel.send(
            rendered.content,
            files=list(rendered.files),
            **({"view": view} if view is not None else {}),
        )


class EaselClient(discord.Client):
    """discord.Client with Easel's command tree and persistent buttons; no privileged intents."""

    def __init__(self, context: BotContext, guild_ready_timeout: float = 2.0) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=guild_ready_timeout)
        self.tree = app_commands.CommandTree(self)
        self.front_end = DiscordFrontEnd(context, self)
        add_commands(self.tree, self.front_end)
        add_core_commands(self.tree, context)
        add_context_menus(self.tree, self.front_end)
        add_admin_commands(self.tree, context)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(GridButton, SettingSelect)
        await self.tree.set_translator(CatalogTranslator())

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        remix = submitted(interaction)
        if remix is not None:
            await self.front_end.remix_submitted(interaction, *remix)


def add_commands(tree: app_commands.CommandTree[Any], front_end: DiscordFrontEnd) -> None:
    add_imagine(tree, front_end)
