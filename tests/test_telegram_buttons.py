"""Telegram's buttons and questions: remix by a ForceReply, presses after a restart, unknown
and foreign buttons, /imagine without a prompt, flood control (429) honoured."""

from __future__ import annotations

from pathlib import Path

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup

from bot.core.work import work_of
from bot.store import JobKind
from pipeline.engine import Engine
from tests.fakes.telegram import fake_telegram
from tests.telegram_serving import (
    PROMPT_FLAGS,
    WAIT_S,
    result_of,
    run,
    sent_to,
    serving,
)


def test_remix_asks_with_a_force_reply_and_the_answer_queues_the_edited_job(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, serving(tmp_path, fake, engine) as bot:
            chat = fake.private_chat(fake.user)
            fake.send_message(chat, fake.user, f"/imagine a lighthouse_at <night> {PROMPT_FLAGS}")
            grid = await result_of(fake, chat)
            start = len(fake.calls)
            press = fake.press(grid, "easel:1:remix")
            asked = await fake.wait_for_call(sent_to(chat, "sendMessage"), start=start)
            assert press.answered
            assert asked.params["reply_markup"]["force_reply"] is True
            question = fake.message(chat, asked.result["message_id"])
            assert question.text is not None and question.text.startswith("Remix of job #1")
            code = [e for e in question.entities if e["type"] == "pre"]
            line = question.text[code[0]["offset"] : code[0]["offset"] + code[0]["length"]]
            assert line.startswith("a lighthouse_at <night>")
            start = len(fake.calls)
            fake.reply_to(question, fake.user, line.replace("lighthouse_at", "windmill_at"))
            await result_of(fake, chat, start)
            remix = bot.store.job(2)
            assert remix is not None and remix.kind is JobKind.REMIX and remix.parent_id == 1
            assert work_of(remix).prompt.startswith("a windmill_at <night>")

    run(scenario)


def test_buttons_work_after_a_restart_and_unknown_ones_are_answered(
    tmp_path: Path, engine: Engine
) -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake:
            chat = fake.private_chat(fake.user)
            async with serving(tmp_path, fake, engine):
                # Private results: shown to no one else, even where the grid is.
                fake.send_message(chat, fake.user, "/settings private=on")
                fake.send_message(chat, fake.user, f"/imagine a pier {PROMPT_FLAGS}")
                grid = await result_of(fake, chat)
                start = len(fake.calls)
                fake.press(grid, "easel:1:remix")
                asked = await fake.wait_for_call(sent_to(chat, "sendMessage"), start=start)
                question = fake.message(chat, asked.result["message_id"])
            async with serving(tmp_path, fake, engine) as bot:
                # A question asked before the restart: its answer is still the remix.
                start = len(fake.calls)
                fake.reply_to(question, fake.user, f"a pier at dusk {PROMPT_FLAGS}")
                await result_of(fake, chat, start)
                remix = bot.store.job(2)
                assert remix is not None and remix.kind is JobKind.REMIX and remix.parent_id == 1
                start = len(fake.calls)
                press = fake.press(grid, "easel:1:V1")
                await result_of(fake, chat, start)
                assert press.answered
                child = bot.store.job(3)
                assert child is not None and child.kind is JobKind.VARY_STRONG
                # Someone else's grid in their own chat: answered, and nothing queued.
                mallory = fake.add_user(3003, "Mallory")
                foreign = fake.press(grid, "easel:1:U1", user=mallory)
                await fake.wait_until(lambda: foreign.answered, WAIT_S)
                refusal = await fake.wait_for_call(
                    lambda c: c.method == "sendMessage" and "There is no job #1" in str(c.params),
                    start=start,
                )
                assert refusal.ok
                # A button from something else (an older bot): answered with a word why.
                async with Bot(fake.token, base_url=fake.base_url) as other:
                    markup = InlineKeyboardMarkup(
                        [[InlineKeyboardButton("x", callback_data="old:7")]]
                    )
                    sent = await other.send_message(chat.id, "old", reply_markup=markup)
                unknown = fake.press(fake.message(chat, sent.message_id), "old:7")
                await fake.wait_until(lambda: unknown.answered, WAIT_S)
                assert unknown.answer is not None
                assert "not one Easel knows" in unknown.answer["text"]
                assert bot.store.job(4) is None

    run(scenario)


def test_imagine_without_a_prompt_asks_for_one(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, serving(tmp_path, fake, engine) as bot:
            group = fake.group_chat()
            request = fake.send_message(group, fake.user, "/imagine@easel_test_bot")
            asked = await fake.wait_for_call(sent_to(group, "sendMessage"))
            assert asked.params["reply_markup"] == {"force_reply": True, "selective": True}
            question = fake.message(group, asked.result["message_id"])
            assert question.reply_to is request
            fake.reply_to(question, fake.user, f"a kite {PROMPT_FLAGS}")
            await result_of(fake, group)
            job = bot.store.job(1)
            assert job is not None and work_of(job).prompt.startswith("a kite")

    run(scenario)


def test_a_429_is_waited_out_and_the_result_still_arrives(tmp_path: Path, engine: Engine) -> None:
    async def scenario() -> None:
        async with fake_telegram() as fake, serving(tmp_path, fake, engine):
            chat = fake.private_chat(fake.user)
            fake.flood(
                lambda c: c.method == "sendPhoto" and "reply_markup" in c.params, retry_after=1
            )
            fake.send_message(chat, fake.user, f"/imagine a dune {PROMPT_FLAGS}")
            grid = await result_of(fake, chat)
            refused = [c for c in fake.calls_to("sendPhoto") if c.status == 429]
            assert len(refused) == 1
            sent = fake.calls_to("sendPhoto")[-1]
            assert sent.ok and sent.result["message_id"] == grid.message_id
            assert sent.at - refused[0].at >= 1.0  # it waited as long as Telegram said

    run(scenario)
