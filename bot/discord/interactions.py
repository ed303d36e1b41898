"""Who asks, from where, and in which language: a Discord interaction in the core's terms."""

from __future__ import annotations

from typing import Any

import discord

from bot.core.events import Origin, UserRef
from bot.core.messages import normalise_locale

PLATFORM = "discord"


def user_ref(interaction: discord.Interaction[Any]) -> UserRef:
    user = interaction.user
    return UserRef(PLATFORM, str(user.id), user.display_name, str(interaction.locale))


def origin_of(interaction: discord.Interaction[Any]) -> Origin:
    return Origin(PLATFORM, str(interaction.channel_id), str(interaction.id), adult_ok(interaction))


def adult_ok(interaction: discord.Interaction[Any]) -> bool | None:
    """A server channel's age-restricted flag (a thread has its parent's); None in DMs and
    group DMs, where Discord has no such flag and the chat's setting decides."""
    channel = interaction.channel
    if isinstance(channel, discord.DMChannel | discord.GroupChannel):
        return None
    is_nsfw = getattr(channel, "is_nsfw", None)
    if callable(is_nsfw):
        return bool(is_nsfw())
    return None


def locale_of(interaction: discord.Interaction[Any]) -> str:
    return normalise_locale(str(interaction.locale))
