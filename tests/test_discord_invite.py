"""`easel discord invite`: the server and user-install links, from the token alone (a token
that holds no application id is refused, pointing at --client-id); never the token."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.discord.invite import client_id_from_token
from pipeline.errors import InvalidRequestError

# A made-up token of a real token's shape: base64 of the application id, then two more parts.
APPLICATION_ID = 1_234_567_890_123_456_789
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GmAdeU.p-not-a-real-secret-at-all-0123456789abcd"
# View Channel, Send Messages, Embed Links, Attach Files, Read Message History.
PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16)


def links(output: str) -> list[dict[str, list[str]]]:
    urls = [line for line in output.splitlines() if line.startswith("https://")]
    assert all(urlsplit(url).netloc == "discord.com" for url in urls), urls
    assert all(urlsplit(url).path == "/oauth2/authorize" for url in urls), urls
    return [parse_qs(urlsplit(url).query) for url in urls]


def invite(env: dict[str, str], *arguments: str) -> str:
    result = CliRunner().invoke(app, ["discord", "invite", *arguments], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_the_token_gives_both_links_without_the_network_and_is_not_printed() -> None:
    env = {"DISCORD_TOKEN": TOKEN, "EASEL_DISCORD_API_URL": "http://127.0.0.1:9/api/v10"}
    output = invite(env)  # the API URL goes nowhere: a call to it would fail the command
    server, user = links(output)
    assert server == {
        "client_id": [str(APPLICATION_ID)],
        "scope": ["bot applications.commands"],
        "permissions": [str(PERMISSIONS)],
        "integration_type": ["0"],
    }
    assert user == {
        "client_id": [str(APPLICATION_ID)],
        "scope": ["applications.commands"],
        "integration_type": ["1"],
    }
    assert "User Install" in output
    for part in TOKEN.split("."):
        if part != TOKEN.split(".")[0]:  # the first part is the public id, base64
            assert part not in output
    assert TOKEN.split(".")[0] not in output


def test_client_id_option_needs_no_token() -> None:
    output = invite({"DISCORD_TOKEN": ""}, "--client-id", "42")
    server, user = links(output)
    assert server["client_id"] == user["client_id"] == ["42"]


@pytest.mark.parametrize("token", ["not-a-token", "aGVsbG8.GmAdeU.p-secret-part"])
def test_a_token_without_an_id_is_one_line_pointing_at_client_id(token: str) -> None:
    env = {"DISCORD_TOKEN": token, "EASEL_DISCORD_API_URL": "http://127.0.0.1:9/api/v10"}
    result = CliRunner().invoke(app, ["discord", "invite"], env=env)
    assert isinstance(result.exception, InvalidRequestError), result.exception
    message = str(result.exception)
    assert "does not look like a Discord bot token" in message and "--client-id" in message
    assert "\n" not in message and token not in message and "secret" not in message


def test_no_token_and_no_client_id_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["discord", "invite"], env={"DISCORD_TOKEN": ""})
    assert result.exit_code != 0
    assert "DISCORD_TOKEN is not set" in str(result.exception)
    assert "--client-id" in str(result.exception)


def test_only_a_decimal_id_is_read_from_a_token() -> None:
    assert client_id_from_token(TOKEN) == APPLICATION_ID
    assert client_id_from_token("fake-bot-token") is None
    assert client_id_from_token("aGVsbG8.x.y") is None  # "hello"
    assert client_id_from_token("") is None
