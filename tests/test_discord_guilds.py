"""EASEL_DISCORD_GUILDS: at start the bot syncs its commands globally and to each listed guild,
where Discord shows them at once; a guild command answers like the global one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bot.settings import Settings
from pipeline.engine import Engine
from tests.fakes.discord import (
    DEFERRED_CHANNEL_MESSAGE,
    DiscordError,
    FakeDiscord,
    RecordedCall,
    fake_discord,
    pointed_at,
)
from tests.test_discord import WAIT_S, run, serving

GLOBAL = "PUT /applications/{application_id}/commands"
GUILD = "PUT /applications/{application_id}/guilds/{guild_id}/commands"
OTHER_GUILD = 1_100_000_000_000_000_099


def test_the_commands_are_synced_to_each_listed_guild(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            guilds = f" {fake.guild.id}, {OTHER_GUILD} "
            async with serving(tmp_path, fake, engine, discord_guilds=guilds):
                await fake.wait_until(lambda: len(fake.calls_to(GUILD)) == 2, WAIT_S)
                [global_sync] = fake.calls_to(GLOBAL)
                names = sorted(command["name"] for command in global_sync.json)
                assert "imagine" in names
                for call, guild in zip(
                    fake.calls_to(GUILD), (fake.guild.id, OTHER_GUILD), strict=True
                ):
                    assert call.status == 200 and call.params["guild_id"] == str(guild)
                    assert sorted(command["name"] for command in call.json) == names
                assert fake.commands[fake.guild.id][0]["guild_id"] == str(fake.guild.id)

                sent = await fake.slash("imagine", {"prompt": "a kite --steps 2"})
                assert sent.payload["data"]["guild_id"] == str(fake.guild.id)  # the guild copy
                ack = await sent.next_call(timeout=WAIT_S)
                assert ack.json["type"] == DEFERRED_CHANNEL_MESSAGE and ack.status < 300
                queued = await sent.next_call(lambda c: c.method == "PATCH", timeout=WAIT_S)
                assert queued.json["content"].startswith("Job #1 is queued")
            assert not fake.refused_calls

    run(scenario)


class NotInOtherGuild(FakeDiscord):
    """Discord refuses guild commands where the application was not added (403, 50001)."""

    async def _put_commands(self, request: Any, call: RecordedCall) -> Any:
        if call.params.get("guild_id") == str(OTHER_GUILD):
            raise DiscordError(403, 50001, "Missing Access")
        return await super()._put_commands(request, call)


def test_a_guild_that_refuses_is_logged_and_the_others_still_synced(
    tmp_path: Path, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        fake = NotInOtherGuild()
        await fake.start()
        try:
            with pointed_at(fake):
                guilds = f"{OTHER_GUILD},{fake.guild.id}"
                async with serving(tmp_path, fake, engine, discord_guilds=guilds):
                    await fake.wait_until(lambda: len(fake.calls_to(GUILD)) == 2, WAIT_S)
                    await fake.wait_until(lambda: fake.guild.id in fake.commands, WAIT_S)
                    refused, synced = fake.calls_to(GUILD)
                    assert (refused.status, synced.status) == (403, 200)
                    sent = await fake.slash("imagine", {"prompt": "a kite --steps 2"})
                    ack = await sent.next_call(timeout=WAIT_S)
                    assert ack.status < 300  # the bot runs on
        finally:
            await fake.close()

    with caplog.at_level(logging.WARNING, logger="bot.discord"):
        run(scenario)
    assert f"not synced to guild {OTHER_GUILD}" in caplog.text
    assert "easel discord invite" in caplog.text


def test_no_guilds_syncs_globally_only(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine):
            assert len(fake.calls_to(GLOBAL)) == 1
        assert fake.calls_to(GUILD) == []

    run(scenario)


def test_a_guild_list_is_read_and_a_bad_id_refused() -> None:
    settings = Settings(_env_file=None, discord_guilds="12, 34,,")
    assert settings.discord_guild_ids() == (12, 34)
    assert Settings(_env_file=None).discord_guild_ids() == ()
    with pytest.raises(ValidationError, match="'my-server' is not a guild id"):
        Settings(_env_file=None, discord_guilds="12,my-server")
