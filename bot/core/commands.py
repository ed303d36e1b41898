"""The command registry: every chat command once, with its arguments, its localised
description and who may use it.

Discord's synced slash commands, Telegram's `setMyCommands` menus, the console and `/help`
are all made from this table, so a command added here shows up everywhere it belongs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bot.core.events import Reply
from bot.core.messages import Key, Message
from bot.store import Role


class Access(StrEnum):
    EVERYONE = "everyone"
    ADMIN = "admin"  # Easel's own admins (a role in its database), on every platform


class ArgumentKind(StrEnum):
    TEXT = "text"  # the rest of the line
    INTEGER = "integer"
    JOB = "job"  # a job number; optional ones default to the chat's last grid
    IMAGE = "image"  # an attachment (a file path on the console)


@dataclass(frozen=True)
class Argument:
    name: str
    kind: ArgumentKind
    description: Key
    required: bool = False

    def usage(self) -> str:
        shown = self.name.upper()
        return shown if self.required else f"[{shown}]"


@dataclass(frozen=True)
class Command:
    name: str
    description: Key
    arguments: tuple[Argument, ...] = ()
    access: Access = Access.EVERYONE
    platforms: frozenset[str] | None = None  # None: every front end
    not_on: frozenset[str] = frozenset()  # front ends that do it another way
    aliases: tuple[str, ...] = ()

    def usage(self) -> str:
        return " ".join([f"/{self.name}", *(argument.usage() for argument in self.arguments)])

    def offered_on(self, platform: str) -> bool:
        if platform in self.not_on:
            return False
        return self.platforms is None or platform in self.platforms

    def allowed_for(self, role: Role) -> bool:
        return self.access is Access.EVERYONE or role is Role.ADMIN


_INDEX = Argument("n", ArgumentKind.INTEGER, Key.ARG_INDEX, required=True)
_JOB = Argument("job", ArgumentKind.JOB, Key.ARG_JOB)
_NEEDED_JOB = Argument("job", ArgumentKind.JOB, Key.ARG_JOB, required=True)
_CONSOLE = frozenset({"console"})
_TELEGRAM = frozenset({"telegram"})
# Acting on a grid is typed elsewhere; on Discord it is the grid's buttons alone.
_BUTTONS_ON = frozenset({"discord"})

COMMANDS: tuple[Command, ...] = (
    Command(
        "imagine",
        Key.CMD_IMAGINE,
        (Argument("prompt", ArgumentKind.TEXT, Key.ARG_PROMPT, required=True),),
    ),
    Command("u", Key.CMD_U, (_INDEX, _JOB), not_on=_BUTTONS_ON),
    Command("v", Key.CMD_V, (_INDEX, _JOB), not_on=_BUTTONS_ON),
    Command("s", Key.CMD_S, (_INDEX, _JOB), not_on=_BUTTONS_ON),
    Command("reroll", Key.CMD_REROLL, (_JOB,), not_on=_BUTTONS_ON),
    Command(
        "remix",
        Key.CMD_REMIX,
        (_JOB, Argument("line", ArgumentKind.TEXT, Key.ARG_LINE)),
        not_on=_BUTTONS_ON,
    ),
    Command("history", Key.CMD_HISTORY, (Argument("page", ArgumentKind.INTEGER, Key.ARG_PAGE),)),
    Command("info", Key.CMD_INFO, (_NEEDED_JOB,)),
    Command("cancel", Key.CMD_CANCEL, (_NEEDED_JOB,)),
    Command("queue", Key.CMD_QUEUE),
    Command(
        "settings", Key.CMD_SETTINGS, (Argument("changes", ArgumentKind.TEXT, Key.ARG_CHANGES),)
    ),
    # Telegram's inline-keyboard picker for the settings with a menu (Discord has /settings'
    # select menus).
    Command("style", Key.CMD_STYLE, platforms=_TELEGRAM),
    Command(
        "pnginfo",
        Key.CMD_PNGINFO,
        (Argument("image", ArgumentKind.IMAGE, Key.ARG_IMAGE, required=True),),
    ),
    Command(
        "admin",
        Key.CMD_ADMIN,
        (Argument("action", ArgumentKind.TEXT, Key.ARG_ADMIN_ACTION, required=True),),
        access=Access.ADMIN,
    ),
    Command("wait", Key.CMD_WAIT, platforms=_CONSOLE),
    Command("help", Key.CMD_HELP, aliases=("start",)),
    Command("quit", Key.CMD_QUIT, platforms=_CONSOLE, aliases=("exit",)),
)


class CommandRegistry:
    def __init__(self, commands: tuple[Command, ...] = COMMANDS) -> None:
        self.commands = commands
        self._by_name = {
            name: command for command in commands for name in (command.name, *command.aliases)
        }

    def find(self, name: str, platform: str) -> Command | None:
        command = self._by_name.get(name.lower())
        return command if command is not None and command.offered_on(platform) else None

    def offered(self, platform: str, role: Role = Role.USER) -> list[Command]:
        return [
            command
            for command in self.commands
            if command.offered_on(platform) and command.allowed_for(role)
        ]

    def menu(self, platform: str, locale: str, role: Role = Role.USER) -> list[tuple[str, str]]:
        """(name, description) pairs for a platform's command menu (Telegram's
        setMyCommands, Discord's command list), in `locale`."""
        return [
            (command.name, Message(command.description).render(locale))
            for command in self.offered(platform, role)
        ]

    def help(self, platform: str, role: Role = Role.USER) -> Reply:
        commands = self.offered(platform, role)
        width = max(len(command.usage()) for command in commands)
        lines = tuple(
            Message(
                Key.HELP_LINE,
                {
                    "usage": command.usage().ljust(width),
                    "description": Message(command.description),
                },
            )
            for command in commands
        )
        return Reply(Message(Key.HELP_HEADER), lines=lines)
