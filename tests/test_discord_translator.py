"""Korean descriptions for Discord's slash commands (bot/discord/translator.py) and
`easel discord commands|sync` (bot/discord/sync.py), against the fake Discord."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from bot.cli import app
from bot.core.messages import Key, Message
from bot.discord.sync import sync_commands, sync_note
from bot.settings import Settings
from tests.fakes.discord import FakeDiscord, fake_discord
from tests.test_discord import run

GLOBAL_SYNC = "PUT /applications/{application_id}/commands"
GUILD_SYNC = "PUT /applications/{application_id}/guilds/{guild_id}/commands"


def login_settings(tmp_path: Path, fake: FakeDiscord) -> Settings:
    return Settings(
        _env_file=None,
        outputs_dir=tmp_path / "out",
        models_dir=tmp_path / "models",
        DISCORD_TOKEN=fake.settings.token,
        discord_api_url=fake.api_base,
        discord_gateway_url=fake.gateway_url,
    )


def korean(key: Key) -> str:
    return Message(key).render("ko")


def check_korean(commands: list[dict[str, Any]]) -> None:
    by_name = {command["name"]: command for command in commands}
    imagine, history = by_name["imagine"], by_name["history"]
    assert imagine["description_localizations"] == {"ko": korean(Key.CMD_IMAGINE)}
    assert history["description_localizations"] == {"ko": "내 작업, 최신순"}
    options = {option["name"]: option for option in imagine["options"]}
    assert options["prompt"]["description_localizations"] == {"ko": korean(Key.ARG_PROMPT)}
    assert options["seed"]["description_localizations"] == {"ko": korean(Key.ARG_SEED)}
    assert [choice["name"] for choice in options["aspect"]["choices"]][:2] == ["1:1", "2:3"]
    for command in commands:
        assert command["name"].isascii() and command["name"].islower()  # names stay English
        assert not command.get("name_localizations")
        texts = [command["description"], *command["description_localizations"].values()]
        for option in command["options"]:
            texts += [option["description"], *option["description_localizations"].values()]
        assert all(1 <= len(text) <= 100 for text in texts), texts
    settings = by_name["settings"]["description_localizations"]["ko"]
    assert len(korean(Key.CMD_SETTINGS)) <= 100 or settings.endswith("…")


def test_easel_discord_commands_prints_the_payload_with_korean_descriptions() -> None:
    result = CliRunner().invoke(app, ["discord", "commands"])
    assert result.exit_code == 0, result.output
    commands = json.loads(result.stdout)
    assert [command["name"] for command in commands][:2] == ["imagine", "history"]
    imagine = commands[0]
    assert [option["name"] for option in imagine["options"]] == [
        "prompt",
        "negative",
        "aspect",
        "count",
        "seed",
    ]
    check_korean(commands)


def test_the_bots_global_sync_and_a_guild_sync_carry_the_korean_descriptions(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            settings = login_settings(tmp_path, fake)
            count = await sync_commands(settings)
            (synced,) = fake.calls_to(GLOBAL_SYNC)
            assert synced.status == 200, synced.response
            check_korean(list(synced.json))
            assert count == len(synced.json) == 9  # with the /admin group
            assert await sync_commands(settings, guild=1) == 9
            (guild,) = fake.calls_to(GUILD_SYNC)
            assert guild.status == 200, guild.response
            assert guild.params["guild_id"] == "1"
            check_korean(list(guild.json))
            assert not fake.refused_calls
            assert not fake.calls_to("GET /gateway/bot")  # a sync does not connect

    run(scenario)


def test_sync_says_how_long_a_sync_takes_to_show() -> None:
    assert "up to an hour" in sync_note(7, None)
    assert "at once" in sync_note(7, 1) and "guild 1" in sync_note(7, 1)


def test_easel_discord_sync_without_a_token_says_so(monkeypatch: Any) -> None:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no .env file here
    result = CliRunner().invoke(app, ["discord", "sync", "--guild", "1"])
    assert result.exit_code != 0
    assert "DISCORD_TOKEN" in str(result.exception)
