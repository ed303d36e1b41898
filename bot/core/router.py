"""Text commands, routed once for every front end that reads lines of text.

The console and Telegram hand over what a user typed (`/u 2 17`, `/settings style=anime`,
`/imagine@EaselBot a fox`, a button id typed in, or a plain line) and get back a reply to
show. Discord's typed slash commands call the job service directly, but their replies,
refusals and error references are the same.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from bot.core.admin import KNOWN_PLATFORMS, AdminService, parse_switch
from bot.core.buttons import PREFIX as BUTTON_PREFIX
from bot.core.buttons import parse_button_id
from bot.core.commands import Command, CommandRegistry
from bot.core.errors import log_unexpected, unexpected_reply
from bot.core.events import Origin, Refusal, Reply, Ticket, UserRef
from bot.core.messages import Key, Message
from bot.core.service import JobService
from bot.store import JobKind, UserRecord

# Words that mean "a command" when typed without the slash; a plain line starting with one
# gets a hint instead of a 20-step job.
_COMMAND_WORDS = {"clear": "help", "cls": "help", "bye": "quit", "exit": "quit"}
_WORDS = re.compile(r"[^\s/]+")
MAX_GRID_IMAGES = 4  # `/u N`: the grid's buttons go up to U4


@dataclass(frozen=True)
class TextRequest:
    user: UserRef
    origin: Origin
    text: str
    attachment: bytes | None = None  # an image sent with the line or replied to
    plain_text_is_prompt: bool = True  # a line without a slash is an /imagine


@dataclass(frozen=True)
class Routed:
    reply: Reply | None  # None: the line was not for the bot
    ticket: Ticket | None = None  # set when a job was queued
    command: str | None = None  # the command that ran, for the front end's own bookkeeping


LocalCommand = Callable[[TextRequest, str], Awaitable[Reply | None]]


class TextRouter:
    def __init__(
        self,
        service: JobService,
        registry: CommandRegistry,
        platform: str,
        local: Mapping[str, LocalCommand] | None = None,
    ) -> None:
        """`local`: the front end's own commands (the console's /wait and /quit), by name."""
        self.service = service
        self.registry = registry
        self.platform = platform
        self.local = dict(local or {})
        self._pending_remix: dict[tuple[str, str], int] = {}  # (chat, user) -> job

    async def route(self, request: TextRequest) -> Routed:
        """Never raises: a refusal is its reply, and anything unexpected is logged with a
        reference that the reply carries."""
        name: str | None = None
        try:
            name, args = split_command(request.text)
            return await self._route(request, name, args)
        except Refusal as refusal:
            return Routed(refusal.reply, command=name)
        except Exception as error:
            what = f"Command /{name}" if name else "A chat line"
            reference = log_unexpected(what, request.user, error=error)
            return Routed(unexpected_reply(reference), command=name)

    async def _route(self, request: TextRequest, name: str | None, args: str) -> Routed:
        remixing = self._pending_remix.pop(_who(request), None)
        if name is None:
            button = parse_button_id(args)
            if button is not None:
                job_id, action = button
                if action.kind is JobKind.REMIX:
                    return await self._remix_prompt(request, job_id)
                return self._queued(
                    await self.service.act(request.user, job_id, action, request.origin)
                )
            if args.startswith(f"{BUTTON_PREFIX}:") and " " not in args:
                raise Refusal(Message(Key.UNKNOWN_ACTION, {"action": args}))
            if remixing is not None:
                return await self._remix_line(request, remixing, args)
            if not request.plain_text_is_prompt:
                return Routed(None)
            hint = self._command_word(args)
            if hint is not None:
                return Routed(Reply(hint))
            name = "imagine"
        command = self.registry.find(name, self.platform)
        record = await self.service.user(request.user)
        if command is None:
            raise Refusal(Message(Key.UNKNOWN_COMMAND, {"command": f"/{name}"}))
        if not command.allowed_for(record.role):
            raise Refusal(Message(Key.ADMIN_ONLY))
        if command.name in self.local:
            return Routed(await self.local[command.name](request, args), command=command.name)
        return await self._core_command(command, request, args, record)

    async def _core_command(
        self, command: Command, request: TextRequest, args: str, record: UserRecord
    ) -> Routed:
        service, user, origin = self.service, request.user, request.origin
        words = args.split()
        match command.name:
            case "imagine":
                options = await service.options(user, args, origin, init_image=request.attachment)
                return self._queued(await service.imagine(user, options, origin))
            case "u" | "v" | "s":
                index = _image_index(command.name, words)
                job = await self._job(words[1:], request)
                action = f"{command.name.upper()}{index}"
                return self._queued(await service.act(user, job, action, origin))
            case "reroll":
                job = await self._job(words, request)
                return self._queued(await service.act(user, job, "reroll", origin))
            case "remix":
                return await self._remix(request, args)
            case "history":
                if words and not _is_number(words[0]):
                    raise Refusal(Message(Key.NOT_A_PAGE_NUMBER, {"text": words[0]}))
                return Routed(await service.history(user, int(words[0]) if words else 1))
            case "info":
                return Routed(await service.info(await self._job(words, request), user, origin))
            case "cancel":
                job = await self._job(words, request, "cancel")
                return Routed(await service.cancel(user, job, origin))
            case "queue":
                return Routed(await service.queue_status(user))
            case "settings":
                if not args.strip():
                    return Routed(await service.settings(user))
                return Routed(await service.update_settings(user, parse_settings(args)))
            case "pnginfo":
                if request.attachment is None:
                    raise Refusal(Message(Key.NEED_IMAGE))
                return Routed(await service.pnginfo(request.attachment))
            case "help":
                return Routed(self.registry.help(self.platform, record.role))
            case "admin":
                return Routed(await self._admin(request, args))
        raise Refusal(Message(Key.UNKNOWN_COMMAND, {"command": f"/{command.name}"}))

    async def _admin(self, request: TextRequest, args: str) -> Reply:
        """`/admin ban USER [7d|12h|30m] [REASON]`, `unban USER`, `role USER user|vip|admin`,
        `pause`, `resume`, `reload`, `rules [nsfw on|off] [preset NAME|none]`; USER is the
        platform's user id."""
        admin, actor = AdminService(self.service), request.user
        action, _, rest = args.strip().partition(" ")
        words = rest.split()
        match action.lower():
            case "ban":
                user, _, reason = rest.strip().partition(" ")
                return await admin.ban(actor, self._target(user, "ban"), reason.strip() or None)
            case "unban":
                return await admin.unban(actor, self._target(words[0] if words else "", "unban"))
            case "role":
                if len(words) != 2:
                    raise Refusal(Message(Key.ADMIN_ROLE_USAGE))
                return await admin.set_role(actor, self._target(words[0], "role"), words[1])
            case "pause" if not words:
                return await admin.pause(actor)
            case "resume" if not words:
                return await admin.resume(actor)
            case "reload" if not words:
                return await admin.reload(actor)
            case "rules":
                nsfw, preset = parse_rules(rest)
                return await admin.rules(actor, request.origin, nsfw, preset)
        raise Refusal(Message(Key.ADMIN_USAGE))

    def _target(self, user_id: str, action: str) -> UserRef:
        """`USER` on the asker's platform, or `PLATFORM:USER` (as in EASEL_ADMINS) on a
        known platform: an operator at the console manages Discord and Telegram users."""
        if not user_id.strip():
            args = {"platform": self.platform, "action": action}
            raise Refusal(Message(Key.ADMIN_NEED_USER, args))
        platform, user = split_target(user_id.strip(), self.platform)
        if not user:
            args = {"platform": platform, "action": action}
            raise Refusal(Message(Key.ADMIN_NEED_USER, args))
        return UserRef(platform, user)

    async def _remix(self, request: TextRequest, args: str) -> Routed:
        """`/remix [JOB]` shows the job's line to edit (the next plain line is the remix);
        `/remix JOB edited line` queues it at once."""
        first, _, rest = args.strip().partition(" ")
        if _is_number(first.lstrip("#")):
            job, line = int(first.lstrip("#")), rest.strip()
        else:
            job, line = await self.service.last_grid(request.user, request.origin), args.strip()
        if line:
            return self._queued(await self.service.remix(request.user, job, line, request.origin))
        return await self._remix_prompt(request, job)

    async def _remix_line(self, request: TextRequest, job: int, line: str) -> Routed:
        """The edited line after `/remix`: a refused one keeps the remix pending, so the
        corrected line is still the remix."""
        try:
            ticket = await self.service.remix(request.user, job, line, request.origin)
        except Refusal:
            self._pending_remix[_who(request)] = job
            raise
        return self._queued(ticket)

    async def _remix_prompt(self, request: TextRequest, job: int) -> Routed:
        """Show the job's line to edit; the user's next plain line is the remix."""
        editable = await self.service.remix_line(request.user, job, request.origin)
        self._pending_remix[_who(request)] = job
        return Routed(Reply(Message(Key.REMIX_LINE, {"job": job}), editable=editable))

    async def _job(
        self, words: list[str], request: TextRequest, needed_by: str | None = None
    ) -> int:
        """A job number argument; none means the chat's last grid (unless the command
        needs one); anything else that is not a number is refused."""
        if not words:
            if needed_by is not None:
                raise Refusal(Message(Key.NEED_JOB_NUMBER, {"command": needed_by}))
            return await self.service.last_grid(request.user, request.origin)
        number = words[0].lstrip("#")
        if not _is_number(number):
            raise Refusal(Message(Key.NOT_A_JOB_NUMBER, {"text": words[0]}))
        return int(number)

    def _command_word(self, text: str) -> Message | None:
        words = _WORDS.findall(text.lower())
        if not words or len(words) > 2:
            return None
        if len(words) == 2 and not (words[1].isdigit() or self._is_command_word(words[1])):
            return None  # "history museum" is a prompt; "info 12" and "clear/help" are not
        first = words[0]
        target = _COMMAND_WORDS.get(first, first)
        command = self.registry.find(target, self.platform) or self.registry.find(
            "help", self.platform
        )
        if first not in _COMMAND_WORDS and self.registry.find(first, self.platform) is None:
            return None
        assert command is not None
        return Message(Key.DID_YOU_MEAN, {"text": text.strip(), "command": command.name})

    def _is_command_word(self, word: str) -> bool:
        return word in _COMMAND_WORDS or self.registry.find(word, self.platform) is not None

    @staticmethod
    def _queued(ticket: Ticket) -> Routed:
        return Routed(ticket.reply, ticket)


def split_command(text: str) -> tuple[str | None, str]:
    """`/name@Bot rest` -> ("name", "rest"); a line without a slash -> (None, line)."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return None, stripped
    head, _, rest = stripped[1:].partition(" ")
    head, _, rest_after_newline = head.partition("\n")
    rest = (rest_after_newline + " " + rest).strip() if rest_after_newline else rest.strip()
    return head.split("@", 1)[0].lower(), rest


def parse_settings(text: str) -> dict[str, str]:
    """`style=anime "ar=3:2" private=on` -> {"style": "anime", ...}."""
    try:
        pairs = shlex.split(text)
    except ValueError:  # an unclosed quote
        pairs = text.split()
    changes = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:  # `style` alone would silently clear the style
            raise Refusal(Message(Key.SETTINGS_USAGE))
        changes[name] = value
    return changes


def split_target(text: str, platform: str) -> tuple[str, str]:
    """`discord:123` -> ("discord", "123") for a known platform; anything else is a user id
    on `platform`."""
    prefix, colon, user = text.partition(":")
    if colon and prefix.lower() in KNOWN_PLATFORMS:
        return prefix.lower(), user.strip()
    return platform, text


def _image_index(command: str, words: list[str]) -> str:
    """The N of `/u N [JOB]`: an image of the grid, 1-4."""
    index = words[0] if words else ""
    if not (_is_number(index) and 1 <= int(index) <= MAX_GRID_IMAGES):
        raise Refusal(Message(Key.IMAGE_ACTION_USAGE, {"command": command}))
    return index


def parse_rules(text: str) -> tuple[bool | None, str | None]:
    """`nsfw on preset anime` -> (True, "anime"); what is not given is None (unchanged)."""
    try:
        words = shlex.split(text)
    except ValueError:  # an unclosed quote
        words = text.split()
    nsfw: bool | None = None
    preset: str | None = None
    while words:
        name = words.pop(0).lower()
        if name not in ("nsfw", "preset") or not words:
            raise Refusal(Message(Key.ADMIN_USAGE))
        value = words.pop(0)
        if name == "nsfw":
            nsfw = parse_switch(value)
        else:
            preset = value
    return nsfw, preset


def _is_number(text: str) -> bool:
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    return text.isascii() and text.isdigit()


def _who(request: TextRequest) -> tuple[str, str]:
    return request.origin.chat, request.user.platform_user_id
