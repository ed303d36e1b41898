"""Interactions nothing else answers: a press of a button or select that is not Easel's (or
no longer is), and an error that escapes a command's handler. Each is answered privately in
the user's language, so Discord never shows "This interaction failed"."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from bot.discord.commands import CoreCommands
from pipeline.engine import Engine
from tests.fakes.discord import (
    CHANNEL_MESSAGE,
    MESSAGE_FLAG_EPHEMERAL,
    SentInteraction,
    fake_discord,
)
from tests.test_discord import WAIT_S, run, serving

BUTTON, SELECT = 2, 3
UNKNOWN_EN = "This button is not one Easel knows"
UNKNOWN_KO = "Easel이 모르는 버튼입니다"


def old_message(fake: Any, components: list[dict[str, Any]]) -> int:
    """A message in the channel carrying `components`, as an older bot might have left it."""
    message = fake.post_user_message(fake.guild.channel.id, fake.settings.owner, "an old grid")
    message["components"] = [{"type": 1, "components": components}]
    return int(message["id"])


async def private_answer(sent: SentInteraction) -> str:
    answer = await sent.next_call(timeout=WAIT_S)
    assert answer.status < 300, answer.response
    assert answer.json["type"] == CHANNEL_MESSAGE
    assert answer.json["data"]["flags"] & MESSAGE_FLAG_EPHEMERAL
    return str(answer.json["data"]["content"])


def test_presses_of_components_that_are_not_easels_are_answered_privately(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            buttons = [
                {"type": BUTTON, "style": 2, "label": "?", "custom_id": "another-bot:vote"},
                {"type": BUTTON, "style": 2, "label": "U1", "custom_id": "easel:x:U1"},
            ]
            message = old_message(fake, buttons)
            foreign = await private_answer(await fake.press(message, "another-bot:vote"))
            assert foreign.startswith(UNKNOWN_EN)
            korean = await private_answer(await fake.press(message, "easel:x:U1", locale="ko"))
            assert korean.startswith(UNKNOWN_KO)

            options = [{"label": "watercolour", "value": "watercolour"}]
            select = {"type": SELECT, "custom_id": "easel:set:colour:0", "options": options}
            menu = old_message(fake, [select])
            picked = await private_answer(
                await fake.press(menu, "easel:set:colour:0", values=["watercolour"])
            )
            assert picked.startswith(UNKNOWN_EN)
            assert bot.store.job(1) is None
            assert not fake.refused_calls

    run(scenario)


def test_an_error_that_escapes_a_command_is_logged_with_a_reference_the_user_sees(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("the history page broke")

    monkeypatch.setattr(CoreCommands, "answer", broken)

    async def scenario() -> str:
        async with fake_discord() as fake, serving(tmp_path, fake, engine):
            answer = await private_answer(await fake.slash("history", {}))
            assert not fake.refused_calls
            return answer

    with caplog.at_level(logging.ERROR, logger="easel.errors"):
        answer = run_and_return(scenario)
    reference = re.search(r"E-[0-9A-F]{8}", answer)
    assert reference is not None, answer
    assert "Traceback" not in answer and "history page broke" not in answer
    logged = [r for r in caplog.records if reference.group() in r.getMessage()]
    assert len(logged) == 1
    assert "RuntimeError: the history page broke" in logged[0].getMessage()


def run_and_return(scenario: Any) -> Any:
    found: list[Any] = []

    async def keep() -> None:
        found.append(await scenario())

    run(keep)
    return found[0]
