"""The Discord front end (bot/discord) with the real discord.py client against the fake Discord
in tests/fakes/discord.py, and a real bot on the tiny model: what a Discord user sees."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bot import discord as discord_front_end
from bot.core.frontend import BotContext
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from bot.store import JobKind, JobStatus
from pipeline.engine import Engine
from pipeline.request import GenerationRequest
from tests.fakes.discord import (
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE,
    MESSAGE_FLAG_EPHEMERAL,
    MODAL,
    FakeDiscord,
    RecordedCall,
    fake_discord,
)

TEST_TIMEOUT_S = 240
WAIT_S = 10.0
JOB_WAIT_S = 120.0  # a job on the tiny model, on a busy CPU


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TEST_TIMEOUT_S))


def bot_settings(tmp_path: Path, fake: FakeDiscord, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "outputs_dir": tmp_path / "out",
        "models_dir": tmp_path / "models",
        "database_url": f"sqlite:///{tmp_path}/easel.db",
        "progress_interval": 0,
        "progress_chat_interval": 0,
        "max_batch_images": 4,
        "device": "cpu",
        "DISCORD_TOKEN": fake.settings.token,
        "discord_api_url": fake.api_base,
        "discord_gateway_url": fake.gateway_url,
        **overrides,
    }
    return Settings(_env_file=None, **values)


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, fake: FakeDiscord, engine: Engine, **overrides: Any
) -> AsyncIterator[Bot]:
    """A bot with the Discord front end, logged in to the fake and its commands synced; stopped
    and closed after the block, the way `easel run` stops it."""
    settings = bot_settings(tmp_path, fake, **overrides)
    bot = build_bot(settings, engine, open_store(settings))
    stop = asyncio.Event()
    await bot.service.start()
    synced = len(fake.calls_to("PUT /applications/{application_id}/commands"))
    front_end = asyncio.create_task(
        discord_front_end.serve(BotContext(bot.service), settings, stop, guild_ready_timeout=0.05)
    )
    try:
        await fake.wait_until(
            lambda: (
                front_end.done()
                or len(fake.calls_to("PUT /applications/{application_id}/commands")) > synced
            ),
            WAIT_S,
        )
        if front_end.done():
            front_end.result()
        yield bot
    finally:
        stop.set()
        await asyncio.wait_for(front_end, WAIT_S)
        await bot.service.stop()
        await bot.executor.close()
        bot.store.close()


def is_result(call: RecordedCall) -> bool:
    """The edit that shows a job's result: a PNG (the grid, or the one image)."""
    return call.method == "PATCH" and any(f.data.startswith(b"\x89PNG") for f in call.files)


def is_preview(call: RecordedCall) -> bool:
    return call.method == "PATCH" and any(f.filename.endswith(".jpg") for f in call.files)


def button_ids(call: RecordedCall) -> list[list[str]]:
    return [
        [button["custom_id"] for button in row["components"]] for row in call.json["components"]
    ]


async def imagine_grid(fake: FakeDiscord, bot: Bot, prompt: str) -> tuple[int, RecordedCall]:
    """/imagine through the fake until its grid arrives: the grid message's id, and the edit."""
    sent = await fake.slash("imagine", {"prompt": prompt, "count": 2})
    final = await sent.next_call(is_result, timeout=JOB_WAIT_S)
    assert final.status == 200, final.response
    return int(final.response["id"]), final


def test_imagine_defers_queues_and_ends_with_the_grid_and_its_buttons(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            sent = await fake.slash("imagine", {"prompt": "a red fox --steps 2", "count": 2})
            ack = await sent.next_call(timeout=WAIT_S)
            assert (ack.method, ack.json["type"]) == ("POST", DEFERRED_CHANNEL_MESSAGE)
            assert ack.status < 300
            queued = await sent.next_call(lambda c: c.method == "PATCH", timeout=WAIT_S)
            assert queued.route.endswith("/messages/@original")
            assert queued.json["content"].startswith("Job #1 is queued, position 1")
            preview = await sent.next_call(is_preview, timeout=JOB_WAIT_S)
            assert preview.status == 200, preview.response
            assert preview.files[0].data.startswith(b"\xff\xd8")  # a JPEG
            assert preview.json["content"].startswith("Job #1")
            final = await sent.next_call(is_result, timeout=JOB_WAIT_S)
            job = bot.store.job(1, with_images=True)
            assert job is not None and job.status is JobStatus.DONE and job.grid_path
            assert final.status == 200, final.response
            assert final.files[0].data == Path(job.grid_path).read_bytes()
            assert final.files[0].data.startswith(b"\x89PNG")
            assert final.json["content"].startswith("Job #1 is done")
            assert button_ids(final) == [
                ["easel:1:U1", "easel:1:U2"],
                ["easel:1:V1", "easel:1:V2"],
                ["easel:1:S1", "easel:1:S2"],
                ["easel:1:reroll", "easel:1:remix"],
            ]
            # Every edit went to the one message the deferred answer made.
            edits = [c for c in fake.calls if sent.concerns(c) and c.method == "PATCH"]
            assert {c.response["id"] for c in edits} == {final.response["id"]}

            pressed = await fake.press(int(final.response["id"]), "easel:1:U1")
            ack = await pressed.next_call(timeout=WAIT_S)
            assert ack.json["type"] == DEFERRED_UPDATE and ack.status < 300
            followup = await pressed.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
            assert followup.json["content"].startswith("Job #2 is queued")
            result = await pressed.next_call(is_result, timeout=JOB_WAIT_S)
            assert result.status == 200, result.response
            assert result.response["id"] == followup.response["id"]  # the follow-up, edited
            assert "(job #2)" in result.json["content"]
            child = bot.store.job(2, with_images=True)
            assert child is not None and child.kind is JobKind.UPSCALE and child.parent_id == 1
            assert child.status is JobStatus.DONE
            assert result.files[0].data == Path(child.images[0].path).read_bytes()
            # Under the upscaled image: zoom out and pan, which act on that image.
            assert button_ids(result) == [
                ["easel:2:Z2", "easel:2:Z15"],
                ["easel:2:PL", "easel:2:PR", "easel:2:PU", "easel:2:PD"],
            ]
            labels = [[b["label"] for b in row["components"]] for row in result.json["components"]]
            assert labels == [["Zoom Out 2x", "Zoom Out 1.5x"], ["⬅️", "➡️", "⬆️", "⬇️"]]
            zoom = await fake.press(int(result.response["id"]), "easel:2:Z15")
            ack = await zoom.next_call(timeout=WAIT_S)
            assert ack.json["type"] == DEFERRED_UPDATE and ack.status < 300
            followup = await zoom.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
            assert followup.json["content"].startswith("Job #3 is queued")
            zoomed = await zoom.next_call(is_result, timeout=JOB_WAIT_S)
            assert zoomed.status == 200, zoomed.response
            assert button_ids(zoomed)[0] == [f"easel:3:U{n}" for n in range(1, 5)]
            outpaint = bot.store.job(3)
            assert outpaint is not None and outpaint.kind is JobKind.ZOOM
            assert (outpaint.parent_id, outpaint.status) == (2, JobStatus.DONE)
            assert not fake.refused_calls

    run(scenario)


def test_buttons_on_an_old_message_work_after_a_restart(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            async with serving(tmp_path, fake, engine) as bot:
                grid_message, _ = await imagine_grid(fake, bot, "a lighthouse --steps 2")
            async with serving(tmp_path, fake, engine) as bot:  # a new client, the same database
                pressed = await fake.press(grid_message, "easel:1:V2")
                ack = await pressed.next_call(timeout=WAIT_S)
                assert ack.json["type"] == DEFERRED_UPDATE and ack.status < 300
                followup = await pressed.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
                assert followup.json["content"].startswith("Job #2 is queued")
                result = await pressed.next_call(is_result, timeout=JOB_WAIT_S)
                assert result.status == 200, result.response
                child = bot.store.job(2)
                assert child is not None and child.kind is JobKind.VARY_STRONG
                assert (child.parent_id, child.status) == (1, JobStatus.DONE)

                remix = await fake.press(grid_message, "easel:1:remix")
                ack = await remix.next_call(timeout=WAIT_S)
                assert ack.json["type"] == MODAL and ack.status < 300
                (row,) = fake.modal_shown(remix)["components"]
                assert row["component"]["value"].startswith("a lighthouse --size 64x64 --steps 2 ")
                assert bot.store.job(3) is None  # remix queues nothing by itself
            assert not fake.refused_calls

    run(scenario)


def test_a_refused_imagine_is_answered_privately_and_writes_no_job(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            sent = await fake.slash("imagine", {"prompt": "a cat --steps 9999"}, locale="ko")
            ack = await sent.next_call(timeout=WAIT_S)
            assert ack.json["type"] == DEFERRED_CHANNEL_MESSAGE
            answer = await sent.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
            assert answer.json["flags"] & MESSAGE_FLAG_EPHEMERAL
            assert "9999" in answer.json["content"]
            assert any("\uac00" <= char <= "\ud7a3" for char in answer.json["content"])  # Korean
            deleted = [c for c in fake.calls if sent.concerns(c) and c.method == "DELETE"]
            assert len(deleted) == 1  # the public "thinking" answer is gone
            assert bot.store.job(1) is None
            assert not fake.refused_calls

    run(scenario)


def test_typed_fields_and_flags_in_the_prompt_make_one_request(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            fields = {
                "prompt": "a harbour at dawn --steps 2 --no boats",
                "negative": "fog",
                "count": 1,
                "seed": 77,
            }
            sent = await fake.slash("imagine", fields)
            await sent.next_call(is_result, timeout=JOB_WAIT_S)
            job = bot.store.job(1)
            assert job is not None
            request = GenerationRequest.from_json(job.request)
            assert (request.seeds, request.steps) == ((77,), 2)
            assert "fog" in request.negative_prompt and "boats" in request.negative_prompt

            # The aspect field reaches the same parser as the flags (the tiny model makes every
            # ratio 64x64, so a conflict shows it): typed and written, it is refused.
            both = await fake.slash("imagine", {"prompt": "a cat --size 64x64", "aspect": "16:9"})
            answer = await both.next_call(
                lambda c: c.route.startswith("/webhooks/") and c.method == "POST", timeout=WAIT_S
            )
            assert answer.json["content"] == "Give --ar or --size, not both."
            assert bot.store.job(2) is None

    run(scenario)


def test_a_refused_press_is_answered_to_the_presser_alone(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine, daily_images=2) as bot:
            grid_message, _ = await imagine_grid(fake, bot, "a windmill --steps 2")
            pressed = await fake.press(grid_message, "easel:1:U1")  # a third image today
            ack = await pressed.next_call(timeout=WAIT_S)
            assert ack.json["type"] == DEFERRED_UPDATE
            answer = await pressed.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
            assert answer.json["flags"] & MESSAGE_FLAG_EPHEMERAL
            assert "2" in answer.json["content"] and "today" in answer.json["content"]
            assert bot.store.job(2) is None
            assert fake.messages[grid_message]["components"]  # the grid keeps its buttons
            assert not fake.refused_calls

    run(scenario)


def test_the_token_stays_in_memory_and_past_it_the_result_is_a_reply_in_the_channel(
    tmp_path: Path, engine: Engine, monkeypatch: Any
) -> None:
    from bot.discord import delivery

    monkeypatch.setattr(delivery, "TOKEN_SECONDS", 0)  # every token already too old

    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            sent = await fake.slash("imagine", {"prompt": "a quiet harbour --steps 2"})
            queued = await sent.next_call(lambda c: c.method == "PATCH", timeout=WAIT_S)
            status = int(queued.response["id"])
            final = await fake.wait_for_call(
                lambda c: (
                    c.method == "POST"
                    and c.route == "/channels/{channel_id}/messages"
                    and any(f.data.startswith(b"\x89PNG") for f in c.files)
                ),
                timeout=JOB_WAIT_S,
            )
            assert final.status == 200, final.response
            assert int(final.json["message_reference"]["message_id"]) == status
            progress = [
                c for c in fake.calls if c.route == "/channels/{channel_id}/messages/{message_id}"
            ]
            assert all(c.path.endswith(f"/{status}") for c in progress)  # edited in the channel
            channel = final.path.split("/")[2]
            for _ in range(200):  # the row is written once the message is posted
                job = bot.store.job(1)
                if (
                    job is not None
                    and job.status_message == f"discord:{channel}:{final.response['id']}"
                ):
                    break
                await asyncio.sleep(0.05)
            assert job is not None and job.status is JobStatus.DONE
            assert job.status_message == f"discord:{channel}:{final.response['id']}"
            database = (tmp_path / "easel.db").read_bytes() + (
                tmp_path / "easel.db-wal"
            ).read_bytes()
            assert sent.token.encode() not in database
            assert not fake.refused_calls

    run(scenario)
