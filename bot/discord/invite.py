"""`easel discord invite`: the OAuth2 links that add the bot to a server, or to a user's account.

The application's id (the OAuth2 client id) is the first segment of a bot token, base64 of the
id in decimal, so no network is needed; a token that holds none is refused with a pointer to
`--client-id`. The token itself is never printed.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urlencode

import discord

AUTHORIZE_URL = "https://discord.com/oauth2/authorize"
GUILD_INSTALL = 0
USER_INSTALL = 1
NOT_A_BOT_TOKEN = (
    "DISCORD_TOKEN does not look like a Discord bot token (three dot-separated parts, the "
    "first the application id in base64): copy it again from the Developer Portal's Bot tab, "
    "or give the application id with --client-id."
)
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
