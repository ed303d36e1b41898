"""The seam between the core and a chat platform.

A front end is a module (`bot.console`, `bot.discord`, `bot.telegram`) with a `PLATFORM`
name and `async def serve(context, settings, stop)`. It gets a `BotContext`: the job service
and what the core offers around it, never the store or the executor. It translates, and
nothing more: platform update -> `context.router` or a `context.service` call; reply or
job event -> platform message. See the README's "Adding a front end".
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from bot.core.admin import AdminService
from bot.core.commands import CommandRegistry
from bot.core.router import LocalCommand, TextRouter
from bot.core.service import JobService

if TYPE_CHECKING:
    from bot.settings import Settings


@dataclass(frozen=True)
class BotContext:
    """Everything a front end may use."""

    service: JobService
    commands: CommandRegistry = field(default_factory=CommandRegistry)

    @property
    def admin(self) -> AdminService:
        """The admins' operations (each checks its actor's role)."""
        return AdminService(self.service)

    def router(self, platform: str, local: Mapping[str, LocalCommand] | None = None) -> TextRouter:
        """A text-command router for one platform; `local` adds its own commands."""
        return TextRouter(self.service, self.commands, platform, local)


class FrontEnd(Protocol):
    """What `easel run` needs of a front-end module."""

    PLATFORM: str

    async def serve(self, context: BotContext, settings: Settings, stop: asyncio.Event) -> None:
        """Run until `stop` is set; subscribe to the platform's job events first."""
        ...

    async def check_token(self, settings: Settings) -> None:
        """Ask the platform whether the token is good (one request, nothing started), so that
        a refused one stops `easel run` before the model loads; EaselError if it is not."""
        ...
