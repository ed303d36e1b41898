"""Korean names and descriptions for Discord's slash commands (bot/discord/translator.py) and
`easel discord commands|sync` (bot/discord/sync.py), against the fake Discord."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from typer.testing import CliRunner

from bot.cli import app
from bot.core.messages import Key, Message
from bot.discord.sync import sync_commands, sync_note
from bot.discord.translator import CatalogTranslator, described, named
from bot.settings import Settings
from tests.fakes.discord import FakeDiscord, RecordedCall, fake_discord, is_chat_input_name
from tests.test_discord import run
from tests.test_discord_imagine import OPTION_ORDER

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
    assert imagine["name_localizations"] == {"ko": "그리기"}
    assert options["prompt"]["name_localizations"] == {"ko": "프롬프트"}
    assert history["name_localizations"] == {"ko": "기록"}
    assert by_name["pnginfo"]["options"][0]["name_localizations"] == {"ko": "이미지"}
    for command in commands:
        if command.get("type", 1) != 1:  # context menus: capitals and spaces, no descriptions
            assert 1 <= len(command["name_localizations"]["ko"]) <= 32
            continue
        assert command["name"].isascii() and command["name"].islower()  # sent back in English
        names = [command["name"], *(command.get("name_localizations") or {}).values()]
        names += [
            name
            for option in command["options"]
            for name in (option["name"], *(option.get("name_localizations") or {}).values())
        ]
        assert all(is_chat_input_name(name) for name in names), names
        assert command["name_localizations"]["ko"] != command["name"]
        assert all(option["name_localizations"]["ko"] for option in command["options"])
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
    assert [option["name"] for option in imagine["options"]] == OPTION_ORDER
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
            assert count == len(synced.json) == 12  # 9 slash commands with /admin, 3 menus
            assert await sync_commands(settings, guild=1) == 12
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


class Renamed(CatalogTranslator):
    """The catalog's translations, with chosen Korean names in place of some: what a catalog
    with a bad name would send."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        translated = await super().translate(string, locale, context)
        return self.names.get(string.message, translated)


def name_tree(client: discord.Client) -> app_commands.CommandTree[Any]:
    """A group, a slash command with a choice and a message context menu, every name a
    catalog key."""
    tree: app_commands.CommandTree[Any] = app_commands.CommandTree(client)
    group = app_commands.Group(name=named(Key.NAME_IMAGINE), description=described(Key.CMD_HELP))

    @group.command(name=named(Key.NAME_STEPS), description=described(Key.ARG_STEPS))
    @app_commands.rename(count=named(Key.NAME_COUNT))
    @app_commands.describe(count=described(Key.ARG_COUNT))
    @app_commands.choices(count=[app_commands.Choice(name=named(Key.CHOICE_HIRES_OFF), value=0)])
    async def steps(interaction: discord.Interaction[Any], count: int) -> None:
        return None

    async def info(interaction: discord.Interaction[Any], message: discord.Message) -> None:
        return None

    tree.add_command(group)
    tree.add_command(app_commands.ContextMenu(name=named(Key.NAME_IMAGE), callback=info))
    return tree


async def sync_with(fake: FakeDiscord, translator: CatalogTranslator) -> RecordedCall:
    client = discord.Client(intents=discord.Intents.default())
    tree = name_tree(client)
    async with client:
        await client.login(fake.settings.token)
        await tree.set_translator(translator)
        with contextlib.suppress(discord.HTTPException):
            await tree.sync()
    return fake.calls_to(GLOBAL_SYNC)[-1]


def test_group_command_option_choice_and_context_menu_names_are_translated_and_checked() -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            synced = await sync_with(fake, CatalogTranslator())
            assert synced.status == 200, synced.response
            group, menu = synced.json
            assert (group["name"], group["name_localizations"]) == ("imagine", {"ko": "그리기"})
            (command,) = group["options"]
            assert command["name_localizations"] == {"ko": "단계"}
            (option,) = command["options"]
            assert option["name_localizations"] == {"ko": "개수"}
            assert option["choices"][0]["name_localizations"] == {"ko": "끄기"}
            assert (menu["type"], menu["name_localizations"]) == (3, {"ko": "이미지"})

            # A context menu's name may have capitals and spaces; a slash command's may not.
            spaced = await sync_with(fake, Renamed({"image": "이미지 정보 Info"}))
            assert spaced.status == 200, spaced.response
            for bad in ("그림 그리기", "Imagine", "그리기!", "가" * 33):
                refused = await sync_with(fake, Renamed({"imagine": bad}))
                assert (refused.status, refused.response["code"]) == (400, 50035), bad
                errors = refused.response["errors"]["0"]["name_localizations"]["ko"]
                assert errors["_errors"][0]["code"] == "APPLICATION_COMMAND_INVALID_NAME"
            refused = await sync_with(fake, Renamed({"count": "개 수"}))  # an option's name
            assert refused.status == 400 and refused.response["code"] == 50035
            long_menu = await sync_with(fake, Renamed({"image": "가" * 33}))
            assert long_menu.status == 400 and long_menu.response["code"] == 50035

    run(scenario)
