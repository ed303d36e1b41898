"""Korean names and descriptions for Discord's commands, from the core's message catalogs.

A name or description is given to discord.py as `locale_str(english, key=<catalog key>)`
(`named` and `described` make them); the translator renders that key from the Korean catalog
when discord.py builds the synced payload, so Korean clients see `/그리기` with `프롬프트` and
Korean descriptions, while the command still arrives under its English name. This covers
command, group, option, context-menu and choice names and command, group and option
descriptions.

Discord's rules for the names (its "Application Command Naming"): slash command, group and
option names match `^[-_'\\p{L}\\p{N}\\p{sc=Deva}\\p{sc=Thai}]{1,32}$` and use the lower-case
form of any letter that has one (Hangul letters are \\p{L} and have no case: `그리기` is a
valid name); context-menu names are 1-32 characters of any case and may hold spaces; choice
names are 1-100 characters. A localized name that breaks them makes Discord refuse the whole
sync (50035), so the catalogs' Korean names are checked by the tests, not mended here.

The flags typed in prompts (`--style`, `--ar`) stay English whatever the command is called.
"""

from __future__ import annotations

import discord
from discord import app_commands

from bot.core.messages import Key, Message

MAX_DESCRIPTION = 100  # Discord's limit on command and option descriptions
MAX_CHOICE_NAME = 100
KEY = "key"  # the locale_str extra that names the catalog key
Location = app_commands.TranslationContextLocation
_DESCRIPTIONS = frozenset(
    {Location.command_description, Location.group_description, Location.parameter_description}
)
_NAMES = frozenset({Location.command_name, Location.group_name, Location.parameter_name})
_LOCALES = {discord.Locale.korean: "ko"}


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def described(key: Key) -> app_commands.locale_str:
    """A description in English that the translator can render in the other catalogs."""
    return app_commands.locale_str(cut(Message(key).render("en"), MAX_DESCRIPTION), **{KEY: key})


def named(key: Key) -> app_commands.locale_str:
    """A command, group, option, context-menu or choice name: the English catalog's text (the
    name Discord sends back in interactions), rendered in the other catalogs for their
    clients."""
    return app_commands.locale_str(Message(key).render("en"), **{KEY: key})


class CatalogTranslator(app_commands.Translator):
    """Names and descriptions that name a catalog key, in the catalogs' other languages."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        language = _LOCALES.get(locale)
        key = string.extras.get(KEY)
        if language is None or key is None:
            return None
        text = Message(Key(key)).render(language)
        if context.location in _DESCRIPTIONS:
            return cut(text, MAX_DESCRIPTION)
        if context.location is Location.choice_name:
            return cut(text, MAX_CHOICE_NAME)
        if context.location in _NAMES:
            return text
        return None
