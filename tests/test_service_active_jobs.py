"""`JobService.active_jobs`: what a user may still cancel, for a front end's job pickers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.core.events import Origin, UserRef
from bot.runtime import build_bot, open_store
from bot.settings import Settings
from pipeline.engine import Engine

ORIGIN = Origin("test", "chat-1")
ALICE = UserRef("test", "alice", "Alice", "en")
BOB = UserRef("test", "bob", "Bob", "en")


def test_active_jobs_are_the_users_own_queued_jobs_and_leave_when_cancelled(
    tmp_path: Path, engine: Engine
) -> None:
    settings = Settings(
        _env_file=None,
        outputs_dir=tmp_path / "out",
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path}/easel.db",
    )
    bot = build_bot(settings, engine, open_store(settings))
    service = bot.service

    async def scenario() -> None:
        # The dispatcher is not started: the jobs stay queued.
        made = []
        for user, prompt in ((ALICE, "a fox"), (BOB, "a cat"), (ALICE, "a hen")):
            options = await service.options(user, f"{prompt} --steps 2", ORIGIN)
            made.append((await service.imagine(user, options, ORIGIN)).job_id)
        assert [job.id for job in await service.active_jobs(ALICE)] == [made[0], made[2]]
        assert [job.id for job in await service.active_jobs(BOB)] == [made[1]]
        await service.cancel(ALICE, made[0], ORIGIN)
        assert [job.id for job in await service.active_jobs(ALICE)] == [made[2]]

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        bot.store.close()
