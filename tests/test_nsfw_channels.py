"""NSFW prompts by where they are made: the platform's age-restricted flag (`Origin.adult_ok`)
first, the chat's setting where the platform has none; allowed ones are flagged for spoilers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.core.events import EventKind, Origin, Refusal, UserRef
from bot.core.messages import Key
from bot.core.words import nsfw_allowed, nsfw_word
from bot.runtime import build_bot, open_store
from bot.settings import Settings
from pipeline.engine import Engine
from tests.test_service import Recorder

ALICE = UserRef("test", "alice", "Alice", "en")


def test_the_platforms_flag_comes_before_the_chat_setting() -> None:
    assert nsfw_allowed(True, chat_allows=True)
    assert not nsfw_allowed(True, chat_allows=False)  # the operator has not opted in
    assert not nsfw_allowed(False, chat_allows=True)  # Discord forbids NSFW there
    assert nsfw_allowed(None, chat_allows=True)
    assert not nsfw_allowed(None, chat_allows=False)
    assert nsfw_word("a NUDE statue") == "nude"
    assert nsfw_word("a nudibranch in the sea") is None  # whole words only
    assert nsfw_word("누드 크로키") == "누드"


def test_nsfw_prompts_run_only_where_allowed_and_their_results_are_flagged(
    engine: Engine, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,
        outputs_dir=tmp_path / "out",
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path}/easel.db",
        progress_interval=0,
    )
    bot = build_bot(settings, engine, open_store(settings))
    service = bot.service
    for chat in ("ruled-on", "adults", "plain"):
        bot.store.update_chat("test", chat, nsfw_allowed=True)
    recorder = Recorder()
    service.subscribe("test", recorder)

    async def ask(text: str, origin: Origin) -> int:
        options = await service.options(ALICE, text, origin)
        return (await service.imagine(ALICE, options, origin)).job_id

    async def scenario() -> tuple[int, int, int]:
        await service.start()
        for origin in (Origin("test", "plain", adult_ok=False), Origin("test", "dm")):
            with pytest.raises(Refusal) as refused:
                await ask("a nude statue --n 1 --steps 2", origin)
            assert refused.value.reply.message.key is Key.NSFW_WORD
        with pytest.raises(Refusal):  # the chat setting does not overrule the platform
            await ask("a nude statue --n 1 --steps 2", Origin("test", "ruled-on", adult_ok=False))
        adult = await ask("a nude statue --n 1 --steps 2", Origin("test", "adults", adult_ok=True))
        ruled = await ask("a nude statue --n 1 --steps 2", Origin("test", "ruled-on"))
        plain = await ask("a teapot --n 1 --steps 2", Origin("test", "plain", adult_ok=False))
        await asyncio.wait_for(service.wait_until_idle("test"), 120)
        await service.stop()
        return adult, ruled, plain

    try:
        adult, ruled, plain = asyncio.run(scenario())
        flagged = {e.job_id: e.reply.flagged for e in recorder.of(EventKind.FINISHED)}
        assert flagged == {adult: True, ruled: True, plain: False}
        assert bot.store.job(4) is None  # the three refusals wrote no job
    finally:
        bot.store.close()
