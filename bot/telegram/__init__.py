"""The Telegram front end (python-telegram-bot): /imagine, live progress, the grid with its
buttons.

`serve` runs the bot with `TELEGRAM_TOKEN` inside Easel's own event loop (`async with
application`, `start()`, the updater; `run_polling()` would take the loop over), by long
polling, or by a webhook when `EASEL_TELEGRAM_WEBHOOK_URL` is set. `EASEL_TELEGRAM_API_URL`
points it at a self-hosted Bot API server (or a test's fake).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from urllib.parse import urlsplit

from telegram import Update
from telegram.error import InvalidToken, TelegramError
from telegram.ext import Application

from bot.core.frontend import BotContext
from bot.logs import keep_secret
from bot.settings import Settings
from bot.telegram.app import (
    TelegramFrontEnd,
    add_fallbacks,
    add_handlers,
    build_application,
    log_error,
)
from bot.telegram.logs import token_kept_out
from bot.telegram.people import PLATFORM
from bot.telegram.picker import add_picker
from pipeline.errors import EaselError

__all__ = ["PLATFORM", "check_token", "serve"]
log = logging.getLogger(__name__)
REFUSED = "Telegram refused TELEGRAM_TOKEN: check it with @BotFather (/mybots, API Token)."
SEND_GRACE_S = 30.0  # how long a stop waits for job messages being sent


def front_end(context: BotContext, settings: Settings) -> TelegramFrontEnd:
    """The application with all of Easel's handlers, ready to start."""
    application = build_application(settings)
    application.bot_data["commands"] = context.commands
    front = TelegramFrontEnd(context, application, settings)
    add_picker(application, context)  # first: /style is also in the registry's names
    add_handlers(application, front)
    add_fallbacks(application, front)  # last: what no other handler took
    application.add_error_handler(log_error)
    return front


async def check_token(settings: Settings) -> None:
    """getMe with TELEGRAM_TOKEN (what the bot's start does first): a refused token is said
    before anything slow is loaded."""
    assert settings.telegram_token is not None
    token = settings.telegram_token.get_secret_value()
    with token_kept_out(token):
        bot = build_application(settings).bot
        try:
            async with bot:  # initialize() calls getMe
                pass
        except InvalidToken:
            raise EaselError(REFUSED) from None
        except TelegramError as error:  # its text may hold the URL, token and all
            reason = str(error).replace(token, "<TELEGRAM_TOKEN>")
            raise EaselError(
                f"Telegram could not be asked about TELEGRAM_TOKEN: {reason}"
            ) from None


async def serve(context: BotContext, settings: Settings, stop: asyncio.Event) -> None:
    """Run the Telegram bot until `stop` is set."""
    assert settings.telegram_token is not None
    with token_kept_out(settings.telegram_token.get_secret_value()):
        front = front_end(context, settings)
        try:
            await run(front, settings, stop)
        except InvalidToken:
            # PTB's own message quotes the token.
            raise EaselError(REFUSED) from None


async def run(front: TelegramFrontEnd, settings: Settings, stop: asyncio.Event) -> None:
    application = front.application
    async with application:
        if application.post_init is not None:  # run_polling would await it; here it is ours
            await application.post_init(application)
        context = front.context
        context.service.subscribe(PLATFORM, front.messages.on_event, previews=True)
        await _start_updates(application, settings)
        await application.start()
        front.messages.open = True
        try:
            log.info("Telegram: running as @%s", application.bot.username)
            await context.service.deliver_missed(PLATFORM)
            await stop.wait()
        finally:
            await front.messages.close(SEND_GRACE_S)
            assert application.updater is not None
            if application.updater.running:
                await application.updater.stop()
            await application.stop()


async def _start_updates(application: Application, settings: Settings) -> None:  # type: ignore[type-arg]
    """Long polling, or the webhook server when EASEL_TELEGRAM_WEBHOOK_URL is set (with its
    secret token, generated when EASEL_TELEGRAM_WEBHOOK_SECRET is unset)."""
    updater = application.updater
    assert updater is not None
    if settings.telegram_webhook_url is None:
        await updater.start_polling(allowed_updates=Update.ALL_TYPES)
        return
    secret = (
        settings.telegram_webhook_secret.get_secret_value()
        if settings.telegram_webhook_secret is not None
        else secrets.token_urlsafe(32)
    )
    keep_secret(secret, "<EASEL_TELEGRAM_WEBHOOK_SECRET>")  # a generated one is masked too
    await updater.start_webhook(
        listen=settings.telegram_webhook_listen,
        port=settings.telegram_webhook_port,
        url_path=urlsplit(settings.telegram_webhook_url).path.lstrip("/"),
        webhook_url=settings.telegram_webhook_url,
        secret_token=secret,
        allowed_updates=Update.ALL_TYPES,
    )
