"""Telegram messages to the core's text router, and its replies back as messages.

Commands (`/imagine a fox`, `/imagine@EaselBot a fox` in groups), a photo whose caption is a
command, replies to the bot's questions (a ForceReply asking for a prompt or a remixed line),
and, in a private chat, a plain line (an /imagine, unless the user turned `plain_text` off).
An image comes with the message itself or with the message it replies to (img2img, /pnginfo).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from telegram import Bot as TelegramBot
from telegram import ForceReply, Message, ReplyParameters, Update, User
from telegram.constants import ChatType, ParseMode
from telegram.ext import ContextTypes

from bot.core.events import Refusal, Reply
from bot.core.frontend import BotContext
from bot.core.messages import LOCALES, Key, catalog, normalise_locale
from bot.core.messages import Message as CoreMessage
from bot.core.router import Routed, TextRequest, split_command
from bot.core.uploads import check_input_upload
from bot.telegram.people import PLATFORM, origin_of, user_ref
from bot.telegram.render import reply_html

log = logging.getLogger(__name__)
_IMAGE_COMMANDS = ("imagine", "pnginfo")
MAX_OPEN_QUESTIONS = 10_000
# `/admin ACTION USER ...`: the user may be given by replying to one of their messages.
_TARGETED_ACTIONS = ("ban", "unban", "role")


@dataclass(frozen=True)
class Ask:
    """A question the bot asked with a ForceReply: the prompt of an /imagine (and the image
    that came with it), or the edited line of a remix."""

    command: str  # "imagine" or "remix"
    job: int | None = None
    image_file_id: str | None = None


class Incoming:
    """What Easel does with people's messages (and, for presses, what it answers)."""

    def __init__(self, context: BotContext) -> None:
        self.service = context.service
        self.router = context.router(PLATFORM)
        self._asks: dict[tuple[int, int], Ask] = {}  # (chat, question message) -> the ask

    def _remember(self, question: tuple[int, int], ask: Ask) -> None:
        """Keep a question until it is answered; the oldest go first past MAX_OPEN_QUESTIONS
        (unanswered ones would otherwise pile up; an answer to a forgotten one is still read
        from the question's text, only an image that came with a bare /imagine is lost)."""
        self._asks[question] = ask
        while len(self._asks) > MAX_OPEN_QUESTIONS:
            del self._asks[next(iter(self._asks))]

    # ------------------------------------------------------------------ handlers

    async def on_command(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or message.text is None or update.effective_user is None:
            return
        await self.handle(message, update.effective_user, message.text)

    async def on_caption(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo or file whose caption is `/imagine ...` or `/pnginfo` (PTB's
        CommandHandler reads no captions)."""
        message = update.effective_message
        if message is None or message.caption is None or update.effective_user is None:
            return
        head = message.caption.split(maxsplit=1)[0]
        mention = head.partition("@")[2]
        if mention and mention.lower() != (context.bot.username or "").lower():
            return  # a command for another bot
        await self.handle(message, update.effective_user, message.caption)

    async def on_text(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        """A line without a command: the answer to a question the bot asked; in a private
        chat, an /imagine (the `plain_text` setting); in a group, only a remix line the
        router is waiting for."""
        message = update.effective_message
        user = update.effective_user
        if message is None or message.text is None or user is None:
            return
        replied = message.reply_to_message
        ask = self._asks.pop((message.chat_id, replied.message_id), None) if replied else None
        if ask is None and replied is not None:
            ask = asked_in(replied)
        if ask is not None:
            await self._answer_ask(message, user, ask)
            return
        private = message.chat.type == ChatType.PRIVATE
        if not private and (
            replied is None or replied.from_user is None or not replied.from_user.is_bot
        ):
            return
        prompts = private and await self.service.plain_text_prompts(user_ref(user))
        await self.handle(message, user, message.text, plain_text_is_prompt=prompts)

    # ------------------------------------------------------------------ routing

    async def handle(
        self,
        message: Message,
        user: User,
        text: str,
        *,
        plain_text_is_prompt: bool = False,
        image_file_id: str | None = None,
    ) -> None:
        who = user_ref(user)
        locale = normalise_locale(user.language_code) if user.language_code else None
        locale = locale or await self.service.locale(who)
        name, args = split_command(text)
        try:
            if name == "imagine" and not args:
                await self._ask_prompt(message, locale, _image_of(message))
                return
            if name == "admin":
                text = _with_replied_target(text, message)
            attachment = None
            if name in _IMAGE_COMMANDS or image_file_id is not None:
                attachment = await _read_image(message, name, image_file_id)
            routed = await self.router.route(
                TextRequest(who, origin_of(message), text, attachment, plain_text_is_prompt)
            )
        except Refusal as refusal:
            routed = Routed(refusal.reply)
        await self.show(message.get_bot(), message.chat_id, message.message_id, routed, locale)

    async def show(
        self, bot: TelegramBot, chat_id: int, reply_to: int, routed: Routed, locale: str
    ) -> None:
        """The router's reply, replying to `reply_to`. A queued job says nothing here: its
        QUEUED event posts the job's status message. A line to edit (remix) comes with a
        ForceReply whose answer is the remix."""
        reply = routed.reply
        if reply is None or routed.ticket is not None:
            return
        if reply.editable is not None and reply.message.key is Key.REMIX_LINE:
            job = int(reply.message.args["job"])  # type: ignore[call-overload]
            remix = Reply(
                CoreMessage(Key.TELEGRAM_REMIX_LINE, {"job": job}), editable=reply.editable
            )
            sent = await send(bot, chat_id, reply_to, remix, locale, force_reply=True)
            self._remember((chat_id, sent.message_id), Ask("remix", job))
            return
        await send(bot, chat_id, reply_to, reply, locale)

    async def _ask_prompt(self, message: Message, locale: str, image_file_id: str | None) -> None:
        reply = Reply(CoreMessage(Key.TELEGRAM_ASK_PROMPT))
        bot = message.get_bot()
        sent = await send(bot, message.chat_id, message.message_id, reply, locale, force_reply=True)
        self._remember(
            (message.chat_id, sent.message_id), Ask("imagine", image_file_id=image_file_id)
        )

    async def _answer_ask(self, message: Message, user: User, ask: Ask) -> None:
        line = message.text or ""
        if ask.command == "remix":
            await self.handle(message, user, f"/remix {ask.job} {line}")
            return
        await self.handle(message, user, f"/imagine {line}", image_file_id=ask.image_file_id)


async def send(
    bot: TelegramBot,
    chat_id: int,
    reply_to: int | None,
    reply: Reply,
    locale: str,
    *,
    force_reply: bool = False,
) -> Message:
    """A reply as an HTML message in `chat_id`, replying to `reply_to` (sent all the same when
    that message is gone); `force_reply` asks the person for an answer (in a group, only the
    person replied to)."""
    return await bot.send_message(
        chat_id,
        reply_html(reply, locale),
        parse_mode=ParseMode.HTML,
        reply_parameters=(
            ReplyParameters(reply_to, allow_sending_without_reply=True)
            if reply_to is not None
            else None
        ),
        reply_markup=ForceReply(selective=True) if force_reply else None,
    )


def asked_in(question: Message) -> Ask | None:
    """The ask a message of the bot's is, read from its text (in any language): after a
    restart, an answer to a question asked before it still counts."""
    if question.from_user is None or not question.from_user.is_bot or question.text is None:
        return None
    for locale in LOCALES:
        if question.text == CoreMessage(Key.TELEGRAM_ASK_PROMPT).render(locale):
            return Ask("imagine")
        before, _, after = catalog(locale)[Key.TELEGRAM_REMIX_LINE].partition("{job}")
        if question.text.startswith(before):
            number = question.text[len(before) :].split(after[:1] or None, 1)[0]
            if number.isascii() and number.isdigit():
                return Ask("remix", int(number))
    return None


def _image_of(message: Message) -> str | None:
    """The file id of the image a message carries, or of the one it replies to."""
    for candidate in (message, message.reply_to_message):
        if candidate is None:
            continue
        if candidate.photo:
            return candidate.photo[-1].file_id
        document = candidate.document
        if document is not None and (document.mime_type or "").startswith("image/"):
            return document.file_id
    return None


async def _read_image(message: Message, command: str | None, file_id: str | None) -> bytes | None:
    """The bytes of the image that comes with the command (on the message, or on the one it
    replies to), checked by its declared size and type first. A photo for /pnginfo is refused:
    Telegram re-encoded it and dropped its parameters."""
    source: Any = None
    content_type: str | None = None
    for candidate in (message, message.reply_to_message):
        if candidate is None:
            continue
        if candidate.photo:
            if command == "pnginfo":
                raise Refusal(CoreMessage(Key.TELEGRAM_PHOTO_NO_PNGINFO))
            source, content_type = candidate.photo[-1], "image/jpeg"
            break
        if candidate.document is not None:
            source, content_type = candidate.document, candidate.document.mime_type
            break
    bot = message.get_bot()
    if source is None:
        if file_id is None:
            return None
        file = await bot.get_file(file_id)
    else:
        check_input_upload(source.file_size or 0, content_type)
        file = await source.get_file()
    return bytes(await file.download_as_bytearray())


def _with_replied_target(text: str, message: Message) -> str:
    """`/admin ban spam` replying to someone's message is `/admin ban <their id> spam`."""
    replied = message.reply_to_message
    if replied is None or replied.from_user is None or replied.from_user.is_bot:
        return text
    _, args = split_command(text)
    action, _, rest = args.partition(" ")
    first = rest.split(maxsplit=1)[0] if rest.strip() else ""
    if action.lower() not in _TARGETED_ACTIONS or (first.isascii() and first.isdigit()):
        return text
    return f"/admin {action} {replied.from_user.id} {rest}".rstrip()
