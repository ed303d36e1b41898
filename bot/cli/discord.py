"""`easel discord commands|sync|invite`: the slash commands and the invite links."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError

from bot.cli.common import HELP_STYLE, out
from bot.settings import Settings
from pipeline.errors import InvalidRequestError

discord_app = typer.Typer(
    help="Discord: the slash commands.", no_args_is_help=True, rich_markup_mode=HELP_STYLE
)


@discord_app.command("commands")
def discord_commands() -> None:
    """Print the slash commands that a sync sends, as JSON (no login); /imagine's bounds are
    the settings' limits."""
    import asyncio

    from bot.discord.sync import command_payload

    payload = asyncio.run(command_payload(Settings().limits()))
    print(json.dumps(payload, ensure_ascii=False, indent=2))


@discord_app.command("sync")
def discord_sync(
    guild: Annotated[
        int | None,
        typer.Option("--guild", help="A guild id: sync there only, shown at once."),
    ] = None,
) -> None:
    """Log in with DISCORD_TOKEN and sync the slash commands, globally or to one guild."""
    import asyncio

    from bot.discord.sync import sync_commands, sync_note

    settings = Settings()
    if settings.discord_token is None:
        raise InvalidRequestError("DISCORD_TOKEN is not set: put the bot's token in it.")
    out.print(sync_note(asyncio.run(sync_commands(settings, guild)), guild))


@discord_app.command("invite")
def discord_invite(
    client_id: Annotated[
        int | None,
        typer.Option(
            "--client-id", min=1, help="The application's id; default: from DISCORD_TOKEN."
        ),
    ] = None,
) -> None:
    """Print the links that add the bot to a server and to a user's account."""

    from bot.discord.invite import NOT_A_BOT_TOKEN, client_id_from_token, invite_links, invite_text

    if client_id is None:
        try:
            settings = Settings()
        except ValidationError as error:
            if any(problem["loc"] == ("DISCORD_TOKEN",) for problem in error.errors()):
                raise InvalidRequestError(NOT_A_BOT_TOKEN) from None
            raise
        if settings.discord_token is None:
            raise InvalidRequestError(
                "DISCORD_TOKEN is not set: put the bot's token in it, or give --client-id."
            )
        client_id = client_id_from_token(settings.discord_token.get_secret_value())
        if client_id is None:
            raise InvalidRequestError(NOT_A_BOT_TOKEN)
    print(invite_text(invite_links(client_id)))  # plain print: a wrapped URL would not work
