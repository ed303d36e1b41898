"""`/settings` as select menus: one per setting (style, shot, lighting, quality, aspect), each
a persistent component on `easel:set:<name>:<page>`, so the menus on an old message keep
working after a restart. A select holds at most 25 options: a "not set" option, then up to
22 values, and "Back…" / "More…" options that turn the menu to another page; picking a value
saves it through the core's `update_settings` and redraws the message."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.core.errors import run_guarded
from bot.core.events import Reply
from bot.core.messages import Key, Message
from bot.core.setting_choices import CLEAR, MENU_SETTINGS, SettingMenu
from bot.discord.interactions import locale_of, user_ref
from bot.discord.render import content
from bot.discord.translator import cut

if TYPE_CHECKING:
    from bot.core.service import JobService
    from bot.discord.client import EaselClient

# Only the settings that have a menu: any other id is left to the unclaimed-press answer.
TEMPLATE = rf"easel:set:(?P<name>{'|'.join(MENU_SETTINGS)}):(?P<page>[0-9]{{1,3}})"
PER_PAGE = 22  # 25 options a select: "not set", back and more take three
MAX_LABEL = 100
MAX_PLACEHOLDER = 150
_PAGE = "page:"  # an option that turns the menu to another page


class SettingSelect(discord.ui.DynamicItem[discord.ui.Select[Any]], template=TEMPLATE):
    def __init__(self, menu: SettingMenu | None, locale: str, name: str, page: int) -> None:
        select: discord.ui.Select[Any] = discord.ui.Select(custom_id=f"easel:set:{name}:{page}")
        if menu is not None:
            select.placeholder = _placeholder(menu, locale)
            select.options = _options(menu, locale)
        super().__init__(select)
        self.name = name

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> SettingSelect:
        return cls(None, locale_of(interaction), match["name"], int(match["page"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        client: EaselClient = interaction.client
        picked = self.item.values[0] if self.item.values else CLEAR
        await picked_setting(interaction, client.front_end.service, self.name, picked)


async def picked_setting(
    interaction: discord.Interaction[Any], service: JobService, name: str, picked: str
) -> None:
    """Turn a menu's page, or save the picked value; either way the message is redrawn."""
    user, locale = user_ref(interaction), locale_of(interaction)
    if name not in MENU_SETTINGS:
        return
    pages: dict[str, int] = {}
    if picked.startswith(_PAGE) and picked[len(_PAGE) :].isdigit():
        pages[name] = int(picked[len(_PAGE) :])

        async def shown() -> Reply:
            return await service.settings(user)

        call = shown()
    else:

        async def save() -> Reply:
            return await service.update_settings(user, {name: picked})

        call = save()
    reply = await run_guarded(call, "discord settings menu", user)
    if reply.message.key not in (Key.SETTINGS, Key.SETTINGS_UPDATED):  # refused: say why
        await interaction.response.send_message(content(reply, locale), ephemeral=True)
        return
    view = settings_view(await service.setting_menus(user, PER_PAGE, pages), locale)
    await interaction.response.edit_message(content=settings_text(reply, locale), view=view)


def settings_text(reply: Reply, locale: str) -> str:
    return content(
        Reply(reply.message, lines=(*reply.lines, Message(Key.SETTINGS_MENU_HINT))), locale
    )


def settings_view(menus: tuple[SettingMenu, ...], locale: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for row, menu in enumerate(menus[:5]):  # five rows a message
        select = SettingSelect(menu, locale, menu.name, menu.page)
        select.row = row
        view.add_item(select)
    return view


def _placeholder(menu: SettingMenu, locale: str) -> str:
    value = (
        menu.current_label.in_locale(locale)
        if menu.current_label is not None
        else Message(Key.SETTINGS_MENU_CLEAR).render(locale)
    )
    title = (
        menu.title.render(locale)
        if isinstance(menu.title, Message)
        else menu.title.in_locale(locale)
    )
    text = Message(Key.SETTINGS_MENU_PLACEHOLDER, {"name": title, "value": value}).render(locale)
    return cut(text, MAX_PLACEHOLDER)


def _options(menu: SettingMenu, locale: str) -> list[discord.SelectOption]:
    options = [
        discord.SelectOption(
            label=cut(Message(Key.SETTINGS_MENU_CLEAR).render(locale), MAX_LABEL),
            value=CLEAR,
            default=menu.current is None,
        )
    ]
    if menu.page > 0:
        options.append(_page_option(Key.SETTINGS_MENU_PREVIOUS, menu.page - 1, menu, locale))
    options.extend(
        discord.SelectOption(
            label=cut(choice.label.in_locale(locale), MAX_LABEL),
            value=choice.value,
            default=choice.value == menu.current,
        )
        for choice in menu.choices
    )
    if menu.page + 1 < menu.pages:
        options.append(_page_option(Key.SETTINGS_MENU_NEXT, menu.page + 1, menu, locale))
    return options


def _page_option(key: Key, page: int, menu: SettingMenu, locale: str) -> discord.SelectOption:
    label = Message(key, {"page": page + 1, "pages": menu.pages}).render(locale)
    return discord.SelectOption(label=cut(label, MAX_LABEL), value=f"{_PAGE}{page}")
