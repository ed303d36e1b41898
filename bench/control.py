"""How long a change made from the command line takes to reach a running bot: a real
`easel chat` on a tiny random model, and the operator's store calls from this process on the
same database (what `easel jobs cancel`, `easel queue pause` and `easel users ban` do).

Figures, nearest-rank: from the commit in this process to the bot printing its effect, for
- a queued job cancelled (the bot drops it from its queue and tells the chat),
- a running job cancelled (the bot stops it within a sampling step),
- a ban that cancels the user's queued jobs.
The bot polls the control row every 0.5 s: a change waits 0.25 s for it on average, then the
bot reads the rows (and a running job finishes its step)."""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.busy import percentile
from bench.common import quiet_diffusers
from bot.store import Store
from bot.store.people import ban_user, find_user, unban_user
from tests.running_bot import RunningBot, running_bot
from tests.tiny_models import build_random_pipeline

LONG_STEPS = 1000


def timed(bot: RunningBot, change: Callable[[Store], object], effect: str) -> float:
    """Seconds from `change` committing to the bot printing a line matching `effect`."""
    time.sleep(random.uniform(0.0, 0.5))  # not in step with the bot's polling
    with bot.store() as store:
        start = time.monotonic()
        change(store)
    bot.expect(effect)
    return time.monotonic() - start


def queued_cancels(bot: RunningBot, rounds: int) -> list[float]:
    figures = []
    with bot.store() as store:
        store.set_queue_paused(True, "bench")
    for _ in range(rounds):
        job = bot.submit("/imagine a held bird --steps 2 --n 1")
        figures.append(
            timed(
                bot,
                lambda store, job=job: store.request_cancel(job, "bench"),
                rf"^Job #{job} was cancelled",
            )
        )
    with bot.store() as store:
        store.set_queue_paused(False, "bench")
    return figures


def running_cancels(bot: RunningBot, rounds: int) -> list[float]:
    figures = []
    for _ in range(rounds):
        job = bot.submit(f"/imagine a long study --steps {LONG_STEPS} --n 1")
        bot.expect(rf"^Job #{job}: step 2/")
        figures.append(
            timed(
                bot,
                lambda store, job=job: store.request_cancel(job, "bench"),
                rf"^Job #{job} was cancelled",
            )
        )
    return figures


def bans(bot: RunningBot, rounds: int) -> list[float]:
    figures = []
    with bot.store() as store:
        store.set_queue_paused(True, "bench")
        user = find_user(store, "console", "local")
    assert user is not None
    for _ in range(rounds):
        job = bot.submit("/imagine a doomed bird --steps 2 --n 1")

        def ban(store: Store) -> None:
            ban_user(store, user.id, "bench", None, "bench")

        figures.append(timed(bot, ban, rf"^Job #{job} was cancelled"))
        with bot.store() as store:
            unban_user(store, user.id, "bench")
    with bot.store() as store:
        store.set_queue_paused(False, "bench")
    return figures


def report(name: str, figures: list[float]) -> None:
    ordered = sorted(figures)
    print(
        f"{name:<22} n={len(ordered):>3}  p50 {percentile(ordered, 0.5) * 1000:6.0f} ms  "
        f"p95 {percentile(ordered, 0.95) * 1000:6.0f} ms  max {ordered[-1] * 1000:6.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    quiet_diffusers()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        models = root / "models"
        build_random_pipeline("sd1").save_pretrained(models / "stable-diffusion" / "tiny-sd1")
        with running_bot(root, models, EASEL_MAX_STEPS=str(LONG_STEPS)) as bot:
            print("From a change committed by another process to its effect in a running bot:")
            report("queued job cancelled", queued_cancels(bot, args.rounds))
            report("running job cancelled", running_cancels(bot, args.rounds))
            report("ban (queued cancelled)", bans(bot, args.rounds))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
