"""Presses of inline buttons. Every callback query is answered at once (Telegram shows a
spinner until it is), also for an expired, foreign or unknown button; then the press goes to
the core like a typed button id: `easel:<job>:U2` queues the child job, `easel:<job>:remix`
asks for the edited line. Everything a press needs is in the database, so buttons keep
working after a restart."""

from __future__ import annotations

import logging

from telegram import CallbackQuery, Update
from telegram.error import BadRequest
from telegram.ext import ContextTypes

from bot.core.events import Origin
from bot.core.messages import Key, Message, normalise_locale
from bot.core.router import TextRequest
from bot.telegram.incoming import Incoming
from bot.telegram.people import PLATFORM, user_ref

log = logging.getLogger(__name__)
GRID_BUTTONS = r"^easel:[0-9]+:"
MAX_ANSWER = 200  # answerCallbackQuery's text


class Presses:
    def __init__(self, incoming: Incoming) -> None:
        self.incoming = incoming

    async def on_grid_button(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or query.data is None:
            return
        await answer(query)
        message = query.message
        if message is None or not hasattr(message, "message_id"):
            return
        user = user_ref(query.from_user)
        locale = normalise_locale(query.from_user.language_code)
        origin = Origin(PLATFORM, str(message.chat.id), str(message.message_id))
        request = TextRequest(user, origin, query.data, plain_text_is_prompt=False)
        routed = await self.incoming.router.route(request)
        await self.incoming.show(
            query.get_bot(), message.chat.id, message.message_id, routed, locale
        )

    async def on_unknown_button(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        """Any other callback data: not a button Easel knows (an older version's, say)."""
        query = update.callback_query
        if query is None:
            return
        locale = normalise_locale(query.from_user.language_code)
        await answer(query, Message(Key.UNKNOWN_BUTTON).render(locale))


async def answer(query: CallbackQuery, text: str | None = None) -> None:
    """Answer the query; one Telegram no longer takes (too old) is logged and left."""
    try:
        await query.answer(text[:MAX_ANSWER] if text else None, show_alert=bool(text))
    except BadRequest as error:
        log.info("Callback query %s not answered: %s", query.id, error.message)
