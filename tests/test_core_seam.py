"""The core every front end stands on: the command registry, the text router, the error path,
status messages, events, progress throttling, delivery retries, img2img input and remix."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.core.bus import EventBus
from bot.core.commands import COMMANDS, CommandRegistry
from bot.core.events import EventKind, JobEvent, Origin, Reply, UserRef
from bot.core.frontend import BotContext
from bot.core.messages import Key, Message
from bot.core.router import TextRequest, split_command
from bot.runtime import Bot
from bot.store import Delivery, JobKind, JobStatus, Role
from pipeline.engine import Engine
from tests.test_service import ALICE, BOB, ORIGIN, Recorder, finish, generate, make_bot, run

__all__ = ["make_bot"]  # the fixture, shared with the service tests
PLATFORM = ORIGIN.platform


def route(bot: Bot, user: UserRef, text: str, **fields: Any) -> Reply:
    router = BotContext(bot.service).router(PLATFORM)
    routed = run(router.route(TextRequest(user, fields.pop("origin", ORIGIN), text, **fields)))
    assert routed.reply is not None
    return routed.reply


def png_bytes(size: tuple[int, int] = (64, 64), colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- the registry


def test_the_registry_makes_menus_and_help_in_both_languages() -> None:
    registry = CommandRegistry()
    for command in COMMANDS:
        # Telegram's setMyCommands: 1-32 characters of a-z, 0-9 and _.
        assert re.fullmatch(r"[a-z0-9_]{1,32}", command.name)
    english = dict(registry.menu("telegram", "en"))
    korean = dict(registry.menu("telegram", "ko"))
    assert english["u"] == "upscale image N of the last grid (or of JOB)"
    assert korean["u"] == "마지막 그리드(또는 작업)의 N번 이미지 업스케일"
    assert "wait" not in english and "quit" not in english  # the console's own
    assert "quit" in dict(registry.menu("console", "en"))
    help_text = registry.help("console").text("en")
    assert help_text.splitlines()[0] == "Commands:"
    assert re.search(r"^  /u N \[JOB\] +upscale image N", help_text, re.M)
    assert "/remix [JOB] [LINE]" in help_text
    assert registry.help("console").text("ko").splitlines()[0] == "명령:"


def test_split_command_takes_telegram_mentions_and_plain_lines() -> None:
    assert split_command("/imagine@EaselBot a fox --n 1") == ("imagine", "a fox --n 1")
    assert split_command("/U 2 17") == ("u", "2 17")
    assert split_command("  a castle  ") == (None, "a castle")


# --------------------------------------------------------------------------- the router


def test_the_router_routes_commands_buttons_settings_and_refuses_bad_numbers(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe(PLATFORM, recorder)

    async def scenario() -> list[str]:
        await bot.service.start()
        router = BotContext(bot.service).router(PLATFORM)

        async def say(text: str) -> str:
            routed = await router.route(TextRequest(ALICE, ORIGIN, text))
            assert routed.reply is not None
            return routed.reply.text("en")

        replies = [await say("/imagine@EaselBot a red fox --steps 2 --n 2")]
        await finish(bot)
        replies += [
            await say("/u 2"),  # the chat's last grid
            await say("easel:1:S1"),  # a button id typed in
            await say("/cancel abc"),
            await say("/cancel"),
            await say("/info 1"),
            await say("/settings style=watercolor ar=3:2 comp=portrait"),
            await say("/nonsense"),
            await say("clear/help"),
            await say("history"),
        ]
        await finish(bot)
        await bot.service.stop()
        return replies

    replies = run(scenario())
    assert replies[0] == "Job #1 is queued, position 1."
    assert replies[1].startswith("Job #2 is queued")
    assert replies[2].startswith("Job #3 is queued")
    assert replies[3] == "abc is not a job number."
    assert replies[4] == "Give a job number, e.g. /cancel 15."
    assert replies[5].startswith("Job #1 (imagine, done) by Alice") and "2 image(s)" in replies[5]
    assert "  ar: 3:2" in replies[6] and "  style: watercolor" in replies[6]
    assert "  composition: portrait" in replies[6]
    assert replies[7] == "Unknown command /nonsense. Type /help for the list."
    assert replies[8].startswith("clear/help looks like a command: did you mean /help?")
    assert replies[9].startswith("history looks like a command: did you mean /history?")
    children = bot.store.children(1)
    assert [(job.kind, job.image_index) for job in children] == [
        (JobKind.UPSCALE, 1),
        (JobKind.VARY_SUBTLE, 0),
    ]
    assert all(job.status is JobStatus.DONE for job in children)
    assert bot.store.history(run(bot.service.user(ALICE)).id, 1).total == 3  # nothing else queued
    # A variation says what it varies, and its variation seeds.
    started = recorder.of(EventKind.STARTED, 3)[0].reply.text("en")
    assert started == "Job #3 started: subtle variation of image 1 of #1: a red fox"
    finished = recorder.of(EventKind.FINISHED, 3)[0].reply.text("en")
    seed = bot.store.job(1, with_images=True).images[0].seed  # type: ignore[union-attr]
    assert re.search(rf"\(seeds {seed} with variation seeds \d+, \d+, \d+, \d+\)$", finished)


def test_plain_lines_that_only_start_with_a_command_word_are_prompts(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()
    for prompt in ("history museum", "help me draw a dragon", "queue"):
        reply = route(bot, ALICE, prompt).text("en")
        assert reply.startswith("Job #") == (prompt != "queue"), (prompt, reply)
    assert route(bot, ALICE, "info 12").text("en").startswith("info 12 looks like a command")


def test_plain_lines_are_ignored_where_they_are_not_prompts(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    router = BotContext(bot.service).router(PLATFORM)
    routed = run(router.route(TextRequest(ALICE, ORIGIN, "hello all", plain_text_is_prompt=False)))
    assert routed.reply is None
    assert bot.store.history(run(bot.service.user(ALICE)).id, 1).total == 0


def test_admin_commands_are_refused_to_users_like_unknown_ones() -> None:
    from bot.core.commands import Access, Command

    registry = CommandRegistry((*COMMANDS, Command("ban", Key.CMD_HELP, access=Access.ADMIN)))
    assert "ban" not in dict(registry.menu("telegram", "en"))
    assert "ban" in dict(registry.menu("telegram", "en", Role.ADMIN))
    assert registry.find("ban", "telegram") is not None


def test_remix_shows_the_line_then_queues_the_edit_as_a_linked_job(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()

    async def scenario() -> tuple[Reply, Reply, Reply]:
        await bot.service.start()
        router = BotContext(bot.service).router(PLATFORM)
        ask = router.route
        await ask(TextRequest(ALICE, ORIGIN, "/imagine a red fox --steps 2 --n 1 --cfg 5"))
        await finish(bot)
        pressed = (await ask(TextRequest(ALICE, ORIGIN, "easel:1:remix"))).reply
        assert pressed is not None and pressed.editable is not None  # the grid's button
        shown = (await ask(TextRequest(ALICE, ORIGIN, "/remix"))).reply
        assert shown is not None and shown.editable is not None
        edited = shown.editable.replace("a red fox", "a blue fox")
        queued = (await ask(TextRequest(ALICE, ORIGIN, edited))).reply
        direct = (await ask(TextRequest(BOB, ORIGIN, "/remix 1 a green fox --steps 2 --n 1"))).reply
        await finish(bot)
        await bot.service.stop()
        assert queued is not None and direct is not None
        return shown, queued, direct

    shown, queued, direct = run(scenario())
    assert shown.text("en").startswith("Remix of job #1: edit this line")
    assert shown.editable == 'a red fox --size 64x64 --steps 2 --cfg 5 --sampler "Euler a" --n 1'
    assert queued.text("en").startswith("Job #2 is queued")
    assert direct.text("en").startswith("Job #3 is queued")
    remixes = bot.store.children(1)
    assert [(job.kind, job.status) for job in remixes] == [(JobKind.REMIX, JobStatus.DONE)] * 2
    second = bot.store.job(2, with_images=True)
    assert second is not None and "a blue fox" in second.request and len(second.images) == 1
    assert '"cfg_scale": 5.0' in second.request
    assert run(bot.service.info(2)).text("en").startswith("Job #2 (remix, done)")


# --------------------------------------------------------------------------- img2img input


def test_an_attached_image_starts_img2img_and_bad_images_change_nothing(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    bot = make_bot()
    reply = route(
        bot, ALICE, "/imagine a fox --n 1 --steps 2 --strength 0.5", attachment=png_bytes()
    )
    assert reply.text("en") == "Job #1 is queued, position 1."
    job = bot.store.job(1)
    assert job is not None
    assert '"denoising_strength": 0.5' in job.request
    stored = re.search(r'"path": "([^"]+)"', job.request)
    assert stored is not None and Path(stored.group(1)).read_bytes() == png_bytes()
    assert "base64" not in job.request and '"data"' not in job.request

    refused = route(bot, ALICE, "/imagine a fox --n 1", attachment=b"not an image")
    assert refused.text("en") == "That is not an image Easel can read."
    alone = route(bot, ALICE, "/imagine a fox --strength 0.5")
    assert alone.text("en").startswith("--strength is for img2img")
    assert bot.store.history(run(bot.service.user(ALICE)).id, 1).total == 1

    async def scenario() -> None:
        await bot.service.start()
        await finish(bot)
        await bot.service.stop()

    run(scenario())
    done = bot.store.job(1, with_images=True)
    assert done is not None and done.status is JobStatus.DONE
    with Image.open(done.images[0].path) as image:
        assert image.size == (64, 64)
        assert "Denoising strength: 0.5" in image.info["parameters"]


# --------------------------------------------------------------------------- the error path


def test_an_engine_fault_is_logged_stored_and_shown_as_a_reference(
    make_bot: Callable[..., Bot],
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe(PLATFORM, recorder)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("tensor exploded in /srv/easel/secret/path.py")

    monkeypatch.setattr(engine, "run_batch", broken)

    async def scenario() -> None:
        await bot.service.start()
        router = BotContext(bot.service).router(PLATFORM)
        await router.route(TextRequest(ALICE, ORIGIN, "/imagine a doomed fox --n 1 --steps 2"))
        await finish(bot)
        await bot.service.stop()

    with caplog.at_level(logging.ERROR, logger="easel.errors"):
        run(scenario())
    failed = recorder.of(EventKind.FAILED, 1)
    assert len(failed) == 1
    shown = failed[0].reply.text("en")
    match = re.fullmatch(
        r"Job #1 failed with an internal error \(reference (E-[0-9A-F]{8})\); "
        r"the operator's log has the details\.",
        shown,
    )
    assert match is not None and "/srv" not in shown
    reference = match.group(1)
    logged = [record for record in caplog.records if reference in record.getMessage()]
    assert len(logged) == 1
    assert "user=test:alice job=1" in logged[0].getMessage()
    assert "Traceback" in logged[0].getMessage()
    assert "tensor exploded" in logged[0].getMessage()
    row = bot.store.job(1)
    assert row is not None and row.status is JobStatus.FAILED
    assert "tensor exploded" in (row.failure_trace or "") and "Traceback" in (
        row.failure_trace or ""
    )
    assert reference in (row.error or "")
    assert (
        run(bot.service.info(1, ALICE))
        .text("en")
        .endswith(f"(reference {reference}); the operator's log has the details.")
    )


def test_an_unexpected_error_in_a_command_is_a_reference_not_a_traceback(
    make_bot: Callable[..., Bot],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = make_bot()

    def broken(*_: Any) -> Reply:
        raise OSError("[Errno 5] Input/output error: '/var/lib/easel/easel.db'")

    monkeypatch.setattr(bot.service, "history", broken)
    with caplog.at_level(logging.ERROR, logger="easel.errors"):
        reply = route(bot, BOB, "/history")
    text = reply.text("ko")
    match = re.fullmatch(r"서버 쪽에서 문제가 생겼습니다\(참조 (E-[0-9A-F]{8})\)\..*", text)
    assert match is not None and "/var" not in text
    assert any(
        match.group(1) in record.getMessage() and "user=test:bob" in record.getMessage()
        for record in caplog.records
    )


# --------------------------------------------------------------------------- events


def test_events_carry_the_bound_status_message_and_the_owner(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()
    seen: list[JobEvent] = []

    async def slow_front_end(event: JobEvent) -> None:
        if event.kind is EventKind.QUEUED:
            # A platform call that takes a while: the batch must not overtake it.
            await asyncio.sleep(0.3)
            await bot.service.bind_status_message(event.job_id, f"message-{event.job_id}")
        seen.append(event)

    bot.service.subscribe(PLATFORM, slow_front_end)

    generate(bot, ALICE, "a fox --n 1 --steps 2")
    kinds = [event.kind for event in seen]
    assert kinds[0] is EventKind.QUEUED and kinds[1] is EventKind.STARTED
    assert kinds[-1] is EventKind.FINISHED and EventKind.PROGRESS in kinds
    for event in seen[1:]:
        assert event.status_message == "message-1", event.kind
    assert all(event.owner == UserRef("test", "alice", "Alice", "en") for event in seen)
    job = bot.store.job(1)
    assert job is not None and job.status_message == "message-1"


def test_progress_is_throttled_per_job_and_per_chat() -> None:
    now = [0.0]
    bus = EventBus(progress_interval=2.0, clock=lambda: now[0], chat_interval=1.0)
    got: list[tuple[int, str]] = []

    async def handler(event: JobEvent) -> None:
        got.append((event.job_id, event.origin.chat))

    bus.subscribe("test", handler)

    def progress(job: int, chat: str) -> JobEvent:
        return JobEvent(
            EventKind.PROGRESS, job, 1, Origin("test", chat), "en", Reply(Message(Key.PROGRESS))
        )

    async def scenario() -> list[bool]:
        results = []
        for at, job, chat in [
            (0.0, 1, "a"),  # sent
            (0.5, 2, "a"),  # the chat had one 0.5 s ago: dropped
            (0.5, 3, "b"),  # another chat: sent
            (1.2, 2, "a"),  # sent
            (1.5, 1, "a"),  # the job had one 1.5 s ago: dropped
            (2.3, 1, "a"),  # sent
        ]:
            now[0] = at
            results.append(await bus.publish(progress(job, chat)))
        return results

    assert run(scenario()) == [True, False, True, True, False, True]
    assert got == [(1, "a"), (3, "b"), (2, "a"), (1, "a")]


def test_a_failed_delivery_is_retried_while_the_bot_runs(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    dispatcher = bot.service.dispatcher
    dispatcher.config = replace(dispatcher.config, delivery_retry_delays=(0.05, 0.1))
    finished: list[JobEvent] = []
    failures = [RuntimeError("Discord answered 503"), RuntimeError("timed out")]

    async def flaky(event: JobEvent) -> None:
        if event.kind is EventKind.FINISHED:
            if failures:
                raise failures.pop(0)
            finished.append(event)

    bot.service.subscribe(PLATFORM, flaky)

    async def scenario() -> None:
        await bot.service.start()
        options = await bot.service.options(ALICE, "a fox --n 1 --steps 2", ORIGIN)
        await bot.service.imagine(ALICE, options, ORIGIN)
        await finish(bot)
        for _ in range(100):
            if finished:
                break
            await asyncio.sleep(0.05)
        await bot.service.stop()

    run(scenario())
    assert len(finished) == 1
    job = bot.store.job(1)
    assert job is not None and job.delivery is Delivery.DELIVERED
    assert job.delivery_attempts == 3


# --------------------------------------------------------------------------- database faults


def test_a_database_that_fails_for_a_while_keeps_the_job_and_finishes_it(
    make_bot: Callable[..., Bot], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.core import dispatcher as dispatcher_module
    from bot.store import StoreError

    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe(PLATFORM, recorder)
    monkeypatch.setattr(dispatcher_module, "STORE_RETRY_DELAYS", (0.05,))
    original = bot.store.mark_done
    failures = [StoreError("the database disk is full (easel.db): free some space")] * 2

    def full_then_fine(*args: Any, **kwargs: Any) -> bool:
        if failures:
            raise failures.pop()
        return original(*args, **kwargs)

    monkeypatch.setattr(bot.store, "mark_done", full_then_fine)

    generate(bot, ALICE, "a patient fox --n 1 --steps 2")
    job = bot.store.job(1, with_images=True)
    assert job is not None and job.status is JobStatus.DONE and len(job.images) == 1
    assert len(recorder.of(EventKind.FINISHED, 1)) == 1
    assert not recorder.of(EventKind.FAILED)


def test_a_database_deleted_under_the_chat_stops_it_with_a_clear_error(
    tmp_path: Path, models_dir: Path, engine: Engine
) -> None:
    from bot.serve import serve_console
    from bot.store import DatabaseReplacedError
    from tests.test_console import ScriptedInput, console_settings

    settings = console_settings(tmp_path, models_dir)
    database = tmp_path / "easel.db"

    def delete_then_ask() -> str:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        return "/imagine a fox after the loss --n 1 --steps 2"

    from bot.runtime import build_bot, open_store

    bot = build_bot(settings, engine, open_store(settings))
    out = io.StringIO()
    lines = ScriptedInput(["/history", delete_then_ask, "/history", "/history"])
    with pytest.raises(DatabaseReplacedError) as stopped:
        run(asyncio.wait_for(serve_console(bot, settings, lines, out, "en"), 60))
    bot.store.close()
    assert "easel.db was deleted or replaced while the bot ran; stopping" in str(stopped.value)


def test_a_job_of_many_and_parts_counts_as_more_work_in_batches_and_waits(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot(max_batch_images=4)
    service = bot.service
    scheduler = service.dispatcher.scheduler

    async def queue(text: str) -> int:
        options = await service.options(ALICE, text, ORIGIN)
        return (await service.imagine(ALICE, options, ORIGIN)).job_id

    plain = run(queue("a fox --n 1 --steps 2"))
    heavy = run(queue("a fox AND a hat AND a moon AND a sea AND a sky --n 1 --steps 2"))
    stored = bot.store.job(heavy)
    assert stored is not None and stored.cost == 3.0  # (5 parts + the negative) / 2
    assert scheduler.images_of(plain) == 1 and scheduler.images_of(heavy) == 3
    refused = route(bot, ALICE, "/imagine " + " AND ".join(["a fox"] * 9))
    assert "AND" in refused.text("en") and "8" in refused.text("en")


def test_settings_are_validated_like_flags_and_a_bad_one_changes_nothing(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()
    for change in ("ar=1e308:1e308", "steps=99999999999", "style=nope", "size=1x1"):
        reply = route(bot, ALICE, f"/settings style=anime {change}")
        assert "cannot be" in reply.text("en") or "Unknown setting" in reply.text("en"), change
    saved = bot.store.settings(run(bot.service.user(ALICE)).id)
    assert (saved.aspect_ratio, saved.steps, saved.style) == (None, None, None)
    assert route(bot, ALICE, "/imagine a fox --n 1").text("en").startswith("Job #1 is queued")


def test_a_preset_whose_lora_is_missing_is_refused_without_server_paths(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    from tests.test_presets_sources import SHIPPED

    bot = make_bot()
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "presets.toml").write_text(SHIPPED.read_text())
    for text in ("/imagine a castle --preset pixel-art", "/settings preset=pixel-art"):
        reply = route(bot, ALICE, text).text("en")
        assert reply.startswith("The preset pixel-art cannot be used here yet"), reply
        assert "pixel-art-v1" in reply and str(tmp_path) not in reply
    assert bot.store.history(run(bot.service.user(ALICE)).id, 1).total == 0


def test_an_unknown_lora_is_refused_in_the_users_language(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    korean = UserRef("test", "min", "Min", "ko")
    reply = route(bot, korean, "/imagine a fox --lora nope --n 1")
    assert reply.text("ko") == (
        "이 서버에는 nope(이)라는 LoRA가 없습니다. 설치된 LoRA가 하나도 없습니다."
    )
    assert reply.text("en") == (
        "There is no LoRA called nope on this server. No LoRAs are installed on this server."
    )
    assert bot.store.history(run(bot.service.user(korean)).id, 1).total == 0


def test_an_attached_image_over_the_pixel_limit_is_refused_from_its_header(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot(max_input_pixels=100 * 100)
    reply = route(bot, ALICE, "/imagine a fox --n 1", attachment=png_bytes((128, 128)))
    assert reply.text("en").startswith("This request cannot run: The image")
    assert "128x128" in reply.text("en")
    assert bot.store.history(run(bot.service.user(ALICE)).id, 1).total == 0


def test_run_guarded_gives_typed_commands_the_same_error_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bot.core.errors import run_guarded
    from bot.core.events import Refusal

    async def refused() -> Reply:
        raise Refusal(Message(Key.JOB_NOT_FOUND, {"job": 7}))

    async def broken() -> Reply:
        raise KeyError("/srv/easel/secret")

    async def fine() -> int:
        return 42

    assert run(run_guarded(fine(), "Test")) == 42
    refusal = run(run_guarded(refused(), "Test", ALICE))
    assert isinstance(refusal, Reply) and refusal.text("en") == "There is no job #7."
    with caplog.at_level(logging.ERROR, logger="easel.errors"):
        error = run(run_guarded(broken(), "/imagine", ALICE, 3))
    assert isinstance(error, Reply) and "/srv" not in error.text("en")
    reference = re.search(r"E-[0-9A-F]{8}", error.text("en"))
    assert reference is not None
    logged = [record.getMessage() for record in caplog.records]
    assert any(reference.group(0) in line and "job=3" in line for line in logged)
