"""The operator's commands act on a running bot: a real `easel chat` on the tiny model, and
`easel jobs` / `easel queue` run beside it on the same database. The bot hears of each change
through the database's control row (polled every 0.5 s), never through a second queue.

One bot process serves every test here (loading the model is most of the time); each test
makes its own jobs, reads their numbers from the chat, and leaves the queue running and idle.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.store import JobStatus
from pipeline.images import read_infotext
from tests.running_bot import RunningBot, running_bot

pytestmark = pytest.mark.heavy  # started first: see conftest.py

LONG_STEPS = 1000  # long enough on any CPU for a cancel to land mid-run
PAUSED_WAIT = r"The queue is paused: your queued jobs \("


PRESET = """
[presets.{id}]
description_en = "{id}"
description_ko = "{id}"
trigger = "{id} drawing"
"""


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningBot]:
    root = tmp_path_factory.mktemp("running-bot")
    # A models folder of its own, where presets.toml may change under the running bot.
    models = root / "models"
    (models / "stable-diffusion").mkdir(parents=True)
    for entry in (models_dir / "stable-diffusion").iterdir():
        (models / "stable-diffusion" / entry.name).symlink_to(entry, entry.is_dir())
    (models / "presets.toml").write_text(PRESET.format(id="ink"), encoding="utf-8")
    with running_bot(root, models, EASEL_MAX_STEPS=str(LONG_STEPS)) as started:
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


CONSOLE_USER = "console:local"
SETTLE_TIMEOUT = 30.0  # the bot polls the control row every 0.5 s; a busy machine is slower


def replies_until(bot: RunningBot, line: str, wanted: str, refused: str) -> re.Match[str]:
    """Send `line` until its reply matches `wanted` (the change reached the bot) rather than
    `refused` (not yet); bounded by SETTLE_TIMEOUT."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    either = re.compile(f"(?:{wanted})|(?:{refused})")
    while True:
        bot.send(line)
        match = bot.expect(either)
        if re.search(wanted, match.group(0)):
            return match
        assert time.monotonic() < deadline, f"{line!r} still answered {match.group(0)!r}"
        time.sleep(0.2)


def test_ban_role_and_quota_from_the_command_line_reach_the_bot(bot: RunningBot) -> None:
    (held,) = pause_and_confirm(bot, "/imagine a doomed bird --steps 2 --n 1")
    banned = ok(bot, "users", "ban", CONSOLE_USER, "--reason", "spam", "--for", "1h")
    assert "1 queued job" in banned, banned
    bot.expect(rf"^Job #{held} was cancelled\.$")  # the bot dropped it from its queue
    bot.send("/imagine a second bird --steps 2 --n 1")
    bot.expect(r"^You are banned from using this bot until \d{4}-\d\d-\d\d \d\d:\d\d UTC: spam")
    ok(bot, "users", "unban", CONSOLE_USER)
    ok(bot, "queue", "resume")

    ok(bot, "users", "quota", CONSOLE_USER, "--daily", "1")
    bot.send("/imagine a greedy bird --steps 2 --n 2")
    bot.expect(r"^You have used today's 1 images")
    ok(bot, "users", "quota", CONSOLE_USER, "--daily", "default")

    ok(bot, "users", "role", CONSOLE_USER, "user")
    bot.send("/admin pause")
    bot.expect(r"^Only Easel's admins can do that\.$")
    ok(bot, "users", "role", CONSOLE_USER, "admin")
    freed = bot.submit("/imagine a free bird --steps 2 --n 1")
    bot.expect(rf"^Job #{freed} is done")
    assert status_of(bot, held) is JobStatus.CANCELLED and not started(bot, held)


def test_presets_reload_and_models_use_reach_the_bot(bot: RunningBot) -> None:
    pine = bot.submit("/imagine a pine --preset ink --steps 2 --n 1")  # the bot reads ink
    bot.expect(rf"^Job #{pine} is done")
    presets = bot.root / "models" / "presets.toml"
    # Same size and time stamp: only the reload asked for, not the file watch, sees it.
    stamp = presets.stat()
    presets.write_text(PRESET.format(id="oak"), encoding="utf-8")
    os.utime(presets, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    line = "/imagine a tree --preset oak --steps 2 --n 1"
    unknown = r"Unknown preset 'oak'"
    bot.send(line)
    bot.expect(unknown)  # the bot still has the old presets
    ok(bot, "presets", "reload")
    tree = int(replies_until(bot, line, r"^Job #(\d+) is queued", unknown).group(1))
    bot.expect(rf"^Job #{tree} is done")

    ok(bot, "models", "use", "tiny-sd1-single")
    sketch = bot.submit("/imagine a single file sketch --steps 2 --n 1")
    bot.expect(rf"^Job #{sketch} is done")
    ok(bot, "models", "use", "--default")
    with bot.store() as store:
        made = store.job(sketch, with_images=True)
        before = store.job(tree, with_images=True)
    assert made is not None and before is not None
    assert read_infotext(Path(made.images[0].path)).model == "tiny-sd1-single"
    assert read_infotext(Path(before.images[0].path)).model == "tiny-sd1"
    assert "oak drawing" in read_infotext(Path(before.images[0].path)).prompt
