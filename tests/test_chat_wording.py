"""What a tester typed into the text router (shared by the console and Telegram) and admin
operations: own-role changes, `PLATFORM:ID` targets, usage lines, counts, the ETA of a paused
queue, and a remix that survives a refused line."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from bot.core.admin import AdminService
from bot.core.commands import CommandRegistry
from bot.core.events import UserRef
from bot.core.messages import Key, Message
from bot.core.router import TextRequest, TextRouter
from bot.runtime import Bot
from bot.store import JobKind, Role
from tests.test_admin import ALICE, BOB, JOB_WAIT_S, ORIGIN, ROOT, make_bot, refused, run

__all__ = ["make_bot"]  # the fixture, shared with test_admin


def typing(bot: Bot, platform: str = "test") -> Callable[..., Any]:
    router = TextRouter(bot.service, CommandRegistry(), platform)

    async def typed(user: UserRef, line: str, locale: str = "en") -> str:
        routed = await router.route(TextRequest(user, ORIGIN, line))
        assert routed.reply is not None
        return routed.reply.text(locale)

    return typed


@contextlib.asynccontextmanager
async def started(bot: Bot) -> AsyncIterator[None]:
    await bot.service.start()
    try:
        yield
    finally:
        await bot.service.stop()


async def idle(bot: Bot) -> None:
    await asyncio.wait_for(bot.service.wait_until_idle("test"), JOB_WAIT_S)


def test_an_admin_cannot_change_their_own_role(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    typed = typing(bot)
    admin = AdminService(bot.service)
    english = run(typed(ROOT, "/admin role root user"))
    korean = run(typed(ROOT, "/admin role root vip", "ko"))
    assert english == "You cannot change your own role."
    assert korean == "자기 자신의 역할은 바꿀 수 없습니다."
    assert refused(lambda: admin.set_role(ROOT, ROOT, "user")).reply.message.key is (
        Key.ADMIN_NOT_YOUR_ROLE
    )
    assert bot.store.user("test", "root").role is Role.ADMIN
    assert run(typed(ROOT, "/admin pause")).startswith("The queue is paused")  # still admin


def test_admin_targets_name_a_known_platform_or_the_askers_own(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot(admins="console:local")
    local = UserRef("console", "local", "local", "en")
    typed = typing(bot, "console")
    answers = [
        run(typed(local, "/admin ban discord:123 spam")),
        run(typed(local, "/admin role Telegram:456 vip")),
        run(typed(local, "/admin ban console:local")),
        run(typed(local, "/admin ban bob:1")),  # not a platform: a console user "bob:1"
        run(typed(local, "/admin unban discord:")),
    ]
    assert answers[0] == "User 123 banned: spam"
    assert bot.store.user("discord", "123").banned
    assert not bot.store.user("console", "discord:123").banned
    assert answers[1] == "User 456 is now vip (was user)."
    assert bot.store.user("telegram", "456").role is Role.VIP
    assert answers[2] == "You cannot ban yourself."
    assert bot.store.user("console", "bob:1").banned
    assert answers[4] == "Name the user by their discord id: /admin unban USER."


def test_usage_lines_instead_of_confusing_answers(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    typed = typing(bot)
    run(bot.service.update_settings(ALICE, {"style": "watercolor"}))
    for line in ("/u 0", "/u", "/v x", "/s 5 1"):
        command = line.split()[0][1:]
        answer = run(typed(ALICE, line))
        assert answer == (
            f"Use /{command} N [JOB], where N is the image's number in the grid (1-4)."
        ), line
    assert run(typed(ALICE, "/u 0", "ko")).startswith("/u N [작업] 형식으로 쓰세요.")
    assert run(typed(ALICE, "/settings style")) == (
        "Use /settings name=value, for example style=anime; name=none clears one."
    )
    assert bot.store.settings(run(bot.service.user(ALICE)).id).style == "watercolor"
    assert run(typed(ALICE, "/settings ar=1:9")).startswith("ar cannot be 1:9")
    assert run(typed(ROOT, "/admin role bob")) == "Use /admin role USER user|vip|admin."
    assert run(typed(ROOT, "/admin role")) == "Use /admin role USER user|vip|admin."
    assert bot.store.user("test", "bob").role is Role.USER


def test_queue_full_counts_read_right() -> None:
    from bot.core.messages import job_count

    def said(key: Key, count: int, locale: str) -> str:
        return Message(key, {"jobs": job_count(count)}).render(locale)

    assert said(Key.QUEUE_FULL_GLOBAL, 1, "en").startswith("The queue is full (1 job).")
    assert said(Key.QUEUE_FULL_GLOBAL, 3, "en").startswith("The queue is full (3 jobs).")
    assert said(Key.QUEUE_FULL_USER, 1, "en").startswith("You already have 1 job waiting.")
    assert said(Key.QUEUE_FULL_USER, 2, "ko").startswith("이미 대기 중인 작업이 2개 있습니다.")
    assert said(Key.QUEUE_FULL_GLOBAL, 1, "ko").startswith("대기열이 가득 찼습니다(1개).")


def test_a_full_queue_of_one_says_one_job(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot(max_queue=1)
    typed = typing(bot)

    async def scenario() -> tuple[str, str]:
        await AdminService(bot.service).pause(ROOT)  # nothing leaves the queue
        await typed(ALICE, "/imagine a fox --steps 2 --n 1")
        return await typed(BOB, "/imagine a cat --steps 2 --n 1"), await typed(
            BOB, "/imagine a cat --steps 2 --n 1", "ko"
        )

    english, korean = run(scenario())
    assert english == "The queue is full (1 job). Try again in a few minutes."
    assert korean == "대기열이 가득 찼습니다(1개). 몇 분 뒤 다시 시도하세요."


def test_no_eta_while_the_queue_is_paused(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    typed = typing(bot)

    async def scenario() -> tuple[str, str]:
        async with started(bot):
            return await steps()

    async def steps() -> tuple[str, str]:
        first = await typed(ALICE, "/imagine a fox --steps 2 --n 1")
        await idle(bot)  # a finished job: the ETA has a rate now
        running = await typed(ALICE, "/imagine a fox --steps 2 --n 1")
        await idle(bot)
        await AdminService(bot.service).pause(ROOT)
        paused = await typed(ALICE, "/imagine a fox --steps 2 --n 1")
        assert first
        return running, paused

    running, paused = run(scenario())
    assert "(about" in running  # the rate is known: not paused, there is an ETA
    assert "(about" not in paused
    assert "The queue is paused by an admin" in paused


def test_a_refused_remix_line_keeps_the_remix_pending(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    typed = typing(bot)

    async def scenario() -> tuple[str, str, str, int]:
        async with started(bot):
            return await steps()

    async def steps() -> tuple[str, str, str, int]:
        await typed(ALICE, "/imagine a fox --steps 2 --n 1")
        await idle(bot)
        shown = await typed(ALICE, "/remix 1")
        bad = await typed(ALICE, "a fox --steps nope")
        good = await typed(ALICE, "a fox in snow --steps 2 --n 1")
        await idle(bot)
        return shown, bad, good, 2

    shown, bad, good, job = run(scenario())
    assert shown.startswith("Remix of job #1: edit this line")
    assert "queued" not in bad
    assert good.startswith(f"Job #{job} is queued")
    record = bot.store.job(job)
    assert record is not None
    assert record.kind is JobKind.REMIX and record.parent_id == 1


def test_another_command_ends_a_pending_remix(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    typed = typing(bot)

    async def scenario() -> None:
        async with started(bot):
            await steps()

    async def steps() -> None:
        await typed(ALICE, "/imagine a fox --steps 2 --n 1")
        await idle(bot)
        await typed(ALICE, "/remix 1")
        await typed(ALICE, "a fox --steps nope")
        await typed(ALICE, "/queue")
        await typed(ALICE, "a plain line --steps 2 --n 1")
        await idle(bot)

    run(scenario())
    record = bot.store.job(2)
    assert record is not None and record.kind is JobKind.IMAGINE


def test_an_unknown_lora_with_none_installed_says_so(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    typed = typing(bot)
    answer = run(typed(ALICE, "/imagine a fox --lora nope --n 1"))
    assert answer == (
        "There is no LoRA called nope on this server. No LoRAs are installed on this server."
    )
