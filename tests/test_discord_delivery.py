"""Where a Discord result goes in the hard cases, with a real bot on the tiny model against the
fake Discord: past the interaction's token, a channel that refuses the bot, a user who takes no
DMs, an upload limit the grid exceeds, NSFW prompts by channel, and a user-installed app."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import discord
from discord import app_commands
from PIL import Image

from bot.discord.delivery import MAX_FOLLOWUPS, FollowUpLimit, FollowUps
from bot.discord.render import fit_upload, size_text
from bot.runtime import Bot
from bot.store import Delivery, JobStatus
from pipeline.engine import Engine
from tests.fakes.discord import (
    MESSAGE_FLAG_EPHEMERAL,
    FakeChannel,
    FakeDiscord,
    FakeDiscordSettings,
    FakeGuild,
    RecordedCall,
    fake_discord,
    running,
)
from tests.test_discord import JOB_WAIT_S, WAIT_S, is_result, run, serving

GUILD_ID = 1_100_000_000_000_000_010
GENERAL = 1_100_000_000_000_000_011
ADULTS = 1_100_000_000_000_000_012
OWNER = 1_100_000_000_000_000_002
SMALL_LIMIT = 16 * 1024  # a guild whose uploads stop at 16 KiB: the tiny model's grid exceeds it
CREATE_MESSAGE = "POST /channels/{channel_id}/messages"


def settings(filesize_limit: int | None = None) -> FakeDiscordSettings:
    channels = [FakeChannel(GENERAL, "general"), FakeChannel(ADULTS, "adults", nsfw=True)]
    guild = FakeGuild(GUILD_ID, "Easel Test Guild", OWNER, channels, filesize_limit=filesize_limit)
    return FakeDiscordSettings(guilds=[guild])


def has_png(call: RecordedCall) -> bool:
    return any(f.data.startswith(b"\x89PNG") for f in call.files)


def is_posted_result(call: RecordedCall) -> bool:
    """A new message with a result (a PNG, or a JPEG that fits), posted through a channel (a
    reply, or a DM)."""
    images = (b"\x89PNG", b"\xff\xd8")
    return call.matches(CREATE_MESSAGE) and any(f.data.startswith(images) for f in call.files)


def expire_after_first_edit(fake: FakeDiscord) -> None:
    """The next interaction's token dies right after its first edit (the queued line): every
    later webhook call for it is refused with 401 / 50027, as after 15 minutes."""
    fake.after_call(
        lambda c: c.method == "PATCH" and c.route.startswith("/webhooks/") and c.status == 200,
        lambda c: fake.expire_token(c.params["token"]),
    )


def fast_retries(bot: Bot, delay: float = 0.3) -> None:
    dispatcher = bot.service.dispatcher
    dispatcher.config = replace(dispatcher.config, delivery_retry_delays=(delay,))


async def status_message_of(fake: FakeDiscord, token: str) -> int:
    edit = await fake.wait_for_call(
        lambda c: c.params.get("token") == token and c.method == "PATCH" and c.status == 200,
        timeout=WAIT_S,
    )
    return int(edit.response["id"])


def test_past_the_token_the_result_replies_in_the_channel_and_mentions_the_user_alone(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord(settings()) as fake, serving(tmp_path, fake, engine) as bot:
            expire_after_first_edit(fake)
            prompt = "a lighthouse @everyone <@&1234> --steps 2"
            sent = await fake.slash("imagine", {"prompt": prompt, "count": 2})
            status = await status_message_of(fake, sent.token)
            posted = await fake.wait_for_call(is_posted_result, timeout=JOB_WAIT_S)
            assert posted.status == 200, posted.response
            assert posted.params["channel_id"] == str(GENERAL)
            assert posted.json["content"].startswith(f"<@{OWNER}> Job #1 is done")
            allowed = posted.json["allowed_mentions"]
            assert allowed["parse"] == []  # no @everyone, no roles, no one else
            assert [int(user) for user in allowed["users"]] == [OWNER]
            assert not allowed.get("replied_user")
            assert posted.json["message_reference"]["message_id"] in (status, str(status))
            stored = fake.messages[int(posted.response["id"])]
            assert stored["mention_everyone"] is False
            assert [int(user["id"]) for user in stored["mentions"]] == [OWNER]
            job = bot.store.job(1, with_images=True)
            assert job is not None and job.grid_path is not None
            assert posted.files[0].data == Path(job.grid_path).read_bytes()
            assert stored["components"]  # the grid keeps its buttons
            await until(lambda: _delivered(bot, 1))
            job = bot.store.job(1)
            assert job is not None
            assert job.status_message == f"discord:{GENERAL}:{posted.response['id']}"
            refused = {(c.status, c.response["code"]) for c in fake.refused_calls}
            assert refused <= {(401, 50027)}  # only the dead token was refused
            assert len([c for c in fake.calls if is_posted_result(c)]) == 1

    run(scenario)


def test_a_deleted_status_message_gets_the_result_as_a_follow_up(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord(settings()) as fake, serving(tmp_path, fake, engine) as bot:
            fake.after_call(
                lambda c: (
                    c.method == "PATCH" and c.route.startswith("/webhooks/") and c.status < 300
                ),
                lambda c: fake.delete_message(int(c.response["id"])),
            )
            sent = await fake.slash("imagine", {"prompt": "a red kite --steps 2", "count": 1})
            followup = await sent.next_call(
                lambda c: c.method == "POST" and has_png(c), timeout=JOB_WAIT_S
            )
            assert followup.status == 200, followup.response
            assert followup.route == "/webhooks/{application_id}/{token}"
            assert followup.json["content"].startswith(f"<@{OWNER}> Job #1 is done")
            assert [int(u) for u in followup.json["allowed_mentions"]["users"]] == [OWNER]
            await until(lambda: _delivered(bot, 1))
            assert not [c for c in fake.calls if is_posted_result(c)]

    run(scenario)


def test_a_channel_that_refuses_the_bot_sends_the_result_by_dm(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord(settings()) as fake, serving(tmp_path, fake, engine) as bot:
            fake.block_channel(GENERAL)
            expire_after_first_edit(fake)
            await fake.slash("imagine", {"prompt": "a windmill --steps 2", "count": 2})
            posted = await fake.wait_for_call(
                lambda c: is_posted_result(c) and c.status == 200, timeout=JOB_WAIT_S
            )
            assert int(posted.params["channel_id"]) == fake.dm_channels[OWNER]
            assert "could not post in the channel" in posted.json["content"]
            assert "Job #1 is done" in posted.json["content"]
            refused = [c for c in fake.calls if is_posted_result(c) and c.status >= 400]
            assert [(c.status, c.response["code"]) for c in refused] == [(403, 50013)]
            await until(lambda: _delivered(bot, 1))

    run(scenario)


def test_refused_everywhere_the_result_is_retried_and_delivered_once_when_it_can_be(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord(settings()) as fake, serving(tmp_path, fake, engine) as bot:
            fast_retries(bot)
            fake.block_channel(GENERAL)
            fake.close_dms(OWNER)
            expire_after_first_edit(fake)
            await fake.slash("imagine", {"prompt": "a harbour --steps 2", "count": 2})

            def dm_refusals() -> int:
                return len([c for c in fake.refused_calls if c.response["code"] == 50007])

            await fake.wait_until(lambda: dm_refusals() >= 2, JOB_WAIT_S)  # tried again
            job = bot.store.job(1)
            assert job is not None and job.status is JobStatus.DONE
            assert job.delivery is not Delivery.DELIVERED
            assert job.delivery_attempts >= 2
            assert not [c for c in fake.calls if is_posted_result(c) and c.status < 300]

            fake.open_dms(OWNER)
            await until(lambda: _delivered(bot, 1))
            delivered = [c for c in fake.calls if is_posted_result(c) and c.status < 300]
            assert len(delivered) == 1
            assert int(delivered[0].params["channel_id"]) == fake.dm_channels[OWNER]
            await asyncio.sleep(1.0)  # a few retry intervals: no retry sends it again
            assert [c for c in fake.calls if is_posted_result(c) and c.status < 300] == delivered

    run(scenario)


def test_a_result_the_channel_never_took_is_delivered_at_the_next_start(
    tmp_path: Path, engine: Engine
) -> None:
    """After the restart the bot knows only the guild's boost level (10 MiB), not its 16 KiB
    limit: the PNG is refused with 40005 and goes again, re-encoded under half its size."""

    async def scenario() -> None:
        async with fake_discord(settings(filesize_limit=SMALL_LIMIT)) as fake:
            async with serving(tmp_path, fake, engine) as bot:
                bot.service.dispatcher.config = replace(
                    bot.service.dispatcher.config, delivery_retry_delays=(600.0,)
                )
                fake.block_channel(GENERAL)
                fake.close_dms(OWNER)
                expire_after_first_edit(fake)
                sent = await fake.slash("imagine", {"prompt": "a dune --steps 2", "count": 2})
                status = await status_message_of(fake, sent.token)
                await fake.wait_until(
                    lambda: any(c.response["code"] == 50007 for c in fake.refused_calls),
                    JOB_WAIT_S,
                )
            fake.unblock_channel(GENERAL)
            async with serving(tmp_path, fake, engine) as bot:
                await until(lambda: _delivered(bot, 1))
            delivered = [c for c in fake.calls if is_posted_result(c) and c.status < 300]
            assert len(delivered) == 1
            assert delivered[0].params["channel_id"] == str(GENERAL)
            assert delivered[0].json["message_reference"]["message_id"] in (status, str(status))
            assert delivered[0].json["content"].startswith(f"<@{OWNER}> ")
            assert "full PNG with its parameters is kept" in delivered[0].json["content"]
            upload = delivered[0].files[0]
            assert upload.data.startswith(b"\xff\xd8") and len(upload.data) <= SMALL_LIMIT
            too_large = [c for c in fake.refused_calls if c.response["code"] == 40005]
            assert len(too_large) == 1 and too_large[0].files[0].data.startswith(b"\x89PNG")

    run(scenario)


def test_a_grid_over_the_guilds_upload_limit_is_re_encoded_under_it_with_a_note(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with (
            fake_discord(settings(filesize_limit=SMALL_LIMIT)) as fake,
            serving(tmp_path, fake, engine) as bot,
        ):
            sent = await fake.slash("imagine", {"prompt": "a noisy forest --steps 2", "count": 4})
            assert sent.payload["attachment_size_limit"] == SMALL_LIMIT
            final = await sent.next_call(
                lambda c: c.method == "PATCH" and any(f.filename.endswith(".jpg") for f in c.files)
                and "is done" in (c.json or {}).get("content", ""),
                timeout=JOB_WAIT_S,
            )  # fmt: skip
            assert final.status == 200, final.response
            job = bot.store.job(1, with_images=True)
            assert job is not None and job.grid_path is not None
            png = Path(job.grid_path).read_bytes()
            assert len(png) > SMALL_LIMIT  # the test means something: the PNG does not fit
            upload = final.files[0]
            assert upload.data.startswith(b"\xff\xd8") and len(upload.data) <= SMALL_LIMIT
            with Image.open(io.BytesIO(upload.data)) as picture:
                assert picture.format == "JPEG"
            assert "16 KiB" in final.json["content"]
            assert "full PNG with its parameters is kept on the server" in final.json["content"]
            assert "/info 1" in final.json["content"]
            assert not fake.refused_calls

            # The fake itself refuses what does not fit, as Discord does.
            status, body = await _raw_upload(fake, GENERAL, png)
            assert (status, body["code"]) == (413, 40005)

    run(scenario)


def test_nsfw_prompts_are_refused_in_a_plain_channel_and_spoilered_in_an_age_restricted_one(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord(settings()) as fake, serving(tmp_path, fake, engine) as bot:
            plain = await fake.slash("imagine", {"prompt": "a nude figure study --steps 2"})
            answer = await plain.next_call(
                lambda c: c.method == "POST" and c.route.startswith("/webhooks/"), timeout=WAIT_S
            )
            assert answer.json["flags"] & MESSAGE_FLAG_EPHEMERAL
            assert answer.json["content"] == "NSFW prompts are not allowed in this chat (nude)."
            assert bot.store.job(1) is None

            refused = await fake.slash(
                "imagine", {"prompt": "a nude figure study --steps 2"}, channel_id=ADULTS
            )
            answer = await refused.next_call(
                lambda c: c.method == "POST" and c.route.startswith("/webhooks/"), timeout=WAIT_S
            )
            assert "NSFW" in answer.json["content"]  # until an Easel admin allows them
            bot.store.update_chat("discord", str(ADULTS), nsfw_allowed=True)
            adults = await fake.slash(
                "imagine",
                {"prompt": "a nude figure study --steps 2", "count": 1},
                channel_id=ADULTS,
            )
            final = await adults.next_call(is_result, timeout=JOB_WAIT_S)
            assert final.status == 200, final.response
            assert final.files[0].filename.startswith("SPOILER_")
            stored = fake.messages[int(final.response["id"])]
            assert stored["attachments"][0]["filename"].startswith("SPOILER_")

            safe = await fake.slash(
                "imagine", {"prompt": "a teapot --steps 2", "count": 1}, channel_id=ADULTS
            )
            final = await safe.next_call(is_result, timeout=JOB_WAIT_S)
            assert not final.files[0].filename.startswith("SPOILER_")

    run(scenario)


def test_a_user_installed_imagine_in_a_dm_delivers_its_grid(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with fake_discord(settings()) as fake, serving(tmp_path, fake, engine) as bot:
            for command in fake.commands[None]:
                if command["name"] == "admin":  # servers only: tests/test_discord_admin.py
                    assert command["integration_types"] == [0] and command["contexts"] == [0]
                    continue
                assert command["integration_types"] == [0, 1], command["name"]
                assert command["contexts"] == [0, 1, 2], command["name"]
            sent = await fake.slash(
                "imagine",
                {"prompt": "a paper boat --steps 2", "count": 2},
                guild=None,
                user_install=True,
            )
            assert sent.payload["context"] == 1
            assert sent.payload["authorizing_integration_owners"] == {"1": str(OWNER)}
            status = await status_message_of(fake, sent.token)  # the deferred answer
            final = await sent.next_call(is_result, timeout=JOB_WAIT_S)
            assert final.status == 200, final.response
            assert int(final.response["id"]) == status  # edited in place, in the DM
            assert final.response["channel_id"] == str(fake.dm_channels[OWNER])
            job = bot.store.job(1, with_images=True)
            assert job is not None and job.grid_path is not None
            assert final.files[0].data == Path(job.grid_path).read_bytes()
            assert not fake.refused_calls

    run(scenario)


def test_a_user_installed_imagine_in_a_group_dm_past_its_token_goes_by_dm(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord(settings()) as fake, serving(tmp_path, fake, engine) as bot:
            expire_after_first_edit(fake)
            group = 1_100_000_000_000_000_099  # a group DM the bot is not in
            sent = await fake.slash(
                "imagine",
                {"prompt": "a kite --steps 2", "count": 1},
                guild=None,
                channel_id=group,
                user_install=True,
            )
            assert sent.payload["context"] == 2
            posted = await fake.wait_for_call(
                lambda c: is_posted_result(c) and c.status == 200, timeout=JOB_WAIT_S
            )
            assert int(posted.params["channel_id"]) == fake.dm_channels[OWNER]
            await until(lambda: _delivered(bot, 1))

    run(scenario)


def test_no_more_than_five_follow_ups_go_out_per_interaction() -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)
            tree = app_commands.CommandTree(
                client, allowed_installs=app_commands.AppInstallationType(guild=True, user=True)
            )
            outcome: dict[str, Any] = {}
            followups = FollowUps()

            @tree.command(name="many", description="six follow-ups")
            async def many(interaction: discord.Interaction[Any]) -> None:
                await interaction.response.defer()
                for number in range(MAX_FOLLOWUPS + 1):
                    try:
                        await followups.send(interaction, f"follow-up {number + 1}")
                    except FollowUpLimit:
                        outcome["stopped_at"] = number + 1
                # Past the count, Discord itself refuses (40094): the count is not too strict.
                try:
                    await interaction.followup.send("one too many")
                except discord.HTTPException as error:
                    outcome["refused"] = (error.status, error.code)
                outcome["done"] = True

            async with running(client, fake):
                await tree.sync()
                sent = await fake.slash("many", user_install=True)
                await until(lambda: "done" in outcome)
            posted = [c for c in fake.calls if sent.concerns(c) and c.method == "POST"]
            followups_ok = [
                c for c in posted if c.route.startswith("/webhooks/") and c.status < 300
            ]
            assert len(followups_ok) == MAX_FOLLOWUPS
            assert outcome["stopped_at"] == MAX_FOLLOWUPS + 1
            assert outcome["refused"] == (400, 40094)

    run(scenario)


async def until(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Wait up to `timeout` seconds for `condition` about the bot's database to hold."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


def _delivered(bot: Bot, job_id: int) -> bool:
    job = bot.store.job(job_id)
    return job is not None and job.delivery is Delivery.DELIVERED


async def _raw_upload(fake: FakeDiscord, channel_id: int, data: bytes) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("payload_json", '{"content": ""}', content_type="application/json")
    form.add_field("files[0]", data, filename="grid.png", content_type="image/png")
    headers = {"Authorization": f"Bot {fake.settings.token}"}
    url = f"{fake.api_base}/channels/{channel_id}/messages"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=form, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


def test_fitting_keeps_a_png_that_fits_and_lowers_quality_then_size_until_one_does() -> None:
    noise = Image.effect_noise((384, 384), 90).convert("RGB")
    out = io.BytesIO()
    noise.save(out, "PNG")
    png = out.getvalue()

    kept = fit_upload(png, "grid.png", len(png))
    assert (kept.data, kept.filename, kept.reencoded) == (png, "grid.png", False)

    mild = fit_upload(png, "grid.png", len(png) // 2)
    assert mild.reencoded and mild.filename == "grid.jpg" and len(mild.data) <= len(png) // 2
    with Image.open(io.BytesIO(mild.data)) as picture:
        assert picture.size == (384, 384)  # a lower quality was enough

    tight = fit_upload(png, "grid.png", 12 * 1024)
    assert len(tight.data) <= 12 * 1024
    with Image.open(io.BytesIO(tight.data)) as picture:
        assert picture.format == "JPEG" and picture.size[0] < 384  # scaled down as well
    assert (size_text(10 * 1024 * 1024), size_text(64 * 1024), size_text(1536)) == (
        "10 MiB",
        "64 KiB",
        "1.5 KiB",
    )
