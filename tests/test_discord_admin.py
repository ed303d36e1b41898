"""Discord's `/admin` group (bot/discord/admin.py) with the real discord.py client against the fake
Discord and a real bot on the tiny model: the synced group, refusals to non-admins, and what an
admin's commands change for users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.core.messages import Key, Message
from bot.store import Role
from pipeline.engine import Engine
from tests.fakes.discord import (
    AUTOCOMPLETE_RESULT,
    MESSAGE_FLAG_EPHEMERAL,
    FakeDiscord,
    FakeUser,
    fake_discord,
)
from tests.test_admin import PRESETS
from tests.test_discord import JOB_WAIT_S, WAIT_S, is_result, run, serving
from tests.test_discord_commands import ask, synced_commands

MANAGE_GUILD = 1 << 5
GUILD_ONLY = [0]  # interaction contexts: a server
BOB_ID = 1_100_000_000_000_000_099


def admin_of(fake: FakeDiscord) -> dict[str, Any]:
    return next(c for c in synced_commands(fake) if c["name"] == "admin")


def owner_is_admin(fake: FakeDiscord) -> str:
    return f"discord:{fake.settings.owner.id}"


def test_the_admin_group_is_synced_for_server_managers_in_servers_only(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine):
            admin = admin_of(fake)
            assert int(admin["default_member_permissions"]) == MANAGE_GUILD
            assert admin["contexts"] == GUILD_ONLY and admin["dm_permission"] is False
            assert admin["description_localizations"]["ko"] == Message(Key.CMD_ADMIN).render("ko")
            subcommands = {option["name"]: option for option in admin["options"]}
            assert sorted(subcommands) == sorted(
                ["ban", "unban", "role", "pause", "resume", "reload", "rules"]
            )
            assert all(option["type"] == 1 for option in subcommands.values())

            def options(name: str) -> list[tuple[str, int, bool]]:
                return [
                    (o["name"], o["type"], o.get("required", False))
                    for o in subcommands[name].get("options", [])
                ]

            assert options("ban") == [("user", 6, True), ("reason", 3, False)]
            assert options("unban") == [("user", 6, True)]
            assert options("role") == [("user", 6, True), ("role", 3, True)]
            assert [c["value"] for c in subcommands["role"]["options"][1]["choices"]] == [
                "user",
                "vip",
                "admin",
            ]
            assert options("rules") == [("nsfw", 5, False), ("preset", 3, False)]
            assert subcommands["rules"]["options"][1]["autocomplete"] is True
            assert options("pause") == options("resume") == options("reload") == []
            assert not fake.refused_calls

    run(scenario)


def test_server_managers_who_are_not_easel_admins_are_refused_and_nothing_changes(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            bob = fake.add_user(BOB_ID, "bob")
            manager = MANAGE_GUILD | (1 << 11)
            refused = await ask(fake, "admin ban", {"user": bob, "reason": "spam"})
            assert refused == "Only Easel's admins can do that."
            korean = await ask(fake, "admin pause", locale="ko", permissions=manager)
            assert korean == "Easel 관리자만 할 수 있습니다."
            role = await ask(fake, "admin role", {"user": fake.settings.owner, "role": "admin"})
            assert role == "Only Easel's admins can do that."
            rules = await ask(fake, "admin rules", {"nsfw": True})
            assert rules == "Only Easel's admins can do that."
            assert not bot.store.user("discord", str(bob.id)).banned
            assert bot.store.user("discord", str(fake.settings.owner.id)).role is Role.USER
            assert not bot.store.queue_paused()
            assert bot.store.chat("discord", str(fake.guild.channel.id)).nsfw_allowed is False
            asked = await fake.autocomplete("admin rules", {"preset": ""}, "preset")
            offered = await asked.next_call(timeout=WAIT_S)
            assert offered.json["type"] == AUTOCOMPLETE_RESULT
            assert offered.json["data"]["choices"] == []
            assert "/admin" not in await ask(fake, "help")
            assert not fake.refused_calls

    run(scenario)


def test_an_admin_bans_sets_roles_and_chat_rules_and_reloads_presets(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with (
            fake_discord() as fake,
            serving(tmp_path, fake, engine, admins=owner_is_admin(fake)) as bot,
        ):
            bob = fake.add_user(BOB_ID, "bob")
            assert "/admin" in await ask(fake, "help")
            banned = await ask(fake, "admin ban", {"user": bob, "reason": "spam"})
            assert banned == f"User bob ({bob.id}) banned: spam"
            assert await imagine_refusal(fake, bob, "a castle --steps 2") == (
                "이 봇의 사용이 금지되었습니다: spam"
            )
            assert bot.store.job(1) is None
            unbanned = await ask(fake, "admin unban", {"user": bob})
            assert unbanned.endswith("is no longer banned.")
            vip = await ask(fake, "admin role", {"user": bob, "role": "vip"}, locale="ko")
            assert vip == f"사용자 bob ({bob.id})의 역할이 user에서 vip(으)로 바뀌었습니다."
            assert bot.store.user("discord", str(bob.id)).role is Role.VIP

            nude = "a nude statue --steps 2"
            assert "NSFW" in await imagine_refusal(fake, bob, nude)
            allowed = await ask(fake, "admin rules", {"nsfw": True})
            assert allowed.startswith("Saved. This chat's rules: NSFW prompts allowed")
            assert "not age-restricted" in allowed

            (tmp_path / "models").mkdir(exist_ok=True)
            (tmp_path / "models" / "presets.toml").write_text(PRESETS, encoding="utf-8")
            reloaded = await ask(fake, "admin reload")
            assert reloaded.endswith("Presets: ink, chalk.")
            asked = await fake.autocomplete("admin rules", {"preset": "in"}, "preset")
            choices = (await asked.next_call(timeout=WAIT_S)).json["data"]["choices"]
            assert choices == [{"name": "ink", "value": "ink"}]
            chosen = await ask(fake, "admin rules", {"preset": "ink"})
            assert chosen.endswith("default preset: ink.")
            channel = str(fake.guild.channel.id)
            assert bot.store.chat("discord", channel).default_preset == "ink"

            assert "NSFW" in await imagine_refusal(fake, bob, nude)  # not age-restricted
            sent = await fake.slash("imagine", {"prompt": "a castle --steps 2"}, user=bob)
            await sent.next_call(is_result, timeout=JOB_WAIT_S)
            job = bot.store.job(1)
            assert job is not None and "ink drawing" in job.request
            assert not fake.refused_calls

    run(scenario)


def test_pause_holds_a_discord_job_until_resume(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with (
            fake_discord() as fake,
            serving(tmp_path, fake, engine, admins=owner_is_admin(fake)) as bot,
        ):
            paused = await ask(fake, "admin pause")
            assert paused.startswith("The queue is paused")
            sent = await fake.slash("imagine", {"prompt": "a lighthouse --steps 2"})
            queued = await sent.next_call(lambda c: c.method == "PATCH", timeout=WAIT_S)
            assert "The queue is paused by an admin" in queued.json["content"]
            assert "The queue is paused by an admin" in await ask(fake, "queue")
            # Paused: no result while the dispatcher re-reads the flag many times over.
            await fake.wait_until(lambda: bot.store.count_queued() == 1, WAIT_S)
            with pytest.raises(AssertionError, match="no matching REST call"):
                await sent.next_call(is_result, timeout=2.0)
            assert bot.store.count_queued() == 1 and bot.store.count_running() == 0
            resumed = await ask(fake, "admin resume")
            assert resumed == "The queue runs again; 1 job(s) waiting."
            await sent.next_call(is_result, timeout=JOB_WAIT_S)
            assert not fake.refused_calls

    run(scenario)


async def imagine_refusal(fake: FakeDiscord, user: FakeUser, prompt: str) -> str:
    sent = await fake.slash("imagine", {"prompt": prompt}, user=user, locale="ko")
    answer = await sent.next_call(
        lambda c: c.method == "POST" and c.route.startswith("/webhooks"), timeout=WAIT_S
    )
    assert answer.json["flags"] & MESSAGE_FLAG_EPHEMERAL
    return str(answer.json["content"])
