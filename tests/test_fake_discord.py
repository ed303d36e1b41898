"""The fake Discord in tests/fakes/discord.py, driven by the real discord.py client: what an
adapter test relies on (login, READY, sync, interactions, recorded calls) and Discord's refusals
(late or repeated acknowledgements, expired tokens, big uploads, bad payloads, 429s)."""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.fakes.discord import (
    FakeDiscord,
    FakeDiscordSettings,
    RecordedCall,
    fake_discord,
    no_identify_wait,
    running,
)

TEST_TIMEOUT_S = 30
WAIT_S = 5.0
STYLES = ["anime", "oil painting", "pixel art", "watercolour"]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TEST_TIMEOUT_S))


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Harness:
    """A bot with `/imagine` the way a front end would write one, and what its handlers saw."""

    bot: commands.Bot
    outcomes: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    upload: bytes = b""
    hold_before_defer: bool = False
    hold_before_edit: bool = False

    async def outcome(self) -> Any:
        return await asyncio.wait_for(self.outcomes.get(), WAIT_S)


class RemixModal(discord.ui.Modal, title="Remix"):
    prompt: discord.ui.TextInput[RemixModal] = discord.ui.TextInput(
        label="Prompt", custom_id="remix-prompt"
    )

    def __init__(self, harness: Harness) -> None:
        super().__init__(custom_id="easel:remix-modal")
        self.harness = harness

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"remixing: {self.prompt.value}")
        await self.harness.outcomes.put(("remix", self.prompt.value))


class GridView(discord.ui.View):
    def __init__(self, harness: Harness) -> None:
        super().__init__(timeout=None)
        self.harness = harness

    @discord.ui.button(label="U1", custom_id="easel:1:u1")
    async def upscale(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_message(f"upscaling for {interaction.user.name}")
        await self.harness.outcomes.put(("pressed", button.custom_id))

    @discord.ui.button(label="V1", custom_id="easel:1:v1")
    async def vary(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content="varying", view=None)

    @discord.ui.button(label="S1", custom_id="easel:1:s1")
    async def similar(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="similar queued")

    @discord.ui.button(label="Remix", custom_id="easel:1:remix")
    async def remix(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_modal(RemixModal(self.harness))


def make_harness() -> Harness:
    bot = commands.Bot(
        command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.05
    )
    harness = Harness(bot)

    @bot.tree.command(name="imagine", description="Draw a picture")
    @app_commands.describe(prompt="What to draw", aspect="The shape", style="A style")
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ("1:1", "2:3", "3:2")]
    )
    async def imagine(
        interaction: discord.Interaction,
        prompt: str,
        aspect: str = "1:1",
        style: str | None = None,
        image: discord.Attachment | None = None,
    ) -> None:
        try:
            if harness.hold_before_defer:
                await asyncio.wait_for(harness.gate.wait(), WAIT_S)
            await interaction.response.defer(thinking=True)
            source = await image.read() if image is not None else b""
            if harness.hold_before_edit:
                await asyncio.wait_for(harness.gate.wait(), WAIT_S)
            grid = discord.File(io.BytesIO(harness.upload or png_bytes()), filename="grid.png")
            await interaction.edit_original_response(
                content=f"{prompt} ({aspect}, {style}, {interaction.locale.value})",
                attachments=[grid],
                view=GridView(harness),
            )
            await harness.outcomes.put(("done", interaction, source))
        except discord.HTTPException as error:
            await harness.outcomes.put(error)

    @imagine.autocomplete("style")
    async def style_choices(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=s, value=s) for s in STYLES if current in s]

    @app_commands.context_menu(name="PNG info")
    async def png_info(interaction: discord.Interaction, message: discord.Message) -> None:
        [attachment] = message.attachments
        data = await attachment.read()
        await interaction.response.send_message(
            f"{attachment.filename}: {len(data)} bytes", ephemeral=True
        )

    bot.tree.add_command(png_info)
    return harness


async def synced(fake: FakeDiscord, harness: Harness) -> RecordedCall:
    guild = discord.Object(fake.guild.id)
    harness.bot.tree.copy_global_to(guild=guild)
    await harness.bot.tree.sync(guild=guild)
    return fake.calls_to("PUT /applications/{application_id}/guilds/{guild_id}/commands")[-1]


def test_login_ready_sync_and_a_slash_command_with_file_and_buttons() -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            harness = make_harness()
            async with running(harness.bot, fake):
                assert harness.bot.user is not None
                assert harness.bot.user.id == fake.settings.bot_user.id
                assert harness.bot.get_guild(fake.guild.id) is not None
                assert fake.identify_payloads[0]["token"] == fake.settings.token
                assert fake.heartbeats >= 1 and math.isfinite(harness.bot.latency)
                shards, url, _ = await harness.bot.http.get_bot_gateway()
                assert (shards, url) == (1, fake.gateway_url.rstrip("/"))

                put = await synced(fake, harness)
                command, menu = put.json
                assert command["name"] == "imagine" and command["type"] == 1
                assert (menu["name"], menu["type"]) == ("PNG info", 3)
                assert [o["name"] for o in command["options"]] == [
                    "prompt",
                    "aspect",
                    "style",
                    "image",
                ]
                assert [c["value"] for c in command["options"][1]["choices"]] == [
                    "1:1",
                    "2:3",
                    "3:2",
                ]
                assert command["options"][2]["autocomplete"] is True
                assert command["options"][3]["type"] == 11  # attachment

                source = fake.add_attachment("in.png", png_bytes())
                sent = await fake.slash(
                    "imagine",
                    {"prompt": "a red fox", "aspect": "2:3", "image": source},
                    locale="ko",
                )
                ack = await sent.next_call(timeout=WAIT_S)
                assert ack.route == "/interactions/{interaction_id}/{token}/callback"
                assert ack.json["type"] == 5 and ack.status == 200
                assert ack.at >= sent.dispatched_at  # both on the fake's clock

                edit = await sent.next_call(timeout=WAIT_S)
                assert edit.method == "PATCH" and edit.status == 200
                assert edit.route.endswith("/messages/@original")
                assert edit.json["content"] == "a red fox (2:3, None, ko)"
                [upload] = edit.files
                assert upload.filename == "grid.png" and upload.data == png_bytes()
                [row] = edit.json["components"]
                assert [b["custom_id"] for b in row["components"]] == [
                    "easel:1:u1",
                    "easel:1:v1",
                    "easel:1:s1",
                    "easel:1:remix",
                ]

                kind, interaction, read = await harness.outcome()
                assert kind == "done" and read == png_bytes()
                assert interaction.guild_id == fake.guild.id
                message_id = int(edit.response["id"])
                assert fake.messages[message_id]["attachments"][0]["filename"] == "grid.png"

                press = await fake.press(message_id, "easel:1:u1")
                answer = await press.next_call(timeout=WAIT_S)
                assert answer.json["type"] == 4
                assert answer.json["data"]["content"] == "upscaling for owner"
                assert await harness.outcome() == ("pressed", "easel:1:u1")

                deferred = await fake.press(message_id, "easel:1:s1")
                assert (await deferred.next_call(timeout=WAIT_S)).json == {"type": 6}
                await deferred.next_call(timeout=WAIT_S)
                assert fake.messages[message_id]["content"] == "similar queued"

                updated = await fake.press(message_id, "easel:1:v1")
                update = await updated.next_call(timeout=WAIT_S)
                assert update.json["type"] == 7
                assert fake.messages[message_id]["content"] == "varying"
                assert fake.messages[message_id]["components"] == []

                synced_back = await harness.bot.tree.fetch_commands(
                    guild=discord.Object(fake.guild.id)
                )
                assert sorted(c.name for c in synced_back) == ["PNG info", "imagine"]

    run(scenario)


def test_autocomplete_context_menu_modal_and_a_user_installed_dm() -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            harness = make_harness()
            async with running(harness.bot, fake):
                await synced(fake, harness)
                fake.commands[None] = fake.commands[fake.guild.id]  # as if synced globally

                asked = await fake.autocomplete("imagine", {"prompt": "x", "style": "r"}, "style")
                offered = await asked.next_call(timeout=WAIT_S)
                assert offered.json == {
                    "type": 8,
                    "data": {
                        "choices": [
                            {"name": "pixel art", "value": "pixel art"},
                            {"name": "watercolour", "value": "watercolour"},
                        ]
                    },
                }

                sent = await fake.slash(
                    "imagine", {"prompt": "a boat"}, guild=None, user_install=True
                )
                await sent.next_call(timeout=WAIT_S)
                edit = await sent.next_call(timeout=WAIT_S)
                _, interaction, _ = await harness.outcome()
                assert interaction.guild is None
                assert isinstance(interaction.channel, discord.DMChannel)
                assert interaction.context.dm_channel

                message_id = int(edit.response["id"])
                press = await fake.press(message_id, "easel:1:remix")
                await press.next_call(timeout=WAIT_S)
                modal = fake.modal_shown(press)
                assert modal["custom_id"] == "easel:remix-modal"
                submitted = await fake.submit_modal(
                    modal["custom_id"], {"remix-prompt": "a bigger boat"}, message_id=message_id
                )
                answer = await submitted.next_call(timeout=WAIT_S)
                assert answer.json["data"]["content"] == "remixing: a bigger boat"
                assert await harness.outcome() == ("remix", "a bigger boat")

    run(scenario)


def test_a_late_acknowledgement_is_unknown_and_a_second_one_refused() -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            harness = make_harness()
            harness.hold_before_defer = True
            async with running(harness.bot, fake):
                await synced(fake, harness)
                sent = await fake.slash("imagine", {"prompt": "slow"})
                fake.advance_clock(3.5)
                harness.gate.set()
                error = await harness.outcome()
                assert isinstance(error, discord.NotFound)
                assert error.code == 10062 and error.status == 404
                refused = await sent.next_call(timeout=WAIT_S)
                assert refused.status == 404

                # In time, once: fine. Twice: 40060.
                twice = await fake.slash("imagine", {"prompt": "twice"})
                await twice.next_call(timeout=WAIT_S)
                await harness.outcome()
                # discord.py itself refuses a second response, so ask the way another
                # process holding the token would.
                url = f"{fake.api_base}/interactions/{twice.id}/{twice.token}/callback"
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(url, json={"type": 5}) as response,
                ):
                    assert response.status == 400
                    assert (await response.json())["code"] == 40060

    run(scenario)


def test_an_expired_token_and_an_oversized_upload_are_refused() -> None:
    async def scenario() -> None:
        settings = FakeDiscordSettings(token_window_s=60.0)
        async with fake_discord(settings) as fake:
            harness = make_harness()
            harness.hold_before_edit = True
            async with running(harness.bot, fake):
                await synced(fake, harness)
                late = await fake.slash("imagine", {"prompt": "too late"})
                assert (await late.next_call(timeout=WAIT_S)).status == 200  # the defer
                fake.advance_clock(61)
                harness.gate.set()
                error = await harness.outcome()
                assert type(error) is discord.HTTPException  # not NotFound
                assert error.status == 401 and error.code == 50027

                harness.hold_before_edit = False
                harness.upload = b"\0" * (10 * 1024 * 1024 + 1)
                big = await fake.slash("imagine", {"prompt": "huge"})
                error = await harness.outcome()
                assert error.status == 413 and error.code == 40005
                refused = await big.next_call(lambda c: c.method == "PATCH", timeout=WAIT_S)
                assert len(refused.files[0].data) == 10 * 1024 * 1024 + 1

    run(scenario)


def test_payloads_outside_discords_limits_are_refused() -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            bot = commands.Bot(
                command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.05
            )

            @bot.tree.command(name="pick", description="Too many choices")
            @app_commands.choices(n=[app_commands.Choice(name=str(i), value=i) for i in range(26)])
            async def pick(interaction: discord.Interaction, n: int) -> None:
                await interaction.response.send_message(str(n))

            async with running(bot, fake):
                with pytest.raises(discord.HTTPException) as refused:
                    await bot.tree.sync()
                assert isinstance(refused.value, app_commands.CommandSyncFailure)
                assert refused.value.code == 50035 and refused.value.status == 400
                assert "choices: Must be 25 or fewer in length." in str(refused.value)
                errors = fake.calls[-1].response["errors"]
                assert errors["0"]["options"]["0"]["choices"]["_errors"][0]["code"] == (
                    "BASE_TYPE_MAX_LENGTH"
                )
                assert None not in fake.commands

                channel = bot.get_channel(fake.guild.channel.id)
                assert isinstance(channel, discord.TextChannel)
                view = discord.ui.View()
                for i in range(6):
                    view.add_item(discord.ui.Button(label=str(i), custom_id=f"b{i}", row=i % 5))
                rows = view.to_components()
                rows.append({"type": 1, "components": [{"type": 2, "style": 1, "label": "6",
                             "custom_id": "x" * 101}]})  # fmt: skip
                with pytest.raises(discord.HTTPException) as wide:
                    await bot.http.send_message(
                        channel.id, params=discord.http.MultipartParameters(
                            payload={"content": "rows", "components": rows},
                            multipart=None, files=None))  # fmt: skip
                assert wide.value.code == 50035
                assert "components: Must be 5 or fewer in length" in str(wide.value)
                errors = fake.calls[-1].response["errors"]["components"]
                assert errors["5"]["components"]["0"]["custom_id"]["_errors"][0]["message"] == (
                    "Must be between 1 and 100 in length."
                )

                fake.rate_limit("POST /channels/{channel_id}/messages", retry_after=0.2)
                sent = await channel.send("after the limit")
                assert sent.content == "after the limit"
                statuses = [c.status for c in fake.calls_to("POST /channels/{channel_id}/messages")]
                assert statuses[-2:] == [429, 200]

    run(scenario)


def test_webhook_429_is_retried_and_the_gateway_resumes() -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            harness = make_harness()
            async with running(harness.bot, fake):
                await synced(fake, harness)
                fake.rate_limit(
                    "PATCH /webhooks/{application_id}/{token}/messages/@original",
                    retry_after=0.2,
                )
                sent = await fake.slash("imagine", {"prompt": "limited"})
                kind, _, _ = await harness.outcome()
                assert kind == "done"
                edits = [c for c in fake.calls if sent.concerns(c) and c.method == "PATCH"]
                assert [c.status for c in edits] == [429, 200]
                assert edits[1].files[0].data == png_bytes()

                resumed = asyncio.get_running_loop().create_future()

                async def on_resumed() -> None:
                    if not resumed.done():
                        resumed.set_result(True)

                harness.bot.add_listener(on_resumed)
                await fake.request_reconnect()
                await asyncio.wait_for(resumed, WAIT_S)
                assert len(fake.identify_payloads) == 1  # resumed, not identified again
                again = await fake.slash("imagine", {"prompt": "after resume"})
                await again.next_call(timeout=WAIT_S)
                assert (await harness.outcome())[0] == "done"

    run(scenario)


def test_a_bad_token_is_refused() -> None:
    async def scenario() -> None:
        settings = FakeDiscordSettings(token="the-real-token")
        async with fake_discord(settings) as fake:
            client = discord.Client(intents=discord.Intents.default())
            with pytest.raises(discord.LoginFailure):
                await client.login("a-wrong-token")
            await client.close()
            [call] = fake.calls
            assert call.route == "/users/@me" and call.status == 401

    run(scenario)


def test_followups_replies_and_dms_where_discord_allows_them() -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            bot = commands.Bot(
                command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.05
            )
            outcomes: asyncio.Queue[Any] = asyncio.Queue()

            @bot.tree.command(name="many", description="Six follow-ups")
            async def many(interaction: discord.Interaction) -> None:
                await interaction.response.defer()
                sent = []
                try:
                    for i in range(6):
                        sent.append(await interaction.followup.send(f"part {i}", wait=True))
                except discord.HTTPException as error:
                    await outcomes.put((sent, error))
                await sent[1].edit(content="part 1, edited")
                original = await interaction.original_response()
                await interaction.delete_original_response()
                await outcomes.put(original.id)

            admin = app_commands.Group(
                name="admin",
                description="Admin tools",
                default_permissions=discord.Permissions(manage_guild=True),
            )

            @admin.command(name="ban", description="Ban someone")
            async def ban(interaction: discord.Interaction, user: discord.User) -> None:
                allowed = interaction.permissions.manage_guild
                await interaction.response.send_message(f"ban {user.name}: {allowed}")

            bot.tree.add_command(admin)

            async with running(bot, fake):
                await bot.tree.sync()
                user = fake.add_user(1_300_000_000_000_000_001, "painter")
                [group] = [c for c in fake.commands[None] if c["name"] == "admin"]
                assert group["default_member_permissions"] == "32"
                manager = discord.Permissions(manage_guild=True).value
                banned = await fake.slash("admin ban", {"user": user}, permissions=manager)
                answer = await banned.next_call(timeout=WAIT_S)
                assert answer.json["data"]["content"] == "ban painter: True"

                await fake.slash("many", user=user, user_install=True)
                sent, error = await asyncio.wait_for(outcomes.get(), WAIT_S)
                assert [m.content for m in sent] == [f"part {i}" for i in range(5)]
                assert error.status == 400 and error.code == 40094
                original_id = await asyncio.wait_for(outcomes.get(), WAIT_S)
                assert original_id not in fake.messages  # deleted
                assert fake.messages[sent[1].id]["content"] == "part 1, edited"

                channel = bot.get_channel(fake.guild.channel.id)
                assert isinstance(channel, discord.TextChannel)
                request = await channel.fetch_message(sent[0].id)
                reply = await channel.send(f"<@{user.id}> here it is", reference=request)
                stored = fake.messages[reply.id]
                assert stored["message_reference"]["message_id"] == str(request.id)
                assert [m["id"] for m in stored["mentions"]] == [str(user.id)]
                await reply.edit(content="edited reply")
                assert fake.messages[reply.id]["content"] == "edited reply"

                fake.block_channel(channel.id)
                with pytest.raises(discord.Forbidden) as blocked:
                    await channel.send("no")
                assert blocked.value.code == 50013

                member = await bot.fetch_user(user.id)
                dm = await member.send("in private")
                assert fake.messages[dm.id]["channel_id"] == str(fake.dm_channels[user.id])
                fake.close_dms(user.id)
                with pytest.raises(discord.Forbidden) as closed:
                    await member.send("again")
                assert closed.value.code == 50007
                assert [c.status for c in fake.refused_calls] == [400, 403, 403]

    run(scenario)


def test_a_refused_resume_makes_the_client_identify_again() -> None:
    async def scenario() -> None:
        async with fake_discord(FakeDiscordSettings(allow_resume=False)) as fake:
            harness = make_harness()
            async with running(harness.bot, fake):
                await synced(fake, harness)
                readied = asyncio.get_running_loop().create_future()

                async def on_ready() -> None:
                    if not readied.done():
                        readied.set_result(True)

                harness.bot.add_listener(on_ready)
                harness.bot.before_identify_hook = no_identify_wait  # type: ignore[method-assign]
                await fake.request_reconnect()
                await fake.wait_until(lambda: len(fake.identify_payloads) == 2, WAIT_S)
                await asyncio.wait_for(readied, WAIT_S)
                sent = await fake.slash("imagine", {"prompt": "a new session"})
                await sent.next_call(timeout=WAIT_S)
                assert (await harness.outcome())[0] == "done"

    run(scenario)
