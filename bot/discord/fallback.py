"""Answers for interactions that nothing else answers, so a user never sees Discord's bare
"This interaction failed".

- A press of a component, or a submitted modal, whose custom_id matches none of the client's
  persistent templates (a foreign or malformed id, a button of an older version): discord.py
  drops it silently, so it is answered here, privately, in the presser's language.
- An error that escapes a command's handler (discord.py reports it to the tree's error
  handler): logged once with its traceback under a reference, and the user is told only the
  reference.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import discord
from discord import app_commands

from bot.core.errors import log_unexpected, unexpected_reply
from bot.core.events import Reply
from bot.core.messages import Key, Message
from bot.discord.interactions import locale_of, user_ref
from bot.discord.remix import submitted
from bot.discord.render import content

Interaction = discord.Interaction[Any]
_PRESSES = (discord.InteractionType.component, discord.InteractionType.modal_submit)


def is_claimed(custom_id: str, dynamic_items: Iterable[type[discord.ui.DynamicItem[Any]]]) -> bool:
    """Whether one of the persistent items answers this custom_id."""
    return any(
        item.__discord_ui_compiled_template__.fullmatch(custom_id) is not None
        for item in dynamic_items
    )


async def answer_unclaimed(
    interaction: Interaction, dynamic_items: Iterable[type[discord.ui.DynamicItem[Any]]]
) -> None:
    """Answer a press or modal that no persistent item or modal handler takes."""
    if interaction.type not in _PRESSES or interaction.response.is_done():
        return
    custom_id = str((interaction.data or {}).get("custom_id", ""))
    if is_claimed(custom_id, dynamic_items) or submitted(interaction) is not None:
        return
    await _tell(interaction, Reply(Message(Key.UNKNOWN_BUTTON)))


async def report_command_error(
    interaction: Interaction, error: app_commands.AppCommandError
) -> None:
    """The tree's error handler: log with the traceback, tell the user the reference."""
    cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    command = interaction.command.qualified_name if interaction.command else "?"
    reference = log_unexpected(f"discord /{command}", user_ref(interaction), error=cause)
    await _tell(interaction, unexpected_reply(reference))


async def _tell(interaction: Interaction, reply: Reply) -> None:
    text = content(reply, locale_of(interaction))
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)
