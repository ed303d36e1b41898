"""The Discord client: `/imagine`, button presses, modals, and job events as message edits.

Thin: options go to the core's parser, presses to `service.act`, and the core's replies and
events come back as Discord messages (bot/discord/delivery.py: the job's message, and where
its result goes when the interaction cannot take it; bot/discord/render.py: what it shows).

Every command may be used where the app is installed to a server or to a user, in servers,
in DMs with the bot and in private channels (group DMs): the tree's defaults say so (the
`/admin` group narrows them to servers).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import discord
from discord import app_commands

from bot.core.buttons import REMIX, parse_action
from bot.core.errors import run_guarded
from bot.core.events import JobEvent, Origin, Reply, Ticket, UserRef
from bot.core.frontend import BotContext
from bot.core.messages import Key, Message
from bot.discord.admin import add_admin_commands
from bot.discord.buttons import GridButton
from bot.discord.commands import add_core_commands
from bot.discord.delivery import JobMessages
from bot.discord.fallback import answer_unclaimed, report_command_error
from bot.discord.imagine import add_imagine, read_image
from bot.discord.interactions import locale_of, origin_of, user_ref
from bot.discord.menus import add_context_menus
from bot.discord.remix import fits, remix_modal, submitted
from bot.discord.render import content
from bot.discord.setting_menus import SettingSelect
from bot.discord.translator import CatalogTranslator
from pipeline.validation import Limits

# The persistent components whose presses this client answers (by custom_id template).
DYNAMIC_ITEMS = (GridButton, SettingSelect)


class DiscordFrontEnd:
    """What Easel does with Discord's interactions and the core's job events."""

    def __init__(self, context: BotContext, client: EaselClient) -> None:
        self.service = context.service
        self.client = client
        self.messages = JobMessages(context, client)

    # ------------------------------------------------------------------ interactions

    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        prompt: str,
        image: discord.Attachment | None = None,
        control_image: discord.Attachment | None = None,
        **fields: object,
    ) -> None:
        """Acknowledged first (Discord allows 3 s), then the attachments are read and the job
        queued; a refused attachment is told to the asker alone."""
        await interaction.response.defer(thinking=True)
        user, origin = user_ref(interaction), origin_of(interaction)
        typed = {name: value for name, value in fields.items() if value is not None}
        for field, attachment in (("init_image", image), ("control_image", control_image)):
            if attachment is None:
                continue
            read = await read_image(attachment)
            if isinstance(read, Reply):
                await self._tell_privately(interaction, read, deferred_public=True)
                return
            typed[field] = read

        async def queue() -> Ticket:
            options = await self.service.options(user, prompt, origin, **typed)
            return await self.service.imagine(user, options, origin)

        await self.queue(interaction, queue(), "discord /imagine", user, edit_original=True)

    async def press(self, interaction: discord.Interaction[Any], job_id: int, action: str) -> None:
        user, origin = user_ref(interaction), origin_of(interaction)
        chosen = parse_action(action)
        if chosen is not None and chosen.name == REMIX:
            await self._remix_line(interaction, user, job_id, origin)
            return
        await interaction.response.defer()
        call = self.service.act(user, job_id, action, origin)
        await self.queue(interaction, call, "discord button", user, edit_original=False, job=job_id)

    async def _remix_line(
        self, interaction: discord.Interaction[Any], user: UserRef, job_id: int, origin: Origin
    ) -> None:
        """The job's line in a modal to edit; a line too long for one is given to copy."""
        locale = locale_of(interaction)

        async def line() -> str:
            return await self.service.remix_line(user, job_id, origin)

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
        await self.messages.followups.send(interaction, content(reply, locale), ephemeral=True)

    async def remix_submitted(
        self, interaction: discord.Interaction[Any], job_id: int, line: str
    ) -> None:
        """The remix modal's edited line, queued as a new job under a new message; a bad
        line is told to the presser alone and queues nothing."""
        await interaction.response.defer()
        user, origin = user_ref(interaction), origin_of(interaction)
        call = self.service.remix(user, job_id, line, origin)
        await self.queue(interaction, call, "discord remix", user, edit_original=False, job=job_id)

    async def queue(
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
        self.messages.expect(interaction, edit_original)
        result = await run_guarded(call, what, user, job)
        if isinstance(result, Reply):
            self.messages.forget(interaction)
            await self._tell_privately(interaction, result, edit_original)

    async def _tell_privately(
        self, interaction: discord.Interaction[Any], reply: Reply, deferred_public: bool
    ) -> None:
        """An ephemeral answer. A deferred public answer stays public whatever is sent into
        it, so it is removed and the answer goes out as an ephemeral follow-up."""
        if deferred_public:
            await interaction.delete_original_response()
        text = content(reply, locale_of(interaction))
        await self.messages.followups.send(interaction, text, ephemeral=True)

    # ------------------------------------------------------------------ job events

    async def on_event(self, event: JobEvent) -> None:
        """A job event as Discord messages (bot/discord/delivery.py)."""
        await self.messages.on_event(event)


class EaselClient(discord.Client):
    """discord.Client with Easel's command tree and persistent components; no privileged
    intents."""

    def __init__(
        self, context: BotContext, guild_ready_timeout: float = 2.0, limits: Limits | None = None
    ) -> None:
        """`limits`: the bounds /imagine's options show; default: the job service's."""
        super().__init__(
            intents=discord.Intents.default(),
            guild_ready_timeout=guild_ready_timeout,
            # Nothing a prompt says pings anyone; a message that mentions its user says so.
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.tree = app_commands.CommandTree(
            self,
            allowed_installs=app_commands.AppInstallationType(guild=True, user=True),
            allowed_contexts=app_commands.AppCommandContext(
                guild=True, dm_channel=True, private_channel=True
            ),
        )
        self.tree.error(report_command_error)
        self.front_end = DiscordFrontEnd(context, self)
        add_imagine(self.tree, self.front_end, limits or context.service.config.limits)
        add_core_commands(self.tree, context)
        add_context_menus(self.tree, self.front_end)
        add_admin_commands(self.tree, context)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        await self.tree.set_translator(CatalogTranslator())

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        remix = submitted(interaction)
        if remix is not None:
            await self.front_end.remix_submitted(interaction, *remix)
            return
        await answer_unclaimed(interaction, DYNAMIC_ITEMS)
