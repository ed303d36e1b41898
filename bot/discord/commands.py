"""Easel's slash commands besides `/imagine`: /history, /info, /cancel, /queue, /help, /settings
and /pnginfo. Each maps its options to one core call and answers the asker alone (ephemeral),
in the interaction's language, with the core's reply; refusals and errors read the same way.
Names and descriptions come from the core's command registry; both carry their catalog key,
which the client's translator (bot/discord/translator.py) renders in Korean (`/기록`, `/취소`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands

from bot.core.commands import Command, CommandRegistry
from bot.core.errors import run_guarded
from bot.core.events import Reply, UserRef
from bot.core.frontend import BotContext
from bot.core.messages import Key
from bot.core.router import parse_settings
from bot.core.service import JobService
from bot.core.work import prompt_preview
from bot.discord.interactions import PLATFORM, locale_of, origin_of, user_ref
from bot.discord.render import content
from bot.discord.setting_menus import PER_PAGE, settings_text, settings_view
from bot.discord.translator import cut, described, named

MAX_CHOICES = 25  # and on autocomplete choices, and their names' length
MAX_CHOICE_NAME = 100

Interaction = discord.Interaction[Any]
# The commands' and their options' names as catalog keys: the English catalog holds the
# registry's name, the Korean one what Korean clients see.
COMMAND_NAMES = {
    "history": Key.NAME_HISTORY,
    "info": Key.NAME_INFO,
    "cancel": Key.NAME_CANCEL,
    "queue": Key.NAME_QUEUE,
    "help": Key.NAME_HELP,
    "settings": Key.NAME_SETTINGS,
    "pnginfo": Key.NAME_PNGINFO,
}
ARGUMENT_NAMES = {
    "page": Key.NAME_PAGE,
    "job": Key.NAME_JOB,
    "changes": Key.NAME_CHANGES,
    "image": Key.NAME_IMAGE,
}


class CoreCommands:
    """The commands' handlers: one core call each, answered privately."""

    def __init__(self, context: BotContext) -> None:
        self.service = context.service
        self.registry = context.commands

    async def answer(
        self, interaction: Interaction, name: str, call: Callable[[UserRef], Awaitable[Reply]]
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        user = user_ref(interaction)
        reply = await run_guarded(call(user), f"discord /{name}", user)
        await interaction.followup.send(content(reply, locale_of(interaction)), ephemeral=True)

    async def job_choices(
        self, interaction: Interaction, typed: str
    ) -> list[app_commands.Choice[int]]:
        """The asker's own queued and running jobs whose label holds what they typed."""
        labels = (
            (job.id, cut(f"#{job.id} {prompt_preview(job)}", MAX_CHOICE_NAME))
            for job in await self.service.active_jobs(user_ref(interaction))
        )
        wanted = typed.strip().lstrip("#").lower()
        return [
            app_commands.Choice(name=label, value=job_id)
            for job_id, label in labels
            if wanted in label.lower()
        ][:MAX_CHOICES]


async def show_settings(interaction: Interaction, service: JobService) -> None:
    """The saved defaults, with a select menu for each of those that have one."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    user, locale = user_ref(interaction), locale_of(interaction)

    async def shown() -> tuple[str, discord.ui.View]:
        text = settings_text(await service.settings(user), locale)
        return text, settings_view(await service.setting_menus(user, PER_PAGE), locale)

    result = await run_guarded(shown(), "discord /settings", user)
    if isinstance(result, Reply):  # unexpected: the reference to quote
        await interaction.followup.send(content(result, locale), ephemeral=True)
        return
    text, view = result
    await interaction.followup.send(text, view=view, ephemeral=True)


def _command(registry: CommandRegistry, name: str) -> Command:
    command = registry.find(name, PLATFORM)
    if command is None:
        raise LookupError(f"/{name} is not offered on Discord")
    return command


def _arguments(command: Command) -> dict[str, app_commands.locale_str]:
    return {argument.name: described(argument.description) for argument in command.arguments}


def command_name(name: str) -> app_commands.locale_str:
    return named(COMMAND_NAMES[name])


def argument_names(command: Command) -> dict[str, app_commands.locale_str]:
    """`app_commands.rename`'s argument: each option's name, translatable."""
    return {argument.name: named(ARGUMENT_NAMES[argument.name]) for argument in command.arguments}


def add_core_commands(tree: app_commands.CommandTree[Any], context: BotContext) -> None:
    """Add the registry's commands that Discord offers, besides /imagine, to `tree`."""
    handlers = CoreCommands(context)
    service, registry = handlers.service, handlers.registry

    def about(name: str) -> tuple[app_commands.locale_str, dict[str, app_commands.locale_str]]:
        command = _command(registry, name)
        return described(command.description), _arguments(command)

    def renamed(name: str) -> dict[str, app_commands.locale_str]:
        return argument_names(_command(registry, name))

    description, options = about("history")

    @tree.command(name=command_name("history"), description=description)
    @app_commands.rename(**renamed("history"))
    @app_commands.describe(**options)
    async def history(
        interaction: Interaction, page: app_commands.Range[int, 1] | None = None
    ) -> None:
        async def call(user: UserRef) -> Reply:
            return await service.history(user, page or 1)

        await handlers.answer(interaction, "history", call)

    description, options = about("info")

    @tree.command(name=command_name("info"), description=description)
    @app_commands.rename(**renamed("info"))
    @app_commands.describe(**options)
    async def info(interaction: Interaction, job: app_commands.Range[int, 1]) -> None:
        async def call(user: UserRef) -> Reply:
            return await service.info(job, user, origin_of(interaction))

        await handlers.answer(interaction, "info", call)

    description, options = about("cancel")

    @tree.command(name=command_name("cancel"), description=description)
    @app_commands.rename(**renamed("cancel"))
    @app_commands.describe(**options)
    async def cancel(interaction: Interaction, job: app_commands.Range[int, 1]) -> None:
        async def call(user: UserRef) -> Reply:
            return await service.cancel(user, job, origin_of(interaction))

        await handlers.answer(interaction, "cancel", call)

    @cancel.autocomplete("job")
    async def cancel_choices(
        interaction: Interaction, typed: str
    ) -> list[app_commands.Choice[int]]:
        return await handlers.job_choices(interaction, typed)

    description, _ = about("queue")

    @tree.command(name=command_name("queue"), description=description)
    async def queue(interaction: Interaction) -> None:
        async def call(user: UserRef) -> Reply:
            return await service.queue_status(user)

        await handlers.answer(interaction, "queue", call)

    description, _ = about("help")

    @tree.command(name=command_name("help"), description=description)
    async def help_(interaction: Interaction) -> None:
        async def call(user: UserRef) -> Reply:
            return registry.help(PLATFORM, (await service.user(user)).role)

        await handlers.answer(interaction, "help", call)

    description, options = about("settings")

    @tree.command(name=command_name("settings"), description=description)
    @app_commands.rename(**renamed("settings"))
    @app_commands.describe(**options)
    async def settings(interaction: Interaction, changes: str | None = None) -> None:
        if changes is None or not changes.strip():
            await show_settings(interaction, service)
            return

        async def call(user: UserRef) -> Reply:
            return await service.update_settings(user, parse_settings(changes))

        await handlers.answer(interaction, "settings", call)

    description, options = about("pnginfo")

    @tree.command(name=command_name("pnginfo"), description=description)
    @app_commands.rename(**renamed("pnginfo"))
    @app_commands.describe(**options)
    async def pnginfo(interaction: Interaction, image: discord.Attachment) -> None:
        async def call(user: UserRef) -> Reply:
            return await service.pnginfo(await image.read())

        await handlers.answer(interaction, "pnginfo", call)
