"""The Telegram front end (bot/telegram) with the real python-telegram-bot against the fake Bot
API server, and a real bot on the tiny model: what a Telegram user sees of /imagine, the
status message, the grid and its buttons."""

from __future__ import annotations

from pathlib import Path

from bot.core.events import UserRef
from bot.core.work import work_of
from bot.store import JobKind, JobStatus
from pipeline.engine import Engine
from tests.fakes.telegram import fake_telegram
from tests.telegram_serving import (
    JOB_WAIT_S,
    PROMPT_FLAGS,
    WAIT_S,
    png_bytes,
    result_of,
    run,
    sent_to,
    serving,
)


def test_imagine_in_a_private_chat_status_progress_grid_and_a_press(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, serving(tmp_path, fake, engine) as bot:
            alice = fake.user
            chat = fake.private_chat(alice)
            request = fake.send_message(
                chat, alice, f"/imagine a <b>red</b> [fox]_tail & co {PROMPT_FLAGS}"
            )
            queued = await fake.wait_for_call(sent_to(chat, "sendMessage"), timeout=WAIT_S)
            assert queued.ok, queued.response
            status = fake.message(chat, queued.result["message_id"])
            assert status.reply_to is request
            assert status.text is not None and status.text.startswith("Job #1 is queued")
            assert queued.params["parse_mode"] == "HTML"
            # The first preview turns the status into a photo; later ones edit it in place.
            preview = await fake.wait_for_call(sent_to(chat, "sendPhoto"), timeout=JOB_WAIT_S)
            assert preview.ok, preview.response
            assert preview.file("photo").data.startswith(b"\xff\xd8")  # a JPEG
            grid = await result_of(fake, chat)
            job = bot.store.job(1, with_images=True)
            assert job is not None and job.status is JobStatus.DONE and job.grid_path
            assert grid.reply_to is request
            assert grid.caption is not None and grid.caption.startswith("Job #1 is done")
            assert "<b>red</b> [fox]_tail & co" in grid.caption  # escaped: shown as typed
            assert [[b["callback_data"] for b in row] for row in grid.keyboard] == [
                ["easel:1:U1", "easel:1:U2"],
                ["easel:1:V1", "easel:1:V2"],
                ["easel:1:S1", "easel:1:S2"],
                ["easel:1:reroll", "easel:1:remix"],
            ]
            assert all(len(b["callback_data"].encode()) <= 64 for b in grid.buttons)
            assert [b["text"] for b in grid.keyboard[3]] == ["Reroll", "Remix"]
            # The status message went once the result was there.
            await fake.wait_until(lambda: fake.message(chat, preview.result["message_id"]).deleted)
            assert fake.message(chat, status.message_id).deleted
            # U2: answered at once, the upscale queued as a child, its PNG sent as a document.
            start = len(fake.calls)
            press = fake.press(grid, "easel:1:U2")
            await fake.wait_until(lambda: press.answered, WAIT_S)
            upscale = await result_of(fake, chat, start)
            child = bot.store.job(2, with_images=True)
            assert child is not None and child.kind is JobKind.UPSCALE
            assert (child.parent_id, child.image_index) == (1, 1)
            assert upscale.document is not None and upscale.reply_to is grid
            assert upscale.document.data == Path(child.images[0].path).read_bytes()
            # Under the upscaled image: zoom out and pan; a pan arrow queues a wider grid.
            assert [[b["callback_data"] for b in row] for row in upscale.keyboard] == [
                ["easel:2:Z2", "easel:2:Z15"],
                ["easel:2:PL", "easel:2:PR", "easel:2:PU", "easel:2:PD"],
            ]
            assert [b["text"] for b in upscale.keyboard[1]] == ["⬅️", "➡️", "⬆️", "⬇️"]
            start = len(fake.calls)
            press = fake.press(upscale, "easel:2:PR")
            await fake.wait_until(lambda: press.answered, WAIT_S)
            panned = await result_of(fake, chat, start)
            assert panned.reply_to is upscale and panned.photo
            assert panned.keyboard[0][0]["callback_data"] == "easel:3:U1"
            pan = bot.store.job(3, with_images=True)
            assert pan is not None and pan.kind is JobKind.PAN and pan.parent_id == 2
            assert (pan.images[0].width, pan.images[0].height) == (96, 64)
            sent = fake.calls_to("sendDocument")[-1]
            assert sent.file(sent.params["thumbnail"]).data.startswith(
                b"\xff\xd8"
            )  # the small preview
            # The menus, in English and in Korean.
            assert [c["command"] for c in fake.commands_for()][:2] == ["imagine", "u"]
            korean = fake.commands_for(language_code="ko")
            assert (
                korean[0]["command"] == "imagine"
                and korean[0]["description"] != (fake.commands_for()[0]["description"])
            )
            assert fake.internal_errors == []

    run(scenario)


def test_imagine_in_a_group_and_img2img_from_a_reply_and_from_a_caption(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, serving(tmp_path, fake, engine) as bot:
            group = fake.group_chat()
            bora = fake.add_user(2001, "Bo-ra", language_code="ko")
            fake.send_message(group, bora, f"/imagine@easel_test_bot 고양이 {PROMPT_FLAGS}")
            grid = await result_of(fake, group)
            assert grid.caption is not None and grid.caption.startswith("작업 #1")
            assert [b["text"] for b in grid.keyboard[3]] == ["다시 생성", "리믹스"]
            # A reply with /imagine to someone's photo: img2img from that photo.
            photo = fake.send_photo(group, fake.user, png_bytes(colour=(0, 200, 0)))
            start = len(fake.calls)
            fake.reply_to(
                photo, fake.user, f"/imagine@easel_test_bot moss --strength 0.5 {PROMPT_FLAGS}"
            )
            await result_of(fake, group, start)
            # A photo whose caption is the command.
            start = len(fake.calls)
            fake.send_photo(
                group,
                fake.user,
                png_bytes(colour=(0, 0, 200)),
                caption=f"/imagine sea {PROMPT_FLAGS}",
            )
            await result_of(fake, group, start)
            jobs = [bot.store.job(number) for number in (2, 3)]
            assert all(job is not None and work_of(job).init_image for job in jobs), jobs
            # A command for another bot is not Easel's.
            start = len(fake.calls)
            fake.send_message(group, fake.user, "/imagine@other_bot owl")
            fake.send_message(group, fake.user, "/queue@easel_test_bot")
            answer = await fake.wait_for_call(
                sent_to(group, "sendMessage"), start=start, timeout=WAIT_S
            )
            shown = fake.message(group, answer.result["message_id"]).text or ""
            assert shown.startswith("0 job(s) waiting")
            assert bot.store.job(4) is None

    run(scenario)


def test_style_reaches_the_picker_through_the_whole_front_end_and_is_in_the_menu(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, serving(tmp_path, fake, engine) as bot:
            alice = fake.user
            chat = fake.private_chat(alice)
            fake.send_message(chat, alice, "/style")
            sent = await fake.wait_for_call(sent_to(chat, "sendMessage"), timeout=WAIT_S)
            picker = fake.message(chat, sent.result["message_id"])
            assert picker.text is not None and picker.text.startswith("Your defaults")
            style = picker.button("Style: (not set)")
            query = fake.press(picker, style["callback_data"])
            await fake.wait_until(lambda: query.answered and len(picker.history) > 0, WAIT_S)
            first = picker.keyboard[0][0]  # the first style on the first page
            query = fake.press(picker, first["callback_data"])
            await fake.wait_until(lambda: query.answered, WAIT_S)
            user = await bot.service.user(UserRef("telegram", str(alice.id)))
            await fake.wait_until(lambda: bot.store.settings(user.id).style is not None, WAIT_S)
            saved = bot.store.settings(user.id).style
            assert saved == bot.service.vocabulary().entries("style")[0].id
            await fake.wait_until(lambda: first["text"] in (picker.text or ""), WAIT_S)
            assert "style" in [c["command"] for c in fake.commands_for()]
            assert fake.internal_errors == []

    run(scenario)
