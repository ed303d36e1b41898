"""/imagine's steps, cfg and count options carry the server's limits (EASEL_MAX_STEPS,
EASEL_MIN_CFG, EASEL_MAX_CFG, EASEL_MAX_IMAGES) in what is synced and printed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

from typer.testing import CliRunner

from bot.cli import app
from bot.core.config import CoreConfig
from bot.core.frontend import BotContext
from bot.core.service import JobService
from bot.discord.client import EaselClient
from bot.discord.sync import command_payload, sync_commands
from bot.settings import Settings
from pipeline.validation import Limits
from tests.fakes.discord import fake_discord
from tests.test_discord import run
from tests.test_discord_translator import GLOBAL_SYNC

LIMITS = {
    "EASEL_MAX_STEPS": "50",
    "EASEL_MIN_CFG": "2",
    "EASEL_MAX_CFG": "12.5",
    "EASEL_MAX_IMAGES": "2",
}


def bounds(commands: list[dict[str, Any]]) -> dict[str, tuple[object, object]]:
    imagine = next(command for command in commands if command["name"] == "imagine")
    return {
        option["name"]: (option.get("min_value"), option.get("max_value"))
        for option in imagine["options"]
        if option["name"] in ("steps", "cfg", "count")
    }


EXPECTED = {"steps": (1, 50), "cfg": (2.0, 12.5), "count": (1, 2)}


def test_easel_discord_commands_shows_the_settings_limits(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["discord", "commands"], env=LIMITS)
    assert result.exit_code == 0, (result.output, result.exception)
    assert bounds(json.loads(result.stdout)) == EXPECTED


def test_the_synced_imagine_options_carry_the_settings_limits(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            settings = Settings(
                _env_file=None,
                outputs_dir=tmp_path / "out",
                models_dir=tmp_path / "models",
                DISCORD_TOKEN=fake.settings.token,
                discord_api_url=fake.api_base,
                discord_gateway_url=fake.gateway_url,
                max_steps=50,
                min_cfg=2,
                max_cfg=12.5,
                max_images=2,
            )
            await sync_commands(settings)
            (synced,) = fake.calls_to(GLOBAL_SYNC)
            assert synced.status == 200, synced.response
            assert bounds(list(synced.json)) == EXPECTED

    run(scenario)


def test_the_running_bot_takes_its_limits_from_the_job_service() -> None:
    class Service:
        config = CoreConfig(outputs_dir=Path("out"), limits=Limits(max_steps=40, max_images=3))

    async def scenario() -> list[dict[str, Any]]:
        client = EaselClient(BotContext(cast(JobService, Service())))
        return [command.to_dict(client.tree) for command in client.tree.get_commands()]

    payload = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert bounds(payload) == {"steps": (1, 40), "cfg": (1.0, 30.0), "count": (1, 3)}


def test_the_default_limits_are_the_readmes() -> None:
    payload = asyncio.run(asyncio.wait_for(command_payload(Limits()), 60))
    assert bounds(payload) == {"steps": (1, 100), "cfg": (1.0, 30.0), "count": (1, 4)}
