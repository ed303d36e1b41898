"""Korean command and option descriptions for Discord, from the core's message catalogs.

A description is given to discord.py as `locale_str(english, key=<catalog key>)`; the
translator renders that key from the Korean catalog when discord.py builds the synced payload,
so Discord shows Korean descriptions to Korean clients. Command and option names stay English:
Discord requires them to match `^[-_\\p{L}\\p{N}]{1,32}$` in lower case, and one name per
command keeps the flags typed in prompts and the help text the same everywhere.
"""

from __future__ import annotations

import discord
from discord import app_commands

from bot.core.messages import Key, Message

MAX_DESCRIPTION = 100  # Discord's limit on command and option descriptions
KEY = "key"  # the locale_str extra that names the catalog key
_DESCRIPTIONS = frozenset(
    {
        app_commands.TranslationContextLocation.command_description,
        app_commands.TranslationContextLocation.group_description,
        app_commands.TranslationContextLocation.parameter_description,
    }
)
_LOCALES = {discord.Locale.korean: "ko"}


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def described(key: Key) -> app_commands.locale_str:
    """A description in English that the translator can render in the other catalogs."""
    return app_commands.locale_str(cut(Message(key).render("en"), MAX_DESCRIPTION), **{KEY: key})


class CatalogTranslator(app_commands.Translator):
    """Descriptions that name a catalog key, in the catalogs' other languages."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        language = _LOCALES.get(locale)
        key = string.extras.get(KEY)
        if language is None or key is None or context.location not in _DESCRIPTIONS:
            return None
        return cut(Message(Key(key)).render(language), MAX_DESCRIPTION)
