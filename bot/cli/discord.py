"""`easel discord commands|sync|invite`: the slash commands and the invite links."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError

from bot.cli.common import HELP_STYLE, out
from bot.cli.texts import bilingual
from bot.settings import Settings
from pipeline.errors import InvalidRequestError

discord_app = typer.Typer(
    help=bilingual("Discord: the slash commands.", "Discord: 슬래시 명령."),
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
)


@discord_app.command(
    "commands",
    help=bilingual(
        "Print the slash commands that a sync sends, as JSON (no login); /imagine's bounds are "
        "the settings' limits.",
        "동기화로 보낼 슬래시 명령을 JSON으로 출력합니다 (로그인 없음).",
    ),
)
def discord_commands() -> None:
    """Print the slash commands that a sync sends, as JSON (no login); /imagine's bounds are
    the settings' limits."""
    import asyncio

    from bot.discord.sync import command_payload

    payload = asyncio.run(command_payload(Settings().limits()))
    print(json.dumps(payload, ensure_ascii=False, indent=2))


@discord_app.command(
    "sync",
    help=bilingual(
        "Log in with DISCORD_TOKEN and sync the slash commands, globally or to one guild.",
        "DISCORD_TOKEN으로 로그인해 슬래시 명령을 전체 또는 한 길드에 동기화합니다.",
    ),
)
def discord_sync(
    guild: Annotated[
        int | None,
        typer.Option(
            "--guild",
            help=bilingual(
                "A guild id: sync there only, shown at once.",
                "길드 id: 그곳에만 동기화하며 바로 보입니다.",
            ),
        ),
    ] = None,
) -> None:
    """Log in with DISCORD_TOKEN and sync the slash commands, globally or to one guild."""
    import asyncio

    from bot.discord.sync import sync_commands, sync_note

    settings = Settings()
    if settings.discord_token is None:
        raise InvalidRequestError("DISCORD_TOKEN is not set: put the bot's token in it.")
    out.print(sync_note(asyncio.run(sync_commands(settings, guild)), guild))


@discord_app.command(
    "invite",
    help=bilingual(
        "Print the links that add the bot to a server and to a user's account.",
        "봇을 서버와 사용자 계정에 추가하는 링크를 출력합니다.",
    ),
)
def discord_invite(
    client_id: Annotated[
        int | None,
        typer.Option(
            "--client-id",
            min=1,
            help=bilingual(
                "The application's id; default: from DISCORD_TOKEN.",
                "애플리케이션 id. 기본: DISCORD_TOKEN에서.",
            ),
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
