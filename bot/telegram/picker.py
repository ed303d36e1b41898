"""Telegram's `/style` picker: the settings with a menu (style, shot, lighting, quality,
aspect) as inline keyboards on one message, which every press edits in place.

`/style` sends a summary of the user's defaults with a button per setting; a setting's button
shows its values a page at a time (with ‹ › to turn pages, "(not set)" and Back); a value's
button saves it through the core's `update_settings`, the same as `/settings name=value`, and
shows the summary again. Labels are in the presser's Telegram language.

Everything a button needs is in its callback_data (`easel:pk:<owner>:<action>...`, ASCII, at
most 64 bytes), so the buttons of an old message keep working after a restart. A value is named
by a short hash of its id, not the id itself (ids can be long) nor its place in the list (a
reloaded vocabulary may move it): a hash that matches nothing any more is "out of date".
`owner` is the Telegram user who opened the picker; anyone else's press is refused privately.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from telegram import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes

from bot.core.errors import run_guarded
from bot.core.events import Reply, UserRef
from bot.core.frontend import BotContext
from bot.core.messages import Key, Message
from bot.core.service import JobService
from bot.core.setting_choices import CLEAR, MENU_SETTINGS, SettingMenu, setting_choices
from bot.telegram.people import locale_of, user_ref

COMMAND = "style"
PREFIX = "easel:pk:"
PATTERN = r"^easel:pk:"
MAX_CALLBACK_DATA_BYTES = 64  # Bot API, InlineKeyboardButton.callback_data
MAX_ANSWER_LENGTH = 200  # Bot API, answerCallbackQuery.text
PER_PAGE = 12  # values a page: six rows of two, or four of three
SHORT_LABEL = 12  # labels this short go three to a row
DIGEST_BYTES = 5  # 10 hex digits: no clash among a menu's few dozen values
CHECK = "✓ "
PREVIOUS, NEXT = "‹", "›"

# One letter per setting in callback_data; the letters must never change meaning, since old
# messages keep their buttons.
CODES = {"style": "y", "shot": "h", "lighting": "l", "quality": "q", "aspect_ratio": "a"}
SETTINGS_BY_CODE = {code: name for name, code in CODES.items()}
assert set(CODES) == set(MENU_SETTINGS)

# Actions in callback_data.
SUMMARY = "m"  # easel:pk:<owner>:m
OPEN = "o"  # easel:pk:<owner>:o:<code>[:<page>] (no page: the one holding the saved value)
PICK = "v"  # easel:pk:<owner>:v:<code>:<digest>
UNSET = "c"  # easel:pk:<owner>:c:<code>

T = TypeVar("T")


# -- callback_data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Press:
    """What a picker button asks for, read back from its callback_data."""

    owner: int
    action: str
    setting: str | None = None
    page: int | None = None
    digest: str | None = None

    def data(self) -> str:
        parts = [PREFIX + str(self.owner), self.action]
        if self.setting is not None:
            parts.append(CODES[self.setting])
        if self.page is not None:
            parts.append(str(self.page))
        if self.digest is not None:
            parts.append(self.digest)
        data = ":".join(parts)
        if len(data.encode()) > MAX_CALLBACK_DATA_BYTES:
            raise ValueError(f"callback_data over {MAX_CALLBACK_DATA_BYTES} bytes: {data}")
        return data


def value_digest(value: str) -> str:
    return hashlib.blake2s(value.encode(), digest_size=DIGEST_BYTES).hexdigest()


def parse_press(data: str | None) -> Press | None:
    """The press a picker's callback_data stands for; None for anything malformed."""
    if not data or not data.startswith(PREFIX):
        return None
    owner, _, rest = data.removeprefix(PREFIX).partition(":")
    if not owner.isdigit() or len(owner) > 20:
        return None
    parts = rest.split(":")
    action, arguments = parts[0], parts[1:]
    if action == SUMMARY and not arguments:
        return Press(int(owner), SUMMARY)
    if not arguments or arguments[0] not in SETTINGS_BY_CODE:
        return None
    setting, extra = SETTINGS_BY_CODE[arguments[0]], arguments[1:]
    if action == OPEN and not extra:
        return Press(int(owner), OPEN, setting)
    if action == OPEN and len(extra) == 1 and extra[0].isdigit() and len(extra[0]) <= 3:
        return Press(int(owner), OPEN, setting, page=int(extra[0]))
    if action == PICK and len(extra) == 1 and _is_digest(extra[0]):
        return Press(int(owner), PICK, setting, digest=extra[0])
    if action == UNSET and not extra:
        return Press(int(owner), UNSET, setting)
    return None


def _is_digest(text: str) -> bool:
    return len(text) == 2 * DIGEST_BYTES and all(c in "0123456789abcdef" for c in text)


# -- what the message shows ---------------------------------------------------------------------


def setting_title(menu: SettingMenu, locale: str) -> str:
    title = menu.title
    return title.render(locale) if isinstance(title, Message) else title.in_locale(locale)


def current_value(menu: SettingMenu, locale: str) -> str:
    if menu.current_label is None:
        return Message(Key.SETTINGS_MENU_CLEAR).render(locale)
    return menu.current_label.in_locale(locale)


def summary_text(header: Message, menus: Sequence[SettingMenu], locale: str) -> str:
    """The user's defaults under `header` ("Your defaults" or "Saved. Your defaults")."""
    lines = [f"<b>{html.escape(header.render(locale))}</b>"]
    lines.extend(html.escape(_name_and_value(menu, locale)) for menu in menus)
    lines.extend(["", html.escape(Message(Key.PICKER_HINT).render(locale))])
    return "\n".join(lines)


def summary_keyboard(owner: int, menus: Sequence[SettingMenu], locale: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [[_button(_name_and_value(menu, locale), Press(owner, OPEN, menu.name))] for menu in menus]
    )


def page_text(menu: SettingMenu, locale: str) -> str:
    text = Message(
        Key.PICKER_CHOOSE,
        {
            "name": setting_title(menu, locale),
            "value": current_value(menu, locale),
            "page": menu.page + 1,
            "pages": menu.pages,
        },
    ).render(locale)
    return html.escape(text)


def page_keyboard(owner: int, menu: SettingMenu, locale: str) -> InlineKeyboardMarkup:
    """A page of values (two or three a row), ‹ › when there are more pages, then
    "(not set)" and Back."""
    labels = [choice.label.in_locale(locale) for choice in menu.choices]
    per_row = 3 if all(len(label) <= SHORT_LABEL for label in labels) else 2
    values = [
        _button(
            _checked(label, choice.value == menu.current),
            Press(owner, PICK, menu.name, digest=value_digest(choice.value)),
        )
        for label, choice in zip(labels, menu.choices, strict=True)
    ]
    rows = [values[i : i + per_row] for i in range(0, len(values), per_row)]
    turns = []
    if menu.page > 0:
        turns.append(_button(PREVIOUS, Press(owner, OPEN, menu.name, page=menu.page - 1)))
    if menu.page + 1 < menu.pages:
        turns.append(_button(NEXT, Press(owner, OPEN, menu.name, page=menu.page + 1)))
    if turns:
        rows.append(turns)
    unset = _checked(Message(Key.SETTINGS_MENU_CLEAR).render(locale), menu.current is None)
    rows.append(
        [
            _button(unset, Press(owner, UNSET, menu.name)),
            _button(Message(Key.PICKER_BACK).render(locale), Press(owner, SUMMARY)),
        ]
    )
    return InlineKeyboardMarkup(rows)


def _name_and_value(menu: SettingMenu, locale: str) -> str:
    return Message(
        Key.SETTINGS_MENU_PLACEHOLDER,
        {"name": setting_title(menu, locale), "value": current_value(menu, locale)},
    ).render(locale)


def _checked(label: str, chosen: bool) -> str:
    return CHECK + label if chosen else label


def _button(text: str, press: Press) -> InlineKeyboardButton:
    return InlineKeyboardButton(text, callback_data=press.data())


def _short(text: str) -> str:
    return text if len(text) <= MAX_ANSWER_LENGTH else text[: MAX_ANSWER_LENGTH - 1] + "…"


# -- the handlers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Screen:
    """A picker message as it should look now."""

    text: str
    keyboard: InlineKeyboardMarkup


class Picker:
    def __init__(self, service: JobService) -> None:
        self.service = service

    async def command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """`/style`: the summary, as a new message."""
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        ref, locale = user_ref(user), locale_of(user)
        shown = await self._guarded(self._summary(user.id, ref, None, locale), ref)
        if isinstance(shown, Reply):
            await message.reply_text(html.escape(shown.text(locale)), parse_mode=ParseMode.HTML)
            return
        await message.reply_text(shown.text, parse_mode=ParseMode.HTML, reply_markup=shown.keyboard)

    async def press(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A picker button: answered at once, then the same message redrawn."""
        query = update.callback_query
        if query is None:
            return
        user, locale = query.from_user, locale_of(query.from_user)
        press = parse_press(query.data)
        if press is None:
            await query.answer(Message(Key.PICKER_STALE).render(locale), show_alert=True)
            return
        if press.owner != user.id:
            await query.answer(Message(Key.PICKER_NOT_YOURS).render(locale), show_alert=True)
            return
        ref = user_ref(user)
        if press.action == SUMMARY:
            await self._show(query, self._summary(user.id, ref, None, locale), ref)
        elif press.action == OPEN:
            await self._show(query, self._page(press, ref, locale), ref)
        else:
            await self._save(query, press, ref, locale)

    async def _show(self, query: CallbackQuery, draw: Awaitable[Screen], ref: UserRef) -> None:
        shown = await self._guarded(draw, ref)
        if isinstance(shown, Reply):
            await query.answer(_short(shown.text(locale_of(query.from_user))), show_alert=True)
            return
        await query.answer()
        await _edit(query, shown)

    async def _save(self, query: CallbackQuery, press: Press, ref: UserRef, locale: str) -> None:
        assert press.setting is not None
        setting = press.setting
        value = CLEAR if press.action == UNSET else self._value(setting, press.digest)
        if value is None:  # the vocabulary changed since the message was drawn
            await query.answer(Message(Key.PICKER_STALE).render(locale))
            stale = Press(press.owner, OPEN, setting)
            shown = await self._guarded(self._page(stale, ref, locale), ref)
            if not isinstance(shown, Reply):
                await _edit(query, shown)
            return

        async def saved() -> tuple[Screen, str]:
            reply = await self.service.update_settings(ref, {setting: value})
            screen = await self._summary(press.owner, ref, reply.message, locale)
            menu = await self._menu(ref, setting)
            toast = Message(
                Key.PICKER_SAVED,
                {"name": setting_title(menu, locale), "value": current_value(menu, locale)},
            ).render(locale)
            return screen, toast

        done = await self._guarded(saved(), ref)
        if isinstance(done, Reply):  # refused (a bad value, a ban) or failed: nothing changed
            await query.answer(_short(done.text(locale)), show_alert=True)
            return
        screen, toast = done
        await query.answer(_short(toast))
        await _edit(query, screen)

    async def _summary(
        self, owner: int, ref: UserRef, header: Message | None, locale: str
    ) -> Screen:
        if header is None:
            header = (await self.service.settings(ref)).message
        menus = await self.service.setting_menus(ref, PER_PAGE)
        return Screen(summary_text(header, menus, locale), summary_keyboard(owner, menus, locale))

    async def _page(self, press: Press, ref: UserRef, locale: str) -> Screen:
        assert press.setting is not None
        menu = await self._menu(ref, press.setting, press.page)
        return Screen(page_text(menu, locale), page_keyboard(press.owner, menu, locale))

    async def _menu(self, ref: UserRef, setting: str, page: int | None = None) -> SettingMenu:
        pages = {setting: page} if page is not None else None
        menus = await self.service.setting_menus(ref, PER_PAGE, pages)
        return next(menu for menu in menus if menu.name == setting)

    def _value(self, setting: str, digest: str | None) -> str | None:
        choices = setting_choices(setting, self.service.vocabulary())
        return next((c.value for c in choices if value_digest(c.value) == digest), None)

    async def _guarded(self, work: Awaitable[T], ref: UserRef) -> T | Reply:
        """`work`'s result, or the core's answer when it refuses or fails (logged there)."""
        return await run_guarded(work, "telegram /style picker", ref)


async def _edit(query: CallbackQuery, screen: Screen) -> None:
    try:
        await query.edit_message_text(
            screen.text, parse_mode=ParseMode.HTML, reply_markup=screen.keyboard
        )
    except BadRequest as error:
        # Two quick presses of the same button redraw the same thing: nothing to change.
        if "message is not modified" not in error.message.lower():
            raise


def add_picker(application: Application[Any, Any, Any, Any, Any, Any], context: BotContext) -> None:
    """Register `/style` and the picker's buttons (callback_data `easel:pk:...`)."""
    picker = Picker(context.service)
    application.add_handler(CommandHandler(COMMAND, picker.command))
    application.add_handler(CallbackQueryHandler(picker.press, pattern=PATTERN))
