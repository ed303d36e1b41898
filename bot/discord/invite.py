"""`easel discord invite`: the OAuth2 links that add the bot to a server, or to a user's account.

The application's id (the OAuth2 client id) is the first segment of a bot token, base64 of the
id in decimal, so no network is needed for the usual token; otherwise the bot logs in and asks
Discord (GET /oauth2/applications/@me). The token itself is never printed.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urlencode

import discord

from bot.discord import endpoints
from bot.settings import Settings

AUTHORIZE_URL = "https://discord.com/oauth2/authorize"
GUILD_INSTALL = 0
USER_INSTALL = 1
# What the bot does in a server: answer in channels it can see, post and edit messages with the
# images as attachments, and read back the messages it edits after a restart.
SERVER_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
)


@dataclass(frozen=True)
class InviteLinks:
    client_id: int
    server: str  # adds the bot and its commands to a server
    user: str  # adds the commands to a user's account (User Install)


def client_id_from_token(token: str) -> int | None:
    """The application id a bot token starts with; None when the token does not hold one."""
    first = token.strip().split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(decoded) if decoded.isdigit() and 0 < len(decoded) <= 20 else None


async def fetch_client_id(settings: Settings) -> int:
    """Log in with DISCORD_TOKEN (no gateway) and ask Discord for the application's id."""
    if settings.discord_token is None:
        raise ValueError("DISCORD_TOKEN is not set")
    with endpoints(settings):
        client = discord.Client(intents=discord.Intents.none())
        async with client:
            await client.login(settings.discord_token.get_secret_value())
            application = await client.application_info()
    return application.id


def invite_links(client_id: int) -> InviteLinks:
    server = {
        "client_id": client_id,
        "scope": "bot applications.commands",
        "permissions": SERVER_PERMISSIONS.value,
        "integration_type": GUILD_INSTALL,
    }
    user = {
        "client_id": client_id,
        "scope": "applications.commands",
        "integration_type": USER_INSTALL,
    }
    return InviteLinks(
        client_id,
        f"{AUTHORIZE_URL}?{urlencode(server)}",
        f"{AUTHORIZE_URL}?{urlencode(user)}",
    )


def invite_text(links: InviteLinks) -> str:
    return "\n".join(
        (
            f"Application (client) id: {links.client_id}",
            "",
            "Add the bot to a server (scopes bot and applications.commands; permissions View "
            f"Channels, Send Messages, Embed Links, Attach Files, Read Message History = "
            f"{SERVER_PERMISSIONS.value}):",
            links.server,
            "",
            "Add the commands to your own account, to use them anywhere (enable User Install "
            "in the Developer Portal's Installation tab first):",
            links.user,
        )
    )
