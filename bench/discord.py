"""Discord acknowledgement benchmark: how soon an interaction is acknowledged on a busy bot.

A real bot (the Discord front end, the core, the local executor on the `tiny` random model)
logged in to the fake Discord of tests/fakes/discord.py, which runs on its own thread and event
loop, as Discord runs elsewhere. First one /imagine makes a grid (for the button presses); then
one job is kept running (its batch waits until the end) and `--jobs` more are queued behind it.
Then `--interactions` /imagine commands and `--presses` presses on the grid's buttons, each from
its own user, are sent as INTERACTION_CREATE events at `--rate` a second. Per interaction: the
time from the fake sending the event to the fake receiving its callback
(POST /interactions/{id}/{token}/callback), which Discord wants within 3 s; and, for scale, to
the first message after it (the job's "queued" message, a refusal, the remix line). Prints the
count, p50, p90, p99 and max in ms, the process's CPU time per interaction and the machine's
load (a busy CPU delays the bot's one event loop), and how many REST calls the fake refused;
asserts nothing. Target: acknowledgement p99 under 50 ms.

    python -m bench.discord
    python -m bench.discord --jobs 100 --interactions 200 --presses 20 --rate 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.busy import (
    HeldExecutor,
    cpu_line,
    keep_one_running,
    latency_header,
    latency_line,
    queue_jobs,
    run_quietly,
)
from bench.common import load_shape
from bot import discord as discord_front_end
from bot.core.frontend import BotContext
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from pipeline.device import choose_device
from pipeline.engine import Engine
from tests.fakes.discord import FakeDiscord, FakeUser, RecordedCall, SentInteraction
from tests.fakes.threaded import FakeThread

CALLBACK = "POST /interactions/{interaction_id}/{token}/callback"
WAIT_S = 30.0  # for the fake, the bot's start and each callback
JOB_WAIT_S = 120.0  # the first grid on the tiny model, on a busy CPU
GRID_BUTTONS = ("U1", "U2", "V1", "V2", "S1", "S2", "reroll", "remix")
FIRST_USER_ID = 1_300_000_000_000_000_000


@dataclass(frozen=True)
class Acknowledged:
    kind: str  # "imagine" or "press"
    seconds: float  # INTERACTION_CREATE sent -> callback received, on the fake's clock
    answered_s: float  # INTERACTION_CREATE sent -> the first message after the callback


def bot_settings(folder: Path, fake: FakeDiscord) -> Settings:
    return Settings(
        _env_file=None,
        DATABASE_URL=f"sqlite:///{folder / 'easel.db'}",
        outputs_dir=folder / "outputs",
        models_dir=folder / "models",
        cache_dir=folder / "cache",
        device="cpu",
        DISCORD_TOKEN=fake.settings.token,
        discord_api_url=fake.api_base,
        discord_gateway_url=fake.gateway_url,
    )


@contextlib.asynccontextmanager
async def serving(
    fakes: FakeThread, fake: FakeDiscord, settings: Settings, engine: Engine
) -> AsyncIterator[tuple[Bot, HeldExecutor]]:
    """The bot with its Discord front end, logged in to the fake and its commands synced."""
    executor = HeldExecutor(engine, settings.models_dir)
    bot = build_bot(settings, engine, open_store(settings), executor)
    stop = asyncio.Event()
    await bot.service.start()
    front_end = asyncio.create_task(
        discord_front_end.serve(BotContext(bot.service), settings, stop, guild_ready_timeout=0.05)
    )
    try:
        synced = fakes.call(
            fake.wait_until(
                lambda: bool(fake.calls_to("PUT /applications/{application_id}/commands")), WAIT_S
            )
        )
        await first_of(synced, front_end)
        yield bot, executor
    finally:
        executor.resume()
        stop.set()
        await asyncio.wait_for(front_end, WAIT_S)
        await bot.service.stop()
        await bot.executor.close()
        bot.store.close()


async def first_of(waiting: Coroutine[Any, Any, None], front_end: asyncio.Task[None]) -> None:
    """Wait for `waiting`, unless the front end stops first (then say why)."""
    task = asyncio.ensure_future(waiting)
    await asyncio.wait({task, front_end}, return_when=asyncio.FIRST_COMPLETED)
    if front_end.done():
        task.cancel()
        front_end.result()
        raise RuntimeError("the Discord front end stopped")
    task.result()


def is_grid(call: RecordedCall) -> bool:
    return call.method == "PATCH" and any(f.data.startswith(b"\x89PNG") for f in call.files)


async def make_grid(fakes: FakeThread, fake: FakeDiscord) -> int:
    """One /imagine through the fake until its grid of four arrives: the grid's message id."""
    sent = await fakes.call(fake.slash("imagine", {"prompt": "a red fox --steps 2", "count": 4}))
    grid = await fakes.call(sent.next_call(is_grid, timeout=JOB_WAIT_S))
    if grid.status != 200:
        raise RuntimeError(f"the grid was refused: {grid.response}")
    return int(grid.response["id"])


async def send_interactions(
    fakes: FakeThread, fake: FakeDiscord, grid: int, imagines: int, presses: int, rate: float
) -> list[tuple[str, SentInteraction]]:
    """INTERACTION_CREATE events at `rate` a second, the presses spread among the commands."""
    kinds = ["imagine"] * imagines
    for index in range(presses):
        kinds.insert((index + 1) * len(kinds) // (presses + 1), "press")
    sent: list[tuple[str, SentInteraction]] = []
    started = time.monotonic()
    for index, kind in enumerate(kinds):
        await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        user = FakeUser(FIRST_USER_ID + index, f"user{index}")
        if kind == "imagine":
            fields = {"prompt": f"a lighthouse {index} --steps 2", "count": 1}
            coroutine = fake.slash("imagine", fields, user=user)
        else:
            button = GRID_BUTTONS[index % len(GRID_BUTTONS)]
            coroutine = fake.press(grid, f"easel:1:{button}", user=user)
        sent.append((kind, await fakes.call(coroutine)))
    return sent


async def acknowledgements(
    fakes: FakeThread, sent: list[tuple[str, SentInteraction]]
) -> list[Acknowledged]:
    acknowledged = []
    for kind, interaction in sent:
        callback = await fakes.call(
            interaction.next_call(lambda call: call.matches(CALLBACK), timeout=WAIT_S)
        )
        # The job's "queued" message (or a refusal, or the remix line): the core's work done.
        answer = await fakes.call(interaction.next_call(timeout=WAIT_S))
        start = interaction.dispatched_at
        acknowledged.append(Acknowledged(kind, callback.at - start, answer.at - start))
    return acknowledged


async def bench(args: argparse.Namespace, scratch: Path) -> None:
    engine = Engine(load_shape("tiny", choose_device("cpu"), scratch))
    async with FakeThread() as fakes:
        fake = fakes.fake
        settings = bot_settings(scratch, fake)
        async with serving(fakes, fake, settings, engine) as (bot, executor):
            grid = await make_grid(fakes, fake)
            await keep_one_running(bot, executor)
            await queue_jobs(bot, args.jobs)
            running = len(bot.service.dispatcher.running_jobs())
            cpu_started = time.process_time()
            sent = await send_interactions(
                fakes, fake, grid, args.interactions, args.presses, args.rate
            )
            acked = await acknowledgements(fakes, sent)
            cpu_s = time.process_time() - cpu_started
    print(
        f"{args.jobs} jobs queued, {running} running; {len(sent)} interactions at "
        f"{args.rate:g}/s ({args.interactions} /imagine, {args.presses} button presses)"
    )
    print(latency_header("acknowledgement"))
    print(latency_line("/imagine", [a.seconds for a in acked if a.kind == "imagine"]))
    print(latency_line("button press", [a.seconds for a in acked if a.kind == "press"]))
    print(latency_line("all", [a.seconds for a in acked]))
    print(latency_line("first message (all)", [a.answered_s for a in acked]))
    print(cpu_line(cpu_s, len(sent), "interaction", "fake Discord"))
    refused = len(fakes.fake.refused_calls)  # a late callback, a bad edit: none expected
    print(f"refused REST calls: {refused}; target: acknowledgement p99 under 50 ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100, help="queued behind the running one")
    parser.add_argument("--interactions", type=int, default=200, help="/imagine commands sent")
    parser.add_argument("--presses", type=int, default=20, help="button presses sent")
    parser.add_argument("--rate", type=float, default=50.0, help="interactions a second")
    run_quietly(bench, parser.parse_args())


if __name__ == "__main__":
    main()
