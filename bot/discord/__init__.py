"""The Discord front end (discord.py): `/imagine`, live progress, the grid with its buttons.

`serve` logs in with `DISCORD_TOKEN`, syncs the commands (globally, and to each guild of
`EASEL_DISCORD_GUILDS`, where they show at once), and runs until `stop` is set. The
REST base and the gateway can be pointed elsewhere (a proxy, or a test's fake Discord) with
`EASEL_DISCORD_API_URL` and `EASEL_DISCORD_GATEWAY_URL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import discord
import discord.gateway
import discord.http
import yarl

from bot.core.frontend import BotContext
from bot.discord.client import EaselClient
from bot.discord.interactions import PLATFORM
from bot.settings import Settings
from pipeline.errors import EaselError

__all__ = ["PLATFORM", "check_token", "serve"]
READY_TIMEOUT = 60.0
log = logging.getLogger(__name__)
# What discord.py warns at every client it makes when its voice libraries are missing; Easel
# has no voice, so they say nothing worth a line on every start.
VOICE_WARNINGS = frozenset(
    {
        "PyNaCl is not installed, voice will NOT be supported",
        "davey is not installed, voice will NOT be supported",
    }
)


class NoVoiceWarnings(logging.Filter):
    """Drops discord.client's warnings about voice libraries; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in VOICE_WARNINGS


def quiet_voice_warnings() -> None:
    """Installed once on discord.client, before any client is made (this package's import)."""
    client_log = logging.getLogger("discord.client")
    if not any(isinstance(item, NoVoiceWarnings) for item in client_log.filters):
        client_log.addFilter(NoVoiceWarnings())


quiet_voice_warnings()


@contextlib.contextmanager
def pointed_at(api_url: str | None, gateway_url: str | None) -> Iterator[None]:
    """discord.py's REST base and gateway URL for the block (None: Discord's own), restored
    after. The gateway has to be set on its own: a plain Client never asks Discord for it."""
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    if api_url:
        discord.http.Route.BASE = api_url.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


def endpoints(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """discord.py pointed where EASEL_DISCORD_API_URL / EASEL_DISCORD_GATEWAY_URL say."""
    return pointed_at(settings.discord_api_url, settings.discord_gateway_url)


async def check_token(settings: Settings) -> None:
    """Log in over REST (GET /users/@me; no gateway): a refused DISCORD_TOKEN is said before
    anything slow is loaded."""
    assert settings.discord_token is not None
    with endpoints(settings):
        client = discord.Client(intents=discord.Intents.default())
        async with client:
            try:
                await client.login(settings.discord_token.get_secret_value())
            except discord.LoginFailure:
                raise EaselError(
                    "Discord refused DISCORD_TOKEN: copy it again from the Developer Portal "
                    "(your application, Bot, Reset Token)."
                ) from None


async def serve(
    context: BotContext,
    settings: Settings,
    stop: asyncio.Event,
    *,
    guild_ready_timeout: float = 2.0,
) -> None:
    """Run the Discord bot until `stop` is set. `guild_ready_timeout`: how long discord.py
    waits for more guilds before READY (its default; tests shorten it)."""
    assert settings.discord_token is not None
    with endpoints(settings):
        client = EaselClient(context, guild_ready_timeout=guild_ready_timeout)
        async with client:
            await client.login(settings.discord_token.get_secret_value())
            context.service.subscribe(PLATFORM, client.front_end.on_event, previews=True)
            connection = asyncio.create_task(client.connect())
            try:
                await _until_ready(client, connection)
                await client.tree.sync()
                await _sync_to_guilds(client, settings.discord_guild_ids())
                await context.service.deliver_missed(PLATFORM)
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({connection, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if connection.done():
                    connection.result()  # the connection ended by itself: say why
            finally:
                await client.close()
                connection.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connection


async def _sync_to_guilds(client: EaselClient, guild_ids: tuple[int, ...]) -> None:
    """The global commands copied to each guild and synced there, where they show at once.
    A guild that refuses (the bot is not in it) is logged and skipped."""
    for guild_id in guild_ids:
        guild = discord.Object(id=guild_id)
        client.tree.copy_global_to(guild=guild)
        try:
            await client.tree.sync(guild=guild)
        except discord.Forbidden as error:
            log.warning(
                "The commands were not synced to guild %s (%s): is the bot in it? "
                "easel discord invite prints the link that adds it",
                guild_id,
                error.text,
            )


async def _until_ready(client: discord.Client, connection: asyncio.Task[None]) -> None:
    ready = asyncio.create_task(client.wait_until_ready())
    done, _ = await asyncio.wait(
        {ready, connection}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    if ready not in done:
        ready.cancel()
        if connection in done:
            connection.result()
        raise TimeoutError(f"Discord did not get ready within {READY_TIMEOUT:.0f} s")
