"""The operator's commands act on a running bot: a real `easel chat` on the tiny model, and
`easel jobs` / `easel queue` run beside it on the same database. The bot hears of each change
through the database's control row (polled every 0.5 s), never through a second queue.

One bot process serves every test here (loading the model is most of the time); each test
makes its own jobs, reads their numbers from the chat, and leaves the queue running and idle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.store import JobStatus
from tests.running_bot import RunningBot, running_bot

LONG_STEPS = 1000  # long enough on any CPU for a cancel to land mid-run
PAUSED_WAIT = r"The queue is paused: your queued jobs \("


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningBot]:
    root = tmp_path_factory.mktemp("running-bot")
    with running_bot(root, models_dir, EASEL_MAX_STEPS=str(LONG_STEPS)) as started:
        yield started


@pytest.fixture(autouse=True)
def queue_running_after(bot: RunningBot) -> Iterator[None]:
    yield
    with bot.store() as store:  # a failed test must not leave the next one paused
        if store.queue_paused():
            store.set_queue_paused(False, "test")


def status_of(bot: RunningBot, job_id: int) -> JobStatus:
    with bot.store() as store:
        job = store.job(job_id)
    assert job is not None
    return job.status


def steps_of(bot: RunningBot, job_id: int) -> list[tuple[int, int]]:
    return [
        (int(match.group(1)), int(match.group(2)))
        for match in bot.seen_since_start(rf"^Job #{job_id}: step (\d+)/(\d+)$")
    ]


def started(bot: RunningBot, job_id: int) -> bool:
    return bool(bot.seen_since_start(rf"^Job #{job_id} started"))


def ok(bot: RunningBot, *args: str) -> str:
    result = bot.cli(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def pause_and_confirm(bot: RunningBot, *lines: str) -> list[int]:
    """Pause from the command line, queue these jobs, and see the chat say they wait."""
    assert "Paused" in ok(bot, "queue", "pause")
    jobs = [bot.submit(line) for line in lines]
    bot.send("/wait")  # answers at once when the bot itself holds them for the pause
    bot.expect(PAUSED_WAIT)
    return jobs


def test_cancel_queued_then_running_job(bot: RunningBot) -> None:
    long = bot.submit(f"/imagine a very long study --steps {LONG_STEPS} --n 1")
    queued = bot.submit("/imagine a quick sketch --steps 2 --n 1")
    bot.expect(rf"^Job #{long}: step 2/{LONG_STEPS}$")

    state = json.loads(ok(bot, "queue", "status", "--json"))
    assert [job["id"] for job in state["running"]] == [long]
    assert [(job["position"], job["id"]) for job in state["queued"]] == [(1, queued)]

    # A queued job leaves the bot's queue, and its chat is told.
    assert ok(bot, "jobs", "cancel", str(queued)).strip() == f"Job #{queued} cancelled."
    bot.expect(rf"^Job #{queued} was cancelled\.$")
    assert status_of(bot, queued) is JobStatus.CANCELLED

    # A running job stops within a step of the bot hearing of it, far from its end.
    said = ok(bot, "jobs", "cancel", str(long))
    assert f"Job #{long} is running: the bot stops it within a sampling step." in said
    bot.expect(rf"^Job #{long} was cancelled\.$")
    steps = steps_of(bot, long)
    reached = steps[-1][0]
    assert 2 <= reached < LONG_STEPS // 2, steps[-5:]
    assert all(total == LONG_STEPS for _, total in steps)
    with bot.store() as store:
        job = store.job(long, with_images=True)
    assert job is not None and job.status is JobStatus.CANCELLED and not job.images
    after_cancel = bot.transcript().split(f"Job #{long} was cancelled.")[1]
    assert f"Job #{long}: step" not in after_cancel and f"Job #{long} is done" not in after_cancel

    # The queue goes on, and the cancelled queued job never started.
    last = bot.submit("/imagine a small study --steps 2 --n 1")
    bot.expect(rf"^Job #{last} is done")
    assert not started(bot, queued)


def test_pause_then_resume_from_the_command_line(bot: RunningBot) -> None:
    (held,) = pause_and_confirm(bot, "/imagine a held lantern --steps 2 --n 1")
    assert status_of(bot, held) is JobStatus.QUEUED and not started(bot, held)
    state = json.loads(ok(bot, "queue", "status", "--json"))
    assert state["paused"] is True and state["changed_by"].startswith("cli")
    assert [job["id"] for job in state["queued"]] == [held]

    assert "Resumed: 1 queued job(s)" in ok(bot, "queue", "resume")
    bot.expect(rf"^Job #{held} started: a held lantern")
    bot.expect(rf"^Job #{held} is done")
    assert status_of(bot, held) is JobStatus.DONE


def test_queue_clear_cancels_every_queued_job_in_the_bot(bot: RunningBot) -> None:
    first, second = pause_and_confirm(
        bot, "/imagine a first bird --steps 2 --n 1", "/imagine a second bird --steps 3 --n 1"
    )
    dry = ok(bot, "queue", "clear")
    assert "2 queued job(s) would be cancelled; nothing changed." in dry
    assert {status_of(bot, first), status_of(bot, second)} == {JobStatus.QUEUED}

    cleared = ok(bot, "queue", "clear", "--yes")
    assert cleared.strip() == f"Cancelled 2 queued job(s): #{first}, #{second}."
    bot.expect(rf"^Job #{first} was cancelled\.$")
    bot.expect(rf"^Job #{second} was cancelled\.$")

    ok(bot, "queue", "resume")
    after = bot.submit("/imagine a third bird --steps 2 --n 1")
    bot.expect(rf"^Job #{after} is done")
    assert not started(bot, first) and not started(bot, second)


def test_retry_of_a_cancelled_job_runs_in_the_bot(bot: RunningBot) -> None:
    (job,) = pause_and_confirm(bot, "/imagine a retried comet --steps 2 --n 2 --seed 5")
    ok(bot, "jobs", "cancel", str(job))
    bot.expect(rf"^Job #{job} was cancelled\.$")
    ok(bot, "queue", "resume")

    said = ok(bot, "jobs", "retry", str(job))
    match = re.fullmatch(rf"Job #{job} queued again as job #(\d+)\.", said.strip())
    assert match is not None, said
    again = int(match.group(1))
    bot.expect(rf"^Job #{again} started: a retried comet")
    bot.expect(rf"^Job #{again} is done .*: a retried comet \(seeds 5, 6\)")
    with bot.store() as store:
        old, new = store.job(job), store.job(again, with_images=True)
    assert old is not None and new is not None
    assert new.status is JobStatus.DONE and new.request == old.request
    assert len(new.images) == 2 and all(Path(image.path).is_file() for image in new.images)
    refused = bot.cli("jobs", "retry", str(again))
    assert refused.exit_code == 1
    assert f"Job #{again} is done: only a failed or cancelled job can be retried." in refused.output
