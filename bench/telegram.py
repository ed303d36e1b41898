"""Telegram reply benchmark: how soon a busy bot answers an update it got by long polling.

A real bot (the Telegram front end with its AIORateLimiter, the core, the local executor on the
`tiny` random model) polling the fake Bot API server of tests/fakes/telegram.py, which runs on
its own thread and event loop, as Telegram runs elsewhere, with the Bots FAQ's flood limits on
(one message a second to a chat). First each of `--presses` users makes a grid in their private
chat; then one job is kept running (its batch waits until the end) and `--jobs` more are queued
behind it. Then `--updates` /imagine messages, each from its own user in their own private chat
(so that the limit per chat plays no part), and `--presses` presses, each on its user's grid,
are enqueued at `--rate` a second. Per update: the time from the fake handing it out in a
getUpdates answer to the fake receiving the bot's first reply to it: for an /imagine the
sendMessage replying to it (the job's "queued" message, or a refusal), for a press the
answerCallbackQuery. That includes the way into the bot (HTTP on 127.0.0.1, PTB's parsing, its
dispatch to at most 16 updates at once), the core's work for a request (options, admission,
the job row) and AIORateLimiter, which lets at most 30 requests a second out (a `--rate` above
that measures the limiter); it leaves out the wait for the long poll to hand the update out.
Prints the count, p50, p90, p99 and max in ms, the process's CPU time per update and the
machine's load (a busy CPU delays the bot's one event loop), and how many calls the fake refused
while the updates were answered; asserts nothing.

    python -m bench.telegram
    python -m bench.telegram --jobs 100 --updates 200 --presses 20 --rate 20
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
from bot import telegram as telegram_front_end
from bot.core.frontend import BotContext
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from pipeline.device import choose_device
from pipeline.engine import Engine
from tests.fakes.telegram import (
    FakeMessage,
    FakeTelegram,
    FakeTelegramSettings,
    RecordedCall,
)
from tests.fakes.threaded import FakeThread

WAIT_S = 30.0  # for the bot's start and each reply
JOB_WAIT_S = 120.0  # the grids on the tiny model, on a busy CPU
FIRST_USER_ID = 700_000_000  # the /imagine users'
FIRST_OWNER_ID = 800_000_000  # the grids' owners'
GRID_PROMPT = "a red fox {index} --steps 2 --n 2"


@dataclass(frozen=True)
class Sent:
    """An update the bench enqueued, and how to know the bot's first reply to it."""

    kind: str  # "imagine" or "press"
    update_id: int
    chat_id: int
    message_id: int  # the /imagine message, or the grid pressed
    query_id: str | None = None  # a press's callback query

    def is_first_reply(self, call: RecordedCall) -> bool:
        if self.query_id is not None:
            return (
                call.method.lower() == "answercallbackquery"
                and str(call.params.get("callback_query_id")) == self.query_id
            )
        replying = call.params.get("reply_parameters")
        return (
            call.chat_id == self.chat_id
            and isinstance(replying, dict)
            and replying.get("message_id") == self.message_id
        )


@dataclass(frozen=True)
class Answered:
    kind: str
    seconds: float  # handed out by getUpdates -> first reply received, on the fake's clock


def bot_settings(folder: Path, fake: FakeTelegram) -> Settings:
    return Settings(
        _env_file=None,
        DATABASE_URL=f"sqlite:///{folder / 'easel.db'}",
        outputs_dir=folder / "outputs",
        models_dir=folder / "models",
        cache_dir=folder / "cache",
        device="cpu",
        TELEGRAM_TOKEN=fake.token,
        telegram_api_url=fake.url,
    )


@contextlib.asynccontextmanager
async def serving(
    fakes: FakeThread[FakeTelegram], settings: Settings, engine: Engine
) -> AsyncIterator[tuple[Bot, HeldExecutor]]:
    """The bot with its Telegram front end, its menus set and polling the fake."""
    fake = fakes.fake
    executor = HeldExecutor(engine, settings.models_dir)
    bot = build_bot(settings, engine, open_store(settings), executor)
    stop = asyncio.Event()
    await bot.service.start()
    front_end = asyncio.create_task(
        telegram_front_end.serve(BotContext(bot.service), settings, stop)
    )
    try:
        polling = fakes.call(fake.wait_until(lambda: polled(fake), WAIT_S))
        await first_of(polling, front_end)
        yield bot, executor
    finally:
        executor.resume()
        stop.set()
        await asyncio.wait_for(front_end, WAIT_S)
        await bot.service.stop()
        await bot.executor.close()
        bot.store.close()


def polled(fake: FakeTelegram) -> bool:
    """The bot has asked for updates (a long poll is answered only when it times out, so it
    is the asking that says the bot is ready, not the answer)."""
    return any(call.method.lower() == "getupdates" for call in fake.calls)


async def first_of(waiting: Coroutine[Any, Any, None], front_end: asyncio.Task[None]) -> None:
    """Wait for `waiting`, unless the front end stops first (then say why)."""
    task = asyncio.ensure_future(waiting)
    await asyncio.wait({task, front_end}, return_when=asyncio.FIRST_COMPLETED)
    if front_end.done():
        task.cancel()
        front_end.result()
        raise RuntimeError("the Telegram front end stopped")
    task.result()


def post_imagine(fake: FakeTelegram, user_id: int, prompt: str) -> FakeMessage:
    """A new user sends `/imagine prompt` in their private chat with the bot."""
    user = fake.add_user(user_id, f"User {user_id}")
    return fake.send_message(fake.private_chat(user), user, f"/imagine {prompt}")


async def make_grids(
    fakes: FakeThread[FakeTelegram], count: int, first_id: int
) -> list[FakeMessage]:
    """`count` users each /imagine a grid in their private chat: the grids, with their buttons."""
    fake = fakes.fake
    asked = [
        await fakes.do(post_imagine, fake, first_id + index, GRID_PROMPT.format(index=index))
        for index in range(count)
    ]
    grids = []
    for message in asked:

        def is_grid(call: RecordedCall, chat_id: int = message.chat.id) -> bool:
            return (
                call.ok
                and call.method.lower() == "sendphoto"
                and call.chat_id == chat_id
                and "reply_markup" in call.params
            )

        call = await fakes.call(fake.wait_for_call(is_grid, timeout=JOB_WAIT_S))
        grids.append(await fakes.do(fake.message, message.chat, call.result["message_id"]))
    return grids


def press_on(fake: FakeTelegram, grid: FakeMessage, index: int) -> Sent:
    """The grid's owner presses one of its buttons (a different one for each `index`)."""
    buttons = [b["callback_data"] for b in grid.buttons if "callback_data" in b]
    owner = fake.users[grid.chat.id]  # a private chat's id is its user's
    query = fake.press(grid, buttons[index % len(buttons)], user=owner)
    return Sent("press", query.update_id, grid.chat.id, grid.message_id, query.id)


def imagine(fake: FakeTelegram, index: int) -> Sent:
    message = post_imagine(fake, FIRST_USER_ID + index, f"a lighthouse {index} --steps 2")
    assert message.update_id is not None  # a private chat: the bot sees every message
    return Sent("imagine", message.update_id, message.chat.id, message.message_id)


async def send_updates(
    fakes: FakeThread[FakeTelegram], grids: list[FakeMessage], imagines: int, rate: float
) -> list[Sent]:
    """The updates at `rate` a second, the presses spread among the /imagine messages."""
    kinds = ["imagine"] * imagines
    for index in range(len(grids)):
        kinds.insert((index + 1) * len(kinds) // (len(grids) + 1), "press")
    fake = fakes.fake
    sent: list[Sent] = []
    presses = iter(enumerate(grids))
    started = time.monotonic()
    for index, kind in enumerate(kinds):
        await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        if kind == "imagine":
            sent.append(await fakes.do(imagine, fake, index))
        else:
            number, grid = next(presses)
            sent.append(await fakes.do(press_on, fake, grid, number))
    return sent


async def answers(fakes: FakeThread[FakeTelegram], sent: list[Sent]) -> list[Answered]:
    fake = fakes.fake
    answered = []
    for update in sent:
        await fakes.call(
            fake.wait_until(lambda u=update: fake.handed_out(u.update_id) is not None, WAIT_S)
        )
        handed = fake.handed_out(update.update_id)
        assert handed is not None and handed.answered_at is not None
        reply = await fakes.call(
            fake.wait_for_call(update.is_first_reply, timeout=WAIT_S, start=handed.index)
        )
        answered.append(Answered(update.kind, reply.at - handed.answered_at))
    return answered


async def bench(args: argparse.Namespace, scratch: Path) -> None:
    engine = Engine(load_shape("tiny", choose_device("cpu"), scratch))
    fake = FakeTelegram(FakeTelegramSettings(flood_control=True))
    async with FakeThread(fake=fake) as fakes:
        settings = bot_settings(scratch, fake)
        async with serving(fakes, settings, engine) as (bot, executor):
            grids = await make_grids(fakes, args.presses, FIRST_OWNER_ID)
            await keep_one_running(bot, executor)
            await queue_jobs(bot, args.jobs)
            running = len(bot.service.dispatcher.running_jobs())
            # A press's reply in the grid's chat must not meet the limit of a message a second.
            await asyncio.sleep(fake.settings.per_chat_interval_s)
            first_call = len(fake.calls)
            cpu_started = time.process_time()
            sent = await send_updates(fakes, grids, args.updates, args.rate)
            answered = await answers(fakes, sent)
            cpu_s = time.process_time() - cpu_started
            refused = [c for c in fake.refused_calls if c.index >= first_call]
    print(
        f"{args.jobs} jobs queued, {running} running; {len(sent)} updates at {args.rate:g}/s "
        f"({args.updates} /imagine, {args.presses} button presses)"
    )
    print(latency_header("first reply"))
    print(latency_line("/imagine", [a.seconds for a in answered if a.kind == "imagine"]))
    print(latency_line("button press", [a.seconds for a in answered if a.kind == "press"]))
    print(latency_line("all", [a.seconds for a in answered]))
    print(cpu_line(cpu_s, len(sent), "update", "fake Telegram"))
    print(f"refused calls: {len(refused)} (a flood limit, a bad reply: none expected)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100, help="queued behind the running one")
    parser.add_argument("--updates", type=int, default=200, help="/imagine messages sent")
    parser.add_argument("--presses", type=int, default=20, help="button presses sent")
    parser.add_argument("--rate", type=float, default=20.0, help="updates a second")
    run_quietly(bench, parser.parse_args())


if __name__ == "__main__":
    main()
