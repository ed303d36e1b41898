"""Discord's message context menus (PNG info, Upscale, Vary), the Remix modal and the /settings
select menus, with the real discord.py client against the fake Discord and a real bot on the
tiny model: what a Discord user sees, and what the bot queues and saves."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image, PngImagePlugin

from bot.core.events import Refusal, UserRef
from bot.core.messages import Key
from bot.core.service import SUBTLE_IMAGE_DENOISING
from bot.core.setting_choices import setting_menu
from bot.discord import menus
from bot.discord.remix import remix_modal
from bot.store import JobKind, JobStatus
from pipeline.engine import Engine
from pipeline.prompts.vocabulary import Vocabulary
from pipeline.request import GenerationRequest, UpscaleRequest
from tests.fakes.discord import (
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE,
    MESSAGE_FLAG_EPHEMERAL,
    UPDATE_MESSAGE,
    FakeDiscord,
    FormErrors,
    RecordedCall,
    SentInteraction,
    check_modal,
    fake_discord,
)
from tests.test_discord import JOB_WAIT_S, WAIT_S, imagine_grid, is_result, run, serving
from tests.test_discord_commands import private_answer, synced_commands
from tests.test_discord_imagine import refused_after_defer

PARAMETERS = (
    "a lighthouse at dusk\n"
    "Negative prompt: fog\n"
    "Steps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 64x64, Model: sd15"
)


def png(parameters: str | None = None, colour: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    """A 64x64 PNG, with A1111's `parameters` text chunk when given."""
    image = Image.new("RGB", (64, 64), colour)
    for x in range(0, 64, 8):  # some structure for img2img to keep
        image.paste((20, 20, 120), (x, 0, x + 4, 64))
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def owner(fake: FakeDiscord) -> UserRef:
    return UserRef("discord", str(fake.settings.owner.id))


def post_image(fake: FakeDiscord, data: bytes, *, embedded: bool = False) -> int:
    """A message a person posted with the image attached (or as an embed's image)."""
    attachment = fake.add_attachment("picture.png", data)
    channel = fake.guild.channel.id
    if embedded:
        embed = {"type": "image", "image": {"url": attachment["url"]}}
        message = fake.post_user_message(channel, fake.settings.owner, embeds=[embed])
    else:
        message = fake.post_user_message(channel, fake.settings.owner, attachments=[attachment])
    return int(message["id"])


def input_bytes(work: GenerationRequest | UpscaleRequest) -> bytes:
    image = work.init_image if isinstance(work, GenerationRequest) else work.image
    assert image is not None and image.path is not None
    return Path(image.path).read_bytes()


async def queued_job_message(sent: SentInteraction) -> RecordedCall:
    """A context menu's public "thinking" answer, then the edit that says the job is queued."""
    ack = await sent.next_call(timeout=WAIT_S)
    assert ack.json["type"] == DEFERRED_CHANNEL_MESSAGE and ack.status < 300
    assert not (ack.json.get("data") or {}).get("flags", 0) & MESSAGE_FLAG_EPHEMERAL
    queued = await sent.next_call(lambda c: c.method == "PATCH", timeout=WAIT_S)
    assert queued.status == 200, queued.response
    return queued


def select(call: RecordedCall, custom_id: str) -> dict[str, Any]:
    for row in call.json["components"]:
        for component in row["components"]:
            if component["custom_id"] == custom_id:
                return dict(component)
    raise LookupError(custom_id)


def test_the_context_menus_are_synced_as_message_commands(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine):
            menus = [c for c in synced_commands(fake) if c.get("type") == 3]
            assert sorted(c["name"] for c in menus) == ["PNG info", "Upscale", "Vary"]
            assert all(not c.get("options") for c in menus)

    run(scenario)


def test_png_info_answers_an_a1111_pngs_parameters_privately_and_refuses_a_message_without_image(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            message = post_image(fake, png(PARAMETERS))
            answer = await private_answer(await fake.message_command("PNG info", message))
            assert answer.startswith("a lighthouse at dusk\nNegative prompt: fog\nSteps: 2")
            assert "Seed: 1234" in answer and "Size: 64x64" in answer

            plain = fake.post_user_message(fake.guild.channel.id, fake.settings.owner, "hello")
            for locale, start in (("en-US", "That message has no image"), ("ko", "이 메시지")):
                sent = await fake.message_command("Vary", int(plain["id"]), locale=locale)
                refusal = await sent.next_call(timeout=WAIT_S)
                assert refusal.json["type"] == CHANNEL_MESSAGE and refusal.status < 300
                assert refusal.json["data"]["flags"] & MESSAGE_FLAG_EPHEMERAL
                assert refusal.json["data"]["content"].startswith(start)
            assert bot.store.job(1) is None
            assert not fake.refused_calls

    run(scenario)


def test_an_embedded_image_is_read_no_further_than_the_limit(
    tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(menus, "MAX_IMAGE_BYTES", 1024)

    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            big = png(PARAMETERS) + bytes(4096)  # an embed gives no size: found by reading
            message = post_image(fake, big, embedded=True)
            answer = await private_answer(await fake.message_command("PNG info", message))
            assert answer.startswith("The image is")
            sent = await fake.message_command("Vary", post_image(fake, big, embedded=True))
            assert (await refused_after_defer(sent)).startswith("The image is")
            assert bot.store.job(1) is None
            assert not fake.refused_calls

    run(scenario)


def test_upscale_and_vary_queue_jobs_on_the_image_and_post_their_results(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            a1111 = png(PARAMETERS)
            sent = await fake.message_command("Upscale", post_image(fake, a1111))
            queued = await queued_job_message(sent)
            assert queued.json["content"].startswith("Job #1 is queued")
            job = bot.store.job(1)
            assert job is not None and job.kind is JobKind.UPSCALE and job.parent_id is None
            assert input_bytes(UpscaleRequest.from_json(job.request)) == a1111
            result = await sent.next_call(is_result, timeout=JOB_WAIT_S)
            assert result.status == 200, result.response
            assert result.json["content"].startswith("Image upscaled to 128x128 (job #1)")
            with Image.open(io.BytesIO(result.files[0].data)) as upscaled:
                assert upscaled.size == (128, 128)
                # the detail pass ran with the parameters the image carried
                assert upscaled.info["parameters"].startswith("a lighthouse at dusk")

            # No parameters: img2img from the pixels with an empty prompt and the saved steps.
            await bot.service.update_settings(owner(fake), {"steps": "2"})
            plain = png(colour=(30, 160, 90))
            sent = await fake.message_command("Vary", post_image(fake, plain, embedded=True))
            queued = await queued_job_message(sent)
            assert queued.json["content"].startswith("Job #2 is queued")
            job = bot.store.job(2)
            assert job is not None and job.kind is JobKind.VARY_SUBTLE
            work = GenerationRequest.from_json(job.request)
            assert input_bytes(work) == plain
            assert (work.prompt, work.width, work.height, work.image_count) == ("", 64, 64, 4)
            result = await sent.next_call(is_result, timeout=JOB_WAIT_S)
            assert result.status == 200, result.response
            assert [b["custom_id"] for b in result.json["components"][0]["components"]] == [
                "easel:2:U1",
                "easel:2:U2",
                "easel:2:U3",
                "easel:2:U4",
            ]
            done = bot.store.job(2, with_images=True)
            assert done is not None and done.status is JobStatus.DONE and len(done.images) == 4

            # With parameters: their prompt, negative prompt, CFG and size.
            sent = await fake.message_command("Vary", post_image(fake, a1111))
            await queued_job_message(sent)
            job = bot.store.job(3)
            assert job is not None and job.kind is JobKind.VARY_SUBTLE
            work = GenerationRequest.from_json(job.request)
            assert (work.prompt, work.negative_prompt) == ("a lighthouse at dusk", "fog")
            assert (work.width, work.height, work.cfg_scale) == (64, 64, 7.0)
            assert work.steps == 3  # 2, raised so that img2img at 0.4 runs one step
            assert work.denoising_strength == SUBTLE_IMAGE_DENOISING
            assert 1234 not in work.seeds  # new seeds: variations, not the same picture
            result = await sent.next_call(is_result, timeout=JOB_WAIT_S)
            assert result.status == 200, result.response

    run(scenario)


async def open_remix(fake: FakeDiscord, grid_message: int, job: int) -> dict[str, Any]:
    pressed = await fake.press(grid_message, f"easel:{job}:remix")
    ack = await pressed.next_call(timeout=WAIT_S)
    assert ack.status < 300, ack.response
    return fake.modal_shown(pressed)


def text_input(modal: dict[str, Any]) -> dict[str, Any]:
    (row,) = modal["components"]
    return dict(row["component"] if "component" in row else row["components"][0])


def test_remix_opens_a_modal_with_the_line_and_queues_the_edited_line(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            grid_message, _ = await imagine_grid(fake, bot, "a red fox --steps 2")
            modal = await open_remix(fake, grid_message, 1)
            assert (modal["custom_id"], modal["title"]) == ("easel:remix:1", "Remix job #1")
            field = text_input(modal)
            assert field["style"] == 2 and field["max_length"] == 4000
            assert field["value"].startswith("a red fox --size 64x64 --steps 2 ")

            # A bad edit is told privately and queues nothing.
            line = {"line": "a red fox --steps lots"}
            sent = await fake.submit_modal("easel:remix:1", line, shown=modal)
            ack = await sent.next_call(timeout=WAIT_S)
            assert ack.json["type"] == DEFERRED_UPDATE and ack.status < 300
            told = await sent.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
            assert told.json["flags"] & MESSAGE_FLAG_EPHEMERAL
            assert "steps" in told.json["content"]
            assert bot.store.job(2) is None

            modal = await open_remix(fake, grid_message, 1)
            line = {"line": "a blue heron --steps 2 --n 1"}
            sent = await fake.submit_modal("easel:remix:1", line, shown=modal)
            ack = await sent.next_call(timeout=WAIT_S)
            assert ack.json["type"] == DEFERRED_UPDATE and ack.status < 300
            queued = await sent.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
            assert queued.json["content"].startswith("Job #2 is queued")
            assert not queued.json.get("flags", 0) & MESSAGE_FLAG_EPHEMERAL
            job = bot.store.job(2)
            assert job is not None and (job.kind, job.parent_id) == (JobKind.REMIX, 1)
            work = GenerationRequest.from_json(job.request)
            assert (work.prompt, work.image_count) == ("a blue heron", 1)
            result = await sent.next_call(is_result, timeout=JOB_WAIT_S)
            assert result.status == 200, result.response
            assert result.params["message_id"] == queued.response["id"]
            assert not fake.refused_calls

    run(scenario)


def test_the_fake_refuses_what_discord_refuses_in_a_modal(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            grid_message, _ = await imagine_grid(fake, bot, "a red fox --steps 2")
            modal = await open_remix(fake, grid_message, 1)
            too_long = {"line": "x" * 4001}
            for wrong in (too_long, {"prompt": "a cat"}, {"line": ""}):
                try:
                    await fake.submit_modal("easel:remix:1", wrong, shown=modal)
                except ValueError:
                    continue
                raise AssertionError(f"the fake let {list(wrong)} through")

    run(scenario)


def test_settings_menus_save_picks_and_turn_pages_in_the_users_language(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake, serving(tmp_path, fake, engine) as bot:
            sent = await fake.slash("settings", locale="ko")
            await sent.next_call(timeout=WAIT_S)
            shown = await sent.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
            assert shown.status == 200, shown.response
            assert shown.json["flags"] & MESSAGE_FLAG_EPHEMERAL
            assert shown.json["content"].startswith("새 작업의 기본값:")
            ids = [row["components"][0]["custom_id"] for row in shown.json["components"]]
            assert ids == [
                "easel:set:style:0",
                "easel:set:shot:0",
                "easel:set:lighting:0",
                "easel:set:quality:0",
                "easel:set:aspect_ratio:0",
            ]
            style = select(shown, "easel:set:style:0")
            assert style["placeholder"] == "화풍: (설정 안 됨)"
            labels = [option["label"] for option in style["options"]]
            assert labels[:2] == ["(설정 안 됨)", "고딕"] and labels[-1].startswith("더 보기")
            message = int(shown.response["id"])

            turned = await fake.press(message, "easel:set:style:0", values=["page:1"], locale="ko")
            update = await turned.next_call(timeout=WAIT_S)
            assert update.json["type"] == UPDATE_MESSAGE and update.status < 300
            page = select_in(update, "easel:set:style:1")
            values = [option["value"] for option in page["options"]]
            assert values[1] == "page:0" and values[-1] == "page:2"
            assert bot.store.settings((await bot.service.user(owner(fake))).id).style is None

            picked = values[5]
            chosen = await fake.press(message, "easel:set:style:1", values=[picked])
            update = await chosen.next_call(timeout=WAIT_S)
            assert update.json["type"] == UPDATE_MESSAGE and update.status < 300
            assert update.json["data"]["content"].startswith("Saved.")
            assert bot.store.settings((await bot.service.user(owner(fake))).id).style == picked
            page = select_in(update, "easel:set:style:1")
            assert [o["value"] for o in page["options"] if o.get("default")] == [picked]

            aspect = await fake.press(message, "easel:set:aspect_ratio:0", values=["16:9"])
            await aspect.next_call(timeout=WAIT_S)
            saved = bot.store.settings((await bot.service.user(owner(fake))).id)
            assert (saved.style, saved.aspect_ratio) == (picked, "16:9")
            assert not fake.refused_calls

    run(scenario)


def select_in(update: RecordedCall, custom_id: str) -> dict[str, Any]:
    for row in update.json["data"]["components"]:
        for component in row["components"]:
            if component["custom_id"] == custom_id:
                return dict(component)
    raise LookupError(custom_id)


def test_an_old_remix_button_and_settings_menu_work_after_a_restart(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_discord() as fake:
            async with serving(tmp_path, fake, engine) as bot:
                grid_message, _ = await imagine_grid(fake, bot, "a lighthouse --steps 2")
                sent = await fake.slash("settings")
                await sent.next_call(timeout=WAIT_S)  # the private "thinking" answer
                shown = await sent.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
                settings_message = int(shown.response["id"])
                opened = await open_remix(fake, grid_message, 1)  # submitted after the restart
            async with serving(tmp_path, fake, engine) as bot:  # a new client, the same database
                chosen = await fake.press(
                    settings_message, "easel:set:lighting:0", values=["soft-lighting"]
                )
                update = await chosen.next_call(timeout=WAIT_S)
                assert update.json["type"] == UPDATE_MESSAGE and update.status < 300
                saved = bot.store.settings((await bot.service.user(owner(fake))).id)
                assert saved.lighting == "soft-lighting"

                modal = await open_remix(fake, grid_message, 1)
                assert modal == opened
                line = {"line": "a lighthouse at night --steps 2 --n 1"}
                sent = await fake.submit_modal("easel:remix:1", line, shown=opened)
                ack = await sent.next_call(timeout=WAIT_S)
                assert ack.json["type"] == DEFERRED_UPDATE and ack.status < 300
                queued = await sent.next_call(lambda c: c.method == "POST", timeout=WAIT_S)
                assert queued.json["content"].startswith("Job #2 is queued")
                result = await sent.next_call(is_result, timeout=JOB_WAIT_S)
                assert result.status == 200, result.response
                job = bot.store.job(2)
                assert job is not None and job.kind is JobKind.REMIX
                # the saved lighting is a default of the remixed job too
                assert "soft" in GenerationRequest.from_json(job.request).prompt

    run(scenario)


def test_a_long_list_is_cut_into_pages_that_open_at_the_saved_value() -> None:
    vocabulary = Vocabulary.load()
    styles = vocabulary.ids("style")
    assert len(styles) > 25  # why the menus have pages
    first = setting_menu("style", vocabulary, None, 22)
    assert (first.page, first.pages) == (0, -(-len(styles) // 22))
    assert [c.value for c in first.choices] == styles[:22]
    last = setting_menu("style", vocabulary, styles[-1], 22)
    assert last.page == last.pages - 1 and last.choices[-1].value == styles[-1]
    assert last.current_label is not None and last.current_label.ko
    aspects = setting_menu("aspect_ratio", vocabulary, "16:9", 22)
    assert aspects.pages == 1 and "16:9" in [c.value for c in aspects.choices]


def modal_errors(modal: dict[str, Any]) -> dict[str, Any]:
    errors = FormErrors()
    check_modal(modal, errors)
    return errors.tree


def test_the_remix_modal_is_within_discords_limits_and_the_fake_refuses_what_is_not() -> None:
    modal = remix_modal(123456789012, "a castle " * 400, "ko").to_dict()
    assert modal_errors(modal) == {}
    assert modal["title"] == "작업 #123456789012 리믹스"
    field = modal["components"][0]["component"]
    assert len(field["value"]) == 3600 and field["max_length"] == 4000

    titled = {**modal, "title": "x" * 46}
    assert modal_errors(titled)["data"]["title"]["_errors"][0]["code"] == "BASE_TYPE_BAD_LENGTH"
    rows = {**modal, "components": modal["components"] * 6}
    assert "components" in modal_errors(rows)["data"]
    short = {**field, "max_length": 10, "value": "a castle at night"}
    over = {**modal, "components": [{**modal["components"][0], "component": short}]}
    errors = modal_errors(over)["data"]["components"]["0"]["components"]["0"]["value"]
    assert errors["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"


def test_an_endless_embedded_image_is_cut_off_at_the_limit() -> None:
    """A URL that streams for ever, with no length given, is refused once the limit is read."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(100_000):  # about 100 MB, far past the limit
            await response.write(bytes(1024))
        return response

    async def scenario() -> Key:
        app = web.Application()
        app.router.add_get("/picture.png", endless)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            with pytest.raises(Refusal) as refused:
                await asyncio.wait_for(
                    menus.read_image(menus.ImageSource(url=f"http://127.0.0.1:{port}/picture.png")),
                    WAIT_S,
                )
            return refused.value.reply.message.key
        finally:
            await runner.cleanup()

    key = asyncio.run(scenario())
    assert key is Key.MENU_IMAGE_TOO_LARGE
