"""The job service end to end on the tiny model: queueing, batching, buttons, refusals,
cancellation, failures, history and settings, as rows, files and events a user would see."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.core.events import EventKind, JobEvent, Origin, Refusal, UserRef
from bot.core.messages import Key
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from bot.store import JobKind, JobStatus, Role
from pipeline.engine import Engine
from pipeline.errors import GenerationOutOfMemory
from pipeline.request import GenerationRequest

pytestmark = pytest.mark.heavy  # started first: see conftest.py

ORIGIN = Origin("test", "chat-1")
ALICE = UserRef("test", "alice", "Alice", "en")
BOB = UserRef("test", "bob", "Bob", "ko")
CAROL = UserRef("test", "carol", "Carol", "en")


class Recorder:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    async def __call__(self, event: JobEvent) -> None:
        self.events.append(event)

    def of(self, kind: EventKind, job_id: int | None = None) -> list[JobEvent]:
        return [
            event
            for event in self.events
            if event.kind is kind and (job_id is None or event.job_id == job_id)
        ]


@pytest.fixture
def make_bot(engine: Engine, tmp_path: Path) -> Iterator[Callable[..., Bot]]:
    made: list[Bot] = []

    def make(**overrides: Any) -> Bot:
        values: dict[str, Any] = {
            "outputs_dir": tmp_path / "out",
            "models_dir": tmp_path / "models",
            "database_url": f"sqlite:///{tmp_path}/easel.db",
            "progress_interval": 0,
            "max_batch_images": 4,
            **overrides,
        }
        settings = Settings(_env_file=None, **values)
        bot = build_bot(settings, engine, open_store(settings))
        made.append(bot)
        return bot

    yield make
    for bot in made:
        bot.store.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def imagine(bot: Bot, user: UserRef, text: str) -> int:
    service = bot.service
    ticket = await service.imagine(user, await service.options(user, text, ORIGIN), ORIGIN)
    return ticket.job_id


async def finish(bot: Bot) -> None:
    await asyncio.wait_for(bot.service.wait_until_idle(ORIGIN.platform), 120)


async def run_queued(bot: Bot) -> None:
    """Start on what is queued, wait until all of it is done, stop."""
    await bot.service.start()
    await finish(bot)
    await bot.service.stop()


async def until(condition: Callable[[], object]) -> None:
    """Return once `condition()` is true; callers bound the wait with `asyncio.wait_for`."""
    while not condition():
        await asyncio.sleep(0.005)


def generate(bot: Bot, user: UserRef, text: str) -> int:
    """One job through a running bot, start to finish."""

    async def scenario() -> int:
        await bot.service.start()
        job = await imagine(bot, user, text)
        await finish(bot)
        await bot.service.stop()
        return job

    return run(scenario())


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def job_count(bot: Bot) -> int:
    return sum(
        bot.store.history(run(bot.service.user(user)).id, 1).total for user in (ALICE, BOB, CAROL)
    )


def test_compatible_jobs_of_three_users_run_as_one_batch_and_equal_running_alone(
    make_bot: Callable[..., Bot], engine: Engine
) -> None:
    bot = make_bot(max_batch_images=6)  # the AND job counts as 2 of its 1.5 images
    recorder = Recorder()
    bot.service.subscribe("test", recorder)

    async def scenario() -> list[int]:
        jobs = [
            await imagine(bot, ALICE, "a red fox in snow --steps 3 --n 2"),
            await imagine(bot, BOB, "a lighthouse AND stormy sea --steps 3 --n 1"),
            await imagine(bot, CAROL, "[a cat:a dog:0.5] on a sofa --steps 3 --n 1"),
        ]
        await run_queued(bot)  # queued first, so the scheduler sees all three at once
        return jobs

    jobs = run(scenario())
    records = [bot.store.job(job_id, with_images=True) for job_id in jobs]
    assert all(record is not None and record.status is JobStatus.DONE for record in records)
    assert len({record.started_at for record in records if record is not None}) == 1
    for record in records:
        assert record is not None
        alone = engine.generate(GenerationRequest.from_json(record.request))
        assert len(record.images) == len(alone.images)
        for stored, expected in zip(record.images, alone.images, strict=True):
            assert np.array_equal(pixels(stored.path), np.asarray(expected.image))
            assert len(stored.sha256) == 64
    finished = recorder.of(EventKind.FINISHED, jobs[0])
    assert len(finished) == 1
    reply = finished[0].reply
    assert reply.grid is not None and reply.grid.is_file()
    assert [button.custom_id for button in reply.buttons[0]] == [
        f"easel:{jobs[0]}:U1",
        f"easel:{jobs[0]}:U2",
    ]
    assert "Steps: 3" in (reply.parameters or "")
    queued = recorder.of(EventKind.QUEUED, jobs[2])
    assert len(queued) == 1 and queued[0].position == 3
    progress = recorder.of(EventKind.PROGRESS, jobs[1])
    assert [event.step for event in progress] == [1, 2, 3]
    assert bot.store.job(jobs[0]).delivery.value == "delivered"  # type: ignore[union-attr]


def test_buttons_make_child_jobs_counted_against_the_presser(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()

    async def scenario() -> tuple[int, dict[str, int]]:
        await bot.service.start()
        parent = await imagine(bot, ALICE, "a castle --steps 2 --n 2")
        await finish(bot)
        children = {}
        for action in ("U2", "V1", "S2", "reroll"):
            children[action] = (await bot.service.act(BOB, parent, action, ORIGIN)).job_id
        await finish(bot)
        await bot.service.stop()
        return parent, children

    parent, children = run(scenario())
    bob = run(bot.service.user(BOB))
    source = bot.store.job(parent, with_images=True)
    assert source is not None
    for action, job_id in children.items():
        child = bot.store.job(job_id, with_images=True)
        assert child is not None and child.status is JobStatus.DONE, action
        assert child.user_id == bob.id and child.parent_id == parent
    upscaled = bot.store.job(children["U2"], with_images=True)
    assert upscaled is not None and upscaled.kind is JobKind.UPSCALE
    assert upscaled.image_index == 1 and len(upscaled.images) == 1
    assert (upscaled.images[0].width, upscaled.images[0].height) == (128, 128)
    subtle = bot.store.job(children["S2"], with_images=True)
    assert subtle is not None and subtle.kind is JobKind.VARY_SUBTLE
    assert {image.seed for image in subtle.images} == {source.images[1].seed}
    strong = bot.store.job(children["V1"], with_images=True)
    assert strong is not None and GenerationRequest.from_json(strong.request).is_img2img
    rerolled = bot.store.job(children["reroll"], with_images=True)
    assert rerolled is not None
    assert {image.seed for image in rerolled.images}.isdisjoint(
        image.seed for image in source.images
    )


def test_refusals_are_localised_and_write_nothing(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot(banned_words="gore", max_queued_per_user=1, daily_images=3)
    service = bot.service
    bob_id = run(service.user(BOB)).id
    bot.store.update_chat("test", "chat-1", banned_words=["clown"])

    async def refusal(user: UserRef, text: str) -> Refusal:
        with pytest.raises(Refusal) as caught:
            await service.imagine(user, await service.options(user, text, ORIGIN), ORIGIN)
        return caught.value

    async def scenario() -> dict[str, Refusal]:
        found = {
            "global word": await refusal(ALICE, "a gore scene --n 1"),
            "chat word": await refusal(ALICE, "a Clown at night --n 1"),
            "nsfw": await refusal(ALICE, "a nude statue --n 1"),
            "quota": await refusal(ALICE, "a castle --n 4"),
            "lora": await refusal(ALICE, "a castle <lora:missing-lora:1> --n 1"),
        }
        with pytest.raises(Refusal) as options:
            await service.options(BOB, "a castle --steps 9999", ORIGIN)
        found["options"] = options.value
        bot.store.ban(bob_id, "spam")
        found["ban"] = await refusal(BOB, "a castle --n 1")
        await imagine(bot, ALICE, "a castle --n 1 --steps 2")
        found["cap"] = await refusal(ALICE, "a second castle --n 1")
        return found

    found = run(scenario())
    assert found["global word"].reply.text("en").endswith("gore")
    assert found["chat word"].reply.message.key is Key.BANNED_WORD
    assert found["nsfw"].reply.message.key is Key.NSFW_WORD
    assert found["quota"].reply.message.key is Key.DAILY_QUOTA
    assert "missing-lora" in found["lora"].reply.text("en")
    assert "--steps" in found["options"].reply.text("ko")
    assert "금지" in found["ban"].reply.text("ko") and "spam" in found["ban"].reply.text("ko")
    assert found["cap"].reply.message.key is Key.QUEUE_FULL_USER
    assert job_count(bot) == 1  # only the one accepted job was written


def test_global_queue_cap_and_vip_and_admin_caps(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot(max_queued_per_user=1, max_queue=3)
    service = bot.service
    bot.store.set_role(run(service.user(BOB)).id, Role.VIP)
    bot.store.set_role(run(service.user(CAROL)).id, Role.ADMIN)

    async def scenario() -> Key:
        await imagine(bot, BOB, "one --n 1")
        await imagine(bot, BOB, "two --n 1")  # a vip may queue twice the cap
        await imagine(bot, CAROL, "three --n 1")
        with pytest.raises(Refusal) as full:
            await imagine(bot, ALICE, "four --n 1")
        return full.value.reply.message.key

    assert run(scenario()) is Key.QUEUE_FULL_GLOBAL


def test_cancelling_queued_and_running_jobs(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe("test", recorder)
    service = bot.service
    bot.store.set_role(run(service.user(CAROL)).id, Role.ADMIN)

    async def scenario() -> dict[str, Any]:
        queued = await imagine(bot, ALICE, "a queued castle --n 1")
        with pytest.raises(Refusal) as foreign:
            await service.cancel(BOB, queued, ORIGIN)
        first = (await service.cancel(ALICE, queued)).message.key
        long_job = await imagine(bot, ALICE, "a long castle --n 1 --steps 60")
        other = await imagine(bot, BOB, "a lighthouse --n 1 --steps 2")
        await service.start()
        await asyncio.wait_for(until(lambda: recorder.of(EventKind.PROGRESS, long_job)), 60)
        running = (await service.cancel(CAROL, long_job)).message.key  # an admin may
        await finish(bot)
        with pytest.raises(Refusal) as again:
            await service.cancel(ALICE, long_job)
        await service.stop()
        return {
            "foreign": foreign.value.reply.message.key,
            "first": first,
            "running": running,
            "again": again.value.reply.message.key,
            "ids": (queued, long_job, other),
        }

    result = run(scenario())
    queued, long_job, other = result["ids"]
    assert result["foreign"] is Key.NOT_YOUR_JOB
    assert result["first"] is Key.CANCELLED and result["running"] is Key.CANCEL_REQUESTED
    assert result["again"] is Key.ALREADY_FINISHED
    statuses = [bot.store.job(job_id).status for job_id in (queued, long_job, other)]  # type: ignore[union-attr]
    assert statuses == [JobStatus.CANCELLED, JobStatus.CANCELLED, JobStatus.DONE]
    assert not recorder.of(EventKind.STARTED, queued)
    assert len(recorder.of(EventKind.CANCELLED, long_job)) == 1
    progress = recorder.of(EventKind.PROGRESS, long_job)
    assert progress[-1].step < 60


def test_out_of_memory_fails_that_job_alone_and_the_next_runs(
    make_bot: Callable[..., Bot], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe("test", recorder)
    original = engine.run_batch

    def run_batch(jobs: Any, *args: Any, **kwargs: Any) -> Any:
        if any("enormous" in job.request.prompt for job in jobs):
            raise GenerationOutOfMemory("The GPU ran out of memory for 1 image(s).")
        return original(jobs, *args, **kwargs)

    monkeypatch.setattr(engine, "run_batch", run_batch)

    async def scenario() -> tuple[int, int]:
        big = await imagine(bot, ALICE, "an enormous castle --n 1 --steps 2")
        small = await imagine(bot, BOB, "a small castle --n 1 --steps 2")
        await run_queued(bot)
        return big, small

    big, small = run(scenario())
    assert bot.store.job(big).status is JobStatus.FAILED  # type: ignore[union-attr]
    assert bot.store.job(small).status is JobStatus.DONE  # type: ignore[union-attr]
    failed = recorder.of(EventKind.FAILED, big)
    assert len(failed) == 1 and failed[0].reply.message.key is Key.FAILED_OUT_OF_MEMORY
    assert "GPU" in failed[0].reply.text("en") and "메모리" in failed[0].reply.text("ko")
    assert "failed" in run(bot.service.info(big)).text("en")


def test_event_loop_stays_responsive_while_a_job_runs(
    make_bot: Callable[..., Bot], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch is held inside the engine until the loop has served other work; were the
    engine run on the loop's thread, the loop could not get there and the hold would expire."""
    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe("test", recorder)
    entered, released = threading.Event(), threading.Event()
    held: list[bool] = []
    original = engine.run_batch

    def run_batch(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        held.append(released.wait(60))
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "run_batch", run_batch)

    async def scenario() -> tuple[int, list[tuple[JobStatus, int]]]:
        await bot.service.start()
        job = await imagine(bot, ALICE, "a castle --n 1 --steps 2")
        await asyncio.wait_for(until(entered.is_set), 60)
        served = []
        for _ in range(10):  # other work the loop does while the job runs
            await asyncio.sleep(0)
            record = bot.store.job(job)
            assert record is not None
            served.append((record.status, len(recorder.of(EventKind.FINISHED, job))))
        released.set()
        await finish(bot)
        await bot.service.stop()
        return job, served

    job, served = run(scenario())
    assert held == [True], "the engine ran on the event loop's thread"
    assert served == [(JobStatus.RUNNING, 0)] * 10
    assert bot.store.job(job).status is JobStatus.DONE  # type: ignore[union-attr]
    assert len(recorder.of(EventKind.FINISHED, job)) == 1


def test_progress_is_throttled_per_job(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot(progress_interval=3600)
    recorder = Recorder()
    bot.service.subscribe("test", recorder)

    job = generate(bot, ALICE, "a castle --n 1 --steps 5")
    assert [event.step for event in recorder.of(EventKind.PROGRESS, job)] == [1]
    assert len(recorder.of(EventKind.FINISHED, job)) == 1


def test_settings_apply_to_new_jobs_and_bad_values_change_nothing(
    make_bot: Callable[..., Bot],
) -> None:
    service = make_bot().service
    run(service.update_settings(ALICE, {"style": "watercolor", "steps": "7", "ar": "3:2"}))
    options = run(service.options(ALICE, "a harbour", ORIGIN))
    assert (options.style, options.steps, options.aspect_ratio) == ("watercolor", 7, (3.0, 2.0))
    given = run(service.options(ALICE, "a harbour --steps 5 --size 64x64", ORIGIN))
    assert (given.steps, given.size, given.aspect_ratio) == (5, (64, 64), None)
    with pytest.raises(Refusal) as bad:
        run(service.update_settings(ALICE, {"style": "oil-painting", "steps": "many"}))
    assert "--steps" in bad.value.reply.text("en")
    assert (run(service.locale(ALICE)), run(service.locale(BOB))) == ("en", "ko")
    assert run(service.locale(UserRef("test", "bob"))) == "ko"  # remembered from earlier
    shown = run(service.settings(ALICE)).text("ko")
    assert "style: watercolor" in shown and "steps: 7" in shown and "설정 안 됨" in shown
    cleared = run(service.update_settings(ALICE, {"style": "none"})).text("en")
    assert "style: (not set)" in cleared
    with pytest.raises(Refusal) as unknown:
        run(service.update_settings(ALICE, {"colour": "red"}))
    assert unknown.value.reply.message.key is Key.SETTINGS_UNKNOWN


def test_history_pages_newest_first(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot(max_queued_per_user=20)

    async def scenario() -> None:
        for number in range(12):
            await imagine(bot, ALICE, f"castle number {number} --n 1")

    run(scenario())
    first = run(bot.service.history(ALICE, 1)).text("en")
    last = run(bot.service.history(ALICE, 3)).text("en")
    assert "page 1 of 3 (12 in all)" in first
    assert first.index("castle number 11") < first.index("castle number 10")
    assert [line.rsplit(": ", 1)[1] for line in last.splitlines()[1:]] == [
        "castle number 1",
        "castle number 0",
    ]
    assert run(bot.service.history(BOB)).message.key is Key.HISTORY_EMPTY


def test_pnginfo_reads_parameters_and_refuses_non_images(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()

    job_id = generate(bot, ALICE, "a quiet pond --n 1 --steps 2 --seed 42")
    job = bot.store.job(job_id, with_images=True)
    assert job is not None
    reply = run(bot.service.pnginfo(Path(job.images[0].path).read_bytes()))
    assert "a quiet pond" in reply.text("en") and "Seed: 42" in reply.text("en")
    with pytest.raises(Refusal) as refused:
        run(bot.service.pnginfo(b"not an image"))
    assert refused.value.reply.text("en") == "That is not an image Easel can read."


def test_a_job_whose_recording_fails_fails_alone(
    make_bot: Callable[..., Bot], monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe("test", recorder)
    dispatcher = bot.service.dispatcher
    save = dispatcher._save

    def full_disk(job: Any, outcome: Any) -> Any:
        if "doomed" in outcome.images[0].infotext.prompt:
            raise OSError(28, "No space left on device")
        return save(job, outcome)

    monkeypatch.setattr(dispatcher, "_save", full_disk)

    async def scenario() -> tuple[int, int]:
        doomed = await imagine(bot, ALICE, "a doomed castle --n 1 --steps 2")
        fine = await imagine(bot, BOB, "a fine castle --n 1 --steps 2")
        await run_queued(bot)
        return doomed, fine

    doomed, fine = run(scenario())
    assert bot.store.job(doomed).status is JobStatus.FAILED  # type: ignore[union-attr]
    assert bot.store.job(fine).status is JobStatus.DONE  # type: ignore[union-attr]
    failed = recorder.of(EventKind.FAILED, doomed)
    text = failed[0].reply.text("en")
    assert len(failed) == 1 and "No space left" not in text
    reference = re.search(r"reference (E-[0-9A-F]{8})", text)
    assert reference is not None
    row = bot.store.job(doomed)
    assert row is not None and "No space left" in (row.failure_trace or "")


def test_concurrent_requests_never_overrun_the_caps(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot(max_queued_per_user=2)
    service = bot.service

    async def scenario() -> list[Any]:
        async def one(number: int) -> Any:
            options = await service.options(ALICE, f"castle {number} --n 1", ORIGIN)
            return await service.imagine(ALICE, options, ORIGIN)

        return await asyncio.gather(*(one(number) for number in range(6)), return_exceptions=True)

    outcomes = run(scenario())
    refused = [outcome for outcome in outcomes if isinstance(outcome, Refusal)]
    assert len(refused) == 4
    assert {refusal.reply.message.key for refusal in refused} == {Key.QUEUE_FULL_USER}
    assert bot.store.count_queued(run(service.user(ALICE)).id) == 2


def test_events_come_in_order_and_admins_cancelling_tells_the_owner(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe("test", recorder)
    bot.store.set_role(run(bot.service.user(CAROL)).id, Role.ADMIN)

    async def scenario() -> tuple[int, int]:
        await bot.service.start()
        first = await imagine(bot, ALICE, "a castle --n 1 --steps 2")
        await finish(bot)
        await bot.service.stop()  # the next job waits in the queue
        waiting = await imagine(bot, ALICE, "a waiting castle --n 1 --steps 2")
        await bot.service.cancel(CAROL, waiting)
        await asyncio.sleep(0.05)
        return first, waiting

    first, waiting = run(scenario())
    kinds = [event.kind for event in recorder.events if event.job_id == first]
    assert kinds[:2] == [EventKind.QUEUED, EventKind.STARTED]
    assert kinds[-1] is EventKind.FINISHED
    cancelled = recorder.of(EventKind.CANCELLED, waiting)
    assert len(cancelled) == 1 and cancelled[0].origin == ORIGIN
    assert bot.store.job(waiting).status is JobStatus.CANCELLED  # type: ignore[union-attr]


def test_private_results_are_only_for_their_owner_and_admins(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()
    service = bot.service
    run(service.update_settings(ALICE, {"private": "on"}))
    run(service.grant_role(CAROL, Role.ADMIN))

    job = generate(bot, ALICE, "a secret garden --n 1 --steps 2")
    mine = run(service.info(job, ALICE, ORIGIN))
    assert mine.private and len(mine.images) == 1
    assert len(run(service.info(job, CAROL)).images) == 1
    # To anyone else, in the same chat too, it is a job that does not exist.
    for asked in (lambda: service.info(job, BOB, ORIGIN), lambda: service.remix_line(BOB, job)):
        with pytest.raises(Refusal) as refused:
            run(asked())
        assert refused.value.reply.text("en") == f"There is no job #{job}."


def test_jobs_are_seen_and_pressed_only_by_their_owner_admins_and_their_shared_chat(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()
    service = bot.service
    elsewhere = Origin("test", "someone-elses-dm")
    job = generate(bot, ALICE, "a secret prompt about my diary --n 1 --steps 2")
    nothing = run(_refusal_text(service.info, job + 1000, BOB, ORIGIN))

    # Bob in the chat where it was posted may look and press; from elsewhere he cannot,
    # and what he is told is exactly what a number nobody used gets.
    assert "a secret prompt" in run(service.info(job, BOB, ORIGIN)).text("en")
    for call, args in (
        (service.info, (job, BOB, elsewhere)),
        (service.info, (job, BOB)),
        (service.act, (BOB, job, "U1", elsewhere)),
        (service.act, (BOB, job, "reroll", elsewhere)),
        (service.cancel, (BOB, job, elsewhere)),
        (service.remix_line, (BOB, job, elsewhere)),
    ):
        text = run(_refusal_text(call, *args))
        assert text == nothing.replace(str(job + 1000), str(job)), call
    # A chat that does not share results keeps each job to its owner.
    bot.store.update_chat("test", "chat-1", shared_results=False)
    assert run(_refusal_text(service.info, job, BOB, ORIGIN)).startswith("There is no job")
    assert run(service.info(job, ALICE, ORIGIN)).images


async def _refusal_text(call: Callable[..., Any], *args: Any) -> str:
    try:
        result = call(*args)
        if asyncio.iscoroutine(result):
            await result
    except Refusal as refusal:
        return refusal.reply.text("en")
    raise AssertionError(f"{call} was not refused")


def test_a_stored_request_this_version_cannot_read_fails_without_stopping_the_bot(
    make_bot: Callable[..., Bot],
) -> None:
    from bot.store import NewJob

    bot = make_bot()
    owner = run(bot.service.user(ALICE))
    broken = bot.store.add_job(
        NewJob(
            user_id=owner.id,
            kind=JobKind.IMAGINE,
            request='{"prompt": "a castle", "colour_grading": "teal"}',
            batch_key=None,
            image_count=1,
            origin_platform="test",
            origin_chat="chat-1",
        )
    )

    fine = generate(bot, BOB, "a fine castle --n 1 --steps 2")
    assert bot.store.job(broken.id).status is JobStatus.FAILED  # type: ignore[union-attr]
    assert bot.store.job(fine).status is JobStatus.DONE  # type: ignore[union-attr]
