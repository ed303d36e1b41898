"""Discord's slash commands besides /imagine (bot/discord/commands.py), with the real discord.py
client against the fake Discord and a real bot on the tiny model: what the synced commands look
like, and what the asker alone is told."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.core.commands import CommandRegistry
from bot.core.events import UserRef
from bot.core.service import JobService
from bot.store import JobStatus, Role
from pipeline.engine import Engine
from tests.fakes.discord import (
    AUTOCOMPLETE_RESULT,
    DEFERRED_CHANNEL_MESSAGE,
    MESSAGE_FLAG_EPHEMERAL,
    FakeDiscord,
    RecordedCall,
    SentInteraction,
    fake_discord,
)
from tests.test_discord import JOB_WAIT_S, WAIT_S, is_result, run, serving

SYNC = "PUT /applications/{application_id}/commands"


async def private_answer(sent: SentInteraction) -> str:
    """The text the asker alone was told: a private "thinking" answer, then its follow-up."""
    ack = await sent.next_call(timeout=WAIT_S)
    assert ack.json["type"] == DEFERRED_CHANNEL_MESSAGE
    assert ack.json["data"]["flags"] & MESSAGE_FLAG_EPHEMERAL
    answer = await sent.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
    assert answer.status == 200, answer.response
    assert answer.json["flags"] & MESSAGE_FLAG_EPHEMERAL
    return str(answer.json["content"])


async def ask(
    fake: FakeDiscord, name: str, options: dict[str, Any] | None = None, **how: Any
) -> str:
    return await private_answer(await fake.slash(name, options, **how))


def synced_commands(fake: FakeDiscord) -> list[dict[str, Any]]:
    sync: RecordedCall = fake.calls_to(SYNC)[-1]
    assert sync.status == 200, sync.response
    return list(sync.json)


def test_the_synced_commands_are_the_registrys_with_english_descriptions(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine):
            commands = {
                command["name"]: command
                for command in synced_commands(fake)
                if command.get("type", 1) == 1  # the context menus: tests/test_discord_menus.py
            }
            offered = [c.name for c in CommandRegistry().offered("discord", Role.ADMIN)]
            assert sorted(commands) == sorted(offered)
            assert not {"u", "v", "s", "reroll", "remix", "wait", "quit"} & set(commands)
            for command in commands.values():
                assert 1 <= len(command["description"]) <= 100
            assert commands["history"]["description"] == "your jobs, newest first"
            assert commands["settings"]["description"].endswith("…")  # cut to Discord's 100
            options = {
                name: [
                    (o["name"], o["type"], o.get("required", False), o.get("autocomplete", False))
                    for o in command["options"]
                ]
                for name, command in commands.items()
            }
            assert options["history"] == [("page", 4, False, False)]
            assert options["info"] == [("job", 4, True, False)]
            assert options["cancel"] == [("job", 4, True, True)]
            assert options["queue"] == options["help"] == []
            assert options["settings"] == [("changes", 3, False, False)]
            assert options["pnginfo"] == [("image", 11, True, False)]
            assert commands["history"]["options"][0]["min_value"] == 1
            image = commands["pnginfo"]["options"][0]["description"]
            assert "PNG sent as a file" in image and "keeps its parameters" in image
            assert "/imagine" in await ask(fake, "help")
            assert "/u " not in await ask(fake, "help")  # buttons do that on Discord
            assert not fake.refused_calls

    run(scenario)


def test_history_info_settings_and_pnginfo_answer_the_asker_alone(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            sent = await fake.slash("imagine", {"prompt": "a red kite --steps 2"})
            await sent.next_call(is_result, timeout=JOB_WAIT_S)
            job = bot.store.job(1, with_images=True)
            assert job is not None and job.status is JobStatus.DONE

            history = await ask(fake, "history")
            assert history.startswith("Your jobs, page 1 of 1 (1 in all):")
            assert "#1 " in history and "a red kite" in history
            assert (await ask(fake, "history", {"page": 2})).startswith("Your jobs, page 1")

            info = await ask(fake, "info", {"job": 1})
            assert "#1" in info and "a red kite" in info
            bob = fake.add_user(1_100_000_000_000_000_099, "bob")
            hidden = await ask(fake, "info", {"job": 1}, user=bob, guild=None)  # from a DM
            assert hidden == "There is no job #1."

            saved = await ask(fake, "settings", {"changes": "style=watercolor"})
            assert saved.startswith("Saved. Your defaults for new jobs:")
            owner = await bot.service.user(job_owner(fake))
            assert bot.store.settings(owner.id).style == "watercolor"
            refused = await ask(fake, "settings", {"changes": "steps=lots"}, locale="ko")
            assert "lots" in refused
            assert any("\uac00" <= char <= "\ud7a3" for char in refused)  # in Korean
            assert bot.store.settings(owner.id).steps is None
            shown = await ask(fake, "settings")
            assert "watercolor" in shown

            picture = Path(job.images[0].path).read_bytes()
            attachment = fake.add_attachment("kite.png", picture)
            parameters = await ask(fake, "pnginfo", {"image": attachment})
            assert parameters.startswith("a red kite")
            assert "Steps: 2" in parameters and "Size: 64x64" in parameters
            not_png = fake.add_attachment("notes.png", b"not a picture at all")
            assert "image" in (await ask(fake, "pnginfo", {"image": not_png})).lower()
            assert not fake.refused_calls

    run(scenario)


def job_owner(fake: FakeDiscord) -> UserRef:
    owner = fake.settings.owner
    return UserRef("discord", str(owner.id), None, None)


def test_cancel_offers_the_users_own_queued_jobs_and_cancels_one(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stay_queued(self: JobService) -> None:  # the queue does not run: jobs wait
        return None

    monkeypatch.setattr(JobService, "start", stay_queued)

    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            bob = fake.add_user(1_100_000_000_000_000_099, "bob")
            long_prompt = "a very long winding river " * 6
            jobs = (("a quiet pond --steps 2", None), ("bob's barn", bob), (long_prompt, None))
            for prompt, user in jobs:
                sent = await fake.slash("imagine", {"prompt": prompt}, user=user)
                await sent.next_call(lambda c: c.method == "PATCH", timeout=WAIT_S)

            asked = await fake.autocomplete("cancel", {"job": ""}, "job")
            offered = await asked.next_call(timeout=WAIT_S)
            assert offered.json["type"] == AUTOCOMPLETE_RESULT and offered.status < 300
            first, third = offered.json["data"]["choices"]
            assert first == {"name": "#1 a quiet pond", "value": 1}
            assert third["value"] == 3 and third["name"].startswith("#3 a very long winding")
            assert len(third["name"]) == 100 and third["name"].endswith("…")
            typed = await fake.autocomplete("cancel", {"job": "pond"}, "job")
            choices = (await typed.next_call(timeout=WAIT_S)).json["data"]["choices"]
            assert [choice["value"] for choice in choices] == [1]
            bobs = await fake.autocomplete("cancel", {"job": "#"}, "job", user=bob)
            choices = (await bobs.next_call(timeout=WAIT_S)).json["data"]["choices"]
            assert [choice["value"] for choice in choices] == [2]

            queue = await ask(fake, "queue")
            assert queue.startswith("3 job(s) waiting, 0 running.")
            assert "your #1: queued, position 1" in queue and "#2" not in queue

            # Bob's job was posted in this shared channel: seen, but not for others to cancel.
            assert await ask(fake, "cancel", {"job": 2}) == "Job #2 belongs to someone else."
            assert await ask(fake, "cancel", {"job": 1}) == "Job #1 was cancelled."
            cancelled, kept = bot.store.job(1), bot.store.job(2)
            assert cancelled is not None and cancelled.status is JobStatus.CANCELLED
            assert kept is not None and kept.status is JobStatus.QUEUED
            again = await fake.autocomplete("cancel", {"job": ""}, "job")
            left = (await again.next_call(timeout=WAIT_S)).json["data"]["choices"]
            assert [choice["value"] for choice in left] == [3]
            assert not fake.refused_calls

    run(scenario)
