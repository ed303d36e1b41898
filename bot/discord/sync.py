"""`easel discord commands` and `easel discord sync`: the slash commands as Discord gets them.

Both build the same command tree as the running bot, with the same translator, but answer no
interaction: the tree's handlers are never called here, so no job service is started.
"""

from __future__ import annotations

from typing import Any, cast

import discord

from bot.core.frontend import BotContext
from bot.core.service import JobService
from bot.discord import endpoints
from bot.discord.client import EaselClient
from bot.discord.translator import CatalogTranslator
from bot.settings import Settings
from pipeline.validation import Limits


class NotServing:
    """The service of a tree that is only listed or synced: any use of it is a mistake."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"commands are only listed or synced here (service.{name}); easel run")


def listing_client(limits: Limits) -> EaselClient:
    """The bot's command tree, with /imagine's bounds from `limits` (the settings')."""
    return EaselClient(BotContext(cast(JobService, NotServing())), limits=limits)


async def command_payload(limits: Limits) -> list[dict[str, Any]]:
    """The JSON that a sync sends: every command, with its Korean names and descriptions."""
    client = listing_client(limits)
    translator = CatalogTranslator()
    await client.tree.set_translator(translator)
    return [
        await command.get_translated_payload(client.tree, translator)
        for command in client.tree.get_commands()
    ]


async def sync_commands(settings: Settings, guild: int | None = None) -> int:
    """Log in with DISCORD_TOKEN (no gateway) and sync the commands globally or to one guild;
    the number of commands synced."""
    if settings.discord_token is None:
        raise ValueError("DISCORD_TOKEN is not set")
    with endpoints(settings):
        client = listing_client(settings.limits())
        async with client:
            await client.login(settings.discord_token.get_secret_value())
            target = discord.Object(id=guild) if guild is not None else None
            if target is not None:  # the commands are global ones: a guild gets a copy
                client.tree.copy_global_to(guild=target)
            synced = await client.tree.sync(guild=target)
    return len(synced)


def sync_note(count: int, guild: int | None) -> str:
    if guild is None:
        return (
            f"Synced {count} commands globally; Discord can take up to an hour to show them "
            "everywhere (a guild sync with --guild shows at once)."
        )
    return f"Synced {count} commands to guild {guild}; they show at once there."
