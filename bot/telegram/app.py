"""The python-telegram-bot Application: where it talks to, its handlers, its command menus.

Handlers are added in two steps so that others can sit between them: `add_handlers` (the
commands, captions, plain lines and grid buttons), then, last, `add_fallbacks` (any other
callback data, and unknown commands in private chats). A handler added in between (the
`/style` picker's) is tried before the fallbacks.
"""

from __future__ import annotations

from telegram import BotCommand, Update
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.core.commands import CommandRegistry
from bot.core.errors import log_unexpected
from bot.core.frontend import BotContext
from bot.core.messages import DEFAULT_LOCALE, LOCALES
from bot.settings import Settings
from bot.store import Role
from bot.telegram.callbacks import GRID_BUTTONS, Presses
from bot.telegram.delivery import JobMessages
from bot.telegram.incoming import Incoming
from bot.telegram.people import PLATFORM, user_ref

# 429 answers are waited out (retry_after) and the request sent again, this many times.
FLOOD_RETRIES = 3
CONCURRENT_UPDATES = 16  # a slow download must not hold up everyone else's commands
_CAPTION_COMMAND = r"^/(imagine|pnginfo)(@\w+)?(\s|$)"


class TelegramFrontEnd:
    """Easel on one Telegram bot: incoming messages, presses, and job events."""

    def __init__(self, context: BotContext, application: Application, settings: Settings) -> None:  # type: ignore[type-arg]
        self.context = context
        self.application = application
        self.incoming = Incoming(context)
        self.presses = Presses(self.incoming)
        self.messages = JobMessages(context, application.bot, settings.telegram_group_interval)


def build_application(settings: Settings) -> Application:  # type: ignore[type-arg]
    """The Application for TELEGRAM_TOKEN, pointed at EASEL_TELEGRAM_API_URL when set, with
    flood control (AIORateLimiter) on; nothing is started."""
    assert settings.telegram_token is not None
    builder = (
        Application.builder()
        .token(settings.telegram_token.get_secret_value())
        .rate_limiter(AIORateLimiter(max_retries=FLOOD_RETRIES))
        .concurrent_updates(CONCURRENT_UPDATES)
        .post_init(set_menus)
    )
    if settings.telegram_api_url:
        base = settings.telegram_api_url.rstrip("/")
        builder = builder.base_url(f"{base}/bot").base_file_url(f"{base}/file/bot")
        builder = builder.local_mode(settings.telegram_local_mode)
    return builder.build()


def command_names(registry: CommandRegistry) -> list[str]:
    """Every command Telegram offers, for any role, and its aliases (/start is /help)."""
    return [
        name
        for command in registry.offered(PLATFORM, Role.ADMIN)
        for name in (command.name, *command.aliases)
    ]


def add_handlers(application: Application, front: TelegramFrontEnd) -> None:  # type: ignore[type-arg]
    incoming = front.incoming
    new_messages = filters.UpdateType.MESSAGE
    application.add_handler(
        CommandHandler(command_names(front.context.commands), incoming.on_command, new_messages)
    )
    application.add_handler(
        MessageHandler(
            filters.CaptionRegex(_CAPTION_COMMAND)
            & (filters.PHOTO | filters.Document.ALL)
            & new_messages,
            incoming.on_caption,
        )
    )
    application.add_handler(
        MessageHandler(filters.TEXT & ~filters.COMMAND & new_messages, incoming.on_text)
    )
    application.add_handler(CallbackQueryHandler(front.presses.on_grid_button, GRID_BUTTONS))


def add_fallbacks(application: Application, front: TelegramFrontEnd) -> None:  # type: ignore[type-arg]
    """Added last: any other callback data is answered (unknown button), and an unknown
    command in a private chat is told so (in a group it may be another bot's)."""
    application.add_handler(
        MessageHandler(
            filters.COMMAND & filters.ChatType.PRIVATE & filters.UpdateType.MESSAGE,
            front.incoming.on_command,
        )
    )
    application.add_handler(CallbackQueryHandler(front.presses.on_unknown_button))


async def set_menus(application: Application) -> None:  # type: ignore[type-arg]
    """The command menu in each language (setMyCommands with language_code; users of any
    other language get the English one). Names stay English: Telegram's are a-z, 0-9, _."""
    registry: CommandRegistry = application.bot_data["commands"]
    for locale in LOCALES:
        commands = [BotCommand(name, text[:256]) for name, text in registry.menu(PLATFORM, locale)]
        if locale == DEFAULT_LOCALE:
            await application.bot.set_my_commands(commands)
        await application.bot.set_my_commands(commands, language_code=locale)


async def log_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A handler's error that escaped: logged with its traceback (never the token)."""
    user = None
    if isinstance(update, Update) and update.effective_user is not None:
        user = user_ref(update.effective_user)
    if context.error is not None:
        log_unexpected("A Telegram update", user, error=context.error)
