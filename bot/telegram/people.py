"""Who asks, from where, and in which language: Telegram's users and messages in the core's
terms."""

from __future__ import annotations

from telegram import Message, User

from bot.core.events import Origin, UserRef
from bot.core.messages import normalise_locale

PLATFORM = "telegram"


def user_ref(user: User) -> UserRef:
    return UserRef(PLATFORM, str(user.id), user.full_name, user.language_code)


def locale_of(user: User) -> str:
    return normalise_locale(user.language_code)


def origin_of(message: Message) -> Origin:
    return Origin(PLATFORM, str(message.chat_id), str(message.message_id))
