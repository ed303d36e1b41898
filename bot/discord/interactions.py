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
    return Origin(PLATFORM, str(interaction.channel_id), str(interaction.id))


def locale_of(interaction: discord.Interaction[Any]) -> str:
    return normalise_locale(str(interaction.locale))
