"""The values a settings menu offers (style, shot, lighting, quality, aspect), page by page.

Shared by the chat front ends' pickers: Discord's select menus take at most 25 options, so a
longer list (the styles) is cut into pages, and the menu for a page says which page it is.
The values are the ids `/settings name=value` takes, so picking one goes through the same
`update_settings` as typing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.messages import Key, Localized, Message
from pipeline.prompts.vocabulary import CATEGORY_LABELS, Vocabulary

# The aspect ratios offered in menus and as /imagine's choices.
ASPECTS = ("1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9")
# The settings with a menu, by the names the store keeps them under.
MENU_SETTINGS = ("style", "shot", "lighting", "quality", "aspect_ratio")
CLEAR = "-"  # the value that clears a setting (`update_settings` reads it as "not set")


@dataclass(frozen=True)
class SettingChoice:
    value: str
    label: Localized


@dataclass(frozen=True)
class SettingMenu:
    """One page of a setting's choices; `current` is the saved value (None: not set)."""

    name: str
    title: Localized | Message
    choices: tuple[SettingChoice, ...]
    page: int  # 0-based
    pages: int
    current: str | None
    # The saved value as its menu names it (on whichever page it is); None: not set.
    current_label: Localized | None


def setting_choices(name: str, vocabulary: Vocabulary) -> tuple[SettingChoice, ...]:
    """Every value a setting's menu offers, in the vocabulary's order."""
    if name == "aspect_ratio":
        return tuple(SettingChoice(aspect, Localized(aspect, aspect)) for aspect in ASPECTS)
    if name not in MENU_SETTINGS:
        raise ValueError(f"{name} has no menu")
    return tuple(
        SettingChoice(entry.id, Localized(entry.en, entry.ko)) for entry in vocabulary.entries(name)
    )


def setting_title(name: str) -> Localized | Message:
    if name == "aspect_ratio":
        return Message(Key.SETTING_ASPECT)
    label = CATEGORY_LABELS[name]
    return Localized(label.en, label.ko)


def setting_menu(
    name: str,
    vocabulary: Vocabulary,
    current: str | None,
    per_page: int,
    page: int | None = None,
) -> SettingMenu:
    """The page `page` of a setting's menu; with none, the page that holds `current`."""
    choices = setting_choices(name, vocabulary)
    pages = max(1, -(-len(choices) // per_page))
    if page is None:
        index = next((i for i, c in enumerate(choices) if c.value == current), 0)
        page = index // per_page
    page = min(max(page, 0), pages - 1)
    shown = choices[page * per_page : (page + 1) * per_page]
    label = next((c.label for c in choices if c.value == current), None)
    if label is None and current is not None:
        label = Localized(current, current)
    return SettingMenu(name, setting_title(name), shown, page, pages, current, label)
