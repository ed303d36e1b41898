"""Easel's admin operations in the core (bot/core/admin.py) and the text router's `/admin`, on the
tiny model: who may use them, and what users then notice (refusals, a paused queue, a chat's
rules, reloaded presets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bot.core.admin import AdminService
from bot.core.commands import CommandRegistry
from bot.core.events import EventKind, JobEvent, Origin, Refusal, Reply, UserRef
from bot.core.messages import Key
from bot.core.router import TextRequest, TextRouter
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from bot.store import JobStatus, Role, Store
from pipeline.engine import Engine

ORIGIN = Origin("test", "chat-1")
OTHER_CHAT = Origin("test", "chat-2")
ROOT = UserRef("test", "root", "Root", "en")
ALICE = UserRef("test", "alice", "Alice", "en")
BOB = UserRef("test", "bob", "Bob", "ko")
JOB_WAIT_S = 120.0
EVENT_WAIT_S = 10.0
PRESETS = """
[presets.ink]
description_en = "Ink"
description_ko = "잉크"
trigger = "ink drawing"

[presets.chalk]
description_en = "Chalk"
description_ko = "분필"
trigger = "chalk drawing"
"""


class Recorder:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self.changed = asyncio.Event()

    async def __call__(self, event: JobEvent) -> None:
        self.events.append(event)
        self.changed.set()

    def kinds(self, job_id: int) -> list[EventKind]:
        return [event.kind for event in self.events if event.job_id == job_id]

    async def wait_for(self, job_id: int, kind: EventKind, timeout: float) -> None:
        async def seen() -> None:
            while kind not in self.kinds(job_id):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(seen(), timeout)


@pytest.fixture
def make_bot(engine: Engine, tmp_path: Path) -> Iterator[Callable[..., Bot]]:
    made: list[Bot] = []

    def make(**overrides: Any) -> Bot:
        values: dict[str, Any] = {
            "outputs_dir": tmp_path / "out",
            "models_dir": tmp_path / "models",
            "database_url": f"sqlite:///{tmp_path}/easel.db",
            "progress_interval": 0,
            **overrides,
        }
        (tmp_path / "models").mkdir(exist_ok=True)
        admins = values.pop("admins", "test:root")
        # The tests' own platform is no real one: EASEL_ADMINS would refuse it at load.
        settings = Settings(_env_file=None, **values).model_copy(update={"admins": admins})
        bot = build_bot(settings, engine, open_store(settings))
        made.append(bot)
        return bot

    yield make
    for bot in made:
        bot.store.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 300))


def text(reply: Reply, locale: str = "en") -> str:
    return reply.text(locale)


def refused(call: Callable[[], object]) -> Refusal:
    with pytest.raises(Refusal) as caught:
        result = call()
        if asyncio.iscoroutine(result):
            run(result)
    return caught.value


async def queue(bot: Bot, user: UserRef, line: str, origin: Origin = ORIGIN) -> int:
    service = bot.service
    ticket = await service.imagine(user, await service.options(user, line, origin), origin)
    return ticket.job_id


def test_easel_admins_grants_admin_at_start(
    make_bot: Callable[..., Bot], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EASEL_ADMINS", "console:alice, discord:1234")
    settings = Settings(_env_file=None)
    assert settings.admin_list() == (("console", "alice"), ("discord", "1234"))
    bot = make_bot(admins=settings.admins)
    assert bot.store.user("console", "alice").role is Role.ADMIN
    assert bot.store.user("discord", "1234").role is Role.ADMIN
    assert bot.store.user("test", "root").role is Role.USER  # not listed this time
    with pytest.raises(ValidationError, match="PLATFORM:USER_ID"):
        Settings(_env_file=None, admins="discord1234")


def test_non_admins_are_refused_in_their_language_and_nothing_changes(
    make_bot: Callable[..., Bot],
) -> None:
    bot = make_bot()
    admin = AdminService(bot.service)
    before = bot.store.user("test", "alice")
    calls: list[Callable[[], object]] = [
        lambda: admin.ban(BOB, ALICE, "spam"),
        lambda: admin.unban(BOB, ALICE),
        lambda: admin.set_role(BOB, BOB, "admin"),
        lambda: admin.pause(BOB),
        lambda: admin.resume(BOB),
        lambda: admin.reload(BOB),
        lambda: admin.rules(BOB, ORIGIN, nsfw_allowed=True, default_preset="none"),
    ]
    for call in calls:
        refusal = refused(call)
        assert refusal.reply.message.key is Key.ADMIN_ONLY
        assert text(refusal.reply, "ko") == "Easel 관리자만 할 수 있습니다."
        assert text(refusal.reply) == "Only Easel's admins can do that."
    assert bot.store.user("test", "alice") == before
    assert bot.store.user("test", "bob").role is Role.USER
    assert not bot.store.queue_paused()
    assert bot.store.chat("test", "chat-1").nsfw_allowed is False

    router = TextRouter(bot.service, CommandRegistry(), "test")

    async def typed(user: UserRef, line: str) -> str:
        routed = await router.route(TextRequest(user, ORIGIN, line))
        assert routed.reply is not None
        return text(routed.reply)

    async def scenario() -> tuple[str, str, str, str]:
        return (
            await typed(BOB, "/admin ban alice"),
            await typed(BOB, "/help"),
            await typed(ROOT, "/help"),
            await typed(ROOT, "/admin"),
        )

    bob_ban, bob_help, root_help, root_usage = run(scenario())
    assert bob_ban == "Only Easel's admins can do that."
    assert not bot.store.user("test", "alice").banned
    assert "/admin" not in bob_help and "/admin ACTION" in root_help
    assert root_usage.startswith("Use /admin ban USER [7d|12h|30m] [REASON]")


def test_ban_then_imagine_is_refused_until_unbanned(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    router = TextRouter(bot.service, CommandRegistry(), "test")

    async def typed(user: UserRef, line: str) -> str:
        routed = await router.route(TextRequest(user, ORIGIN, line))
        assert routed.reply is not None
        return text(routed.reply, normalised(user))

    async def scenario() -> list[str]:
        answers = [
            await typed(ROOT, "/admin ban carol too many rockets"),  # never seen before
            await typed(ROOT, "/admin ban bob spamming"),
            await typed(BOB, "/imagine a castle --steps 2"),
            await typed(ROOT, "/admin ban root"),
            await typed(ROOT, "/admin unban bob"),
            await typed(ROOT, "/admin unban bob"),
            await typed(ROOT, "/admin role alice vip"),
            await typed(ROOT, "/admin role alice wizard"),
        ]
        return answers

    answers = run(scenario())
    assert answers[0] == "User carol banned: too many rockets"
    carol = bot.store.user("test", "carol")
    assert carol.banned and carol.ban_reason == "too many rockets"
    assert answers[1] == "User bob banned: spamming"  # named once Bob has written
    assert answers[2] == "이 봇의 사용이 금지되었습니다: spamming"  # Bob reads Korean
    assert answers[3] == "You cannot ban yourself."
    assert not bot.store.user("test", "root").banned
    assert answers[4] == "User Bob (bob) is no longer banned."
    assert answers[5] == "User Bob (bob) was not banned; nothing changed."
    assert answers[6] == "User alice is now vip (was user)."
    assert answers[7] == "There is no role wizard: use user, vip or admin."
    assert bot.store.user("test", "alice").role is Role.VIP
    assert bot.store.count_queued() == 0  # the banned /imagine queued nothing

    async def after_unban() -> int:
        return await queue(bot, BOB, "a castle --steps 2 --n 1")

    assert run(after_unban()) == 1


def normalised(user: UserRef) -> str:
    return user.locale or "en"


def test_pause_holds_queued_jobs_until_resume(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    admin = AdminService(bot.service)
    recorder = Recorder()
    bot.service.subscribe("test", recorder)

    async def scenario() -> tuple[str, str, str, str, list[EventKind]]:
        await bot.service.start()
        try:
            paused = text(await admin.pause(ROOT))
            job = await queue(bot, ALICE, "a lighthouse --steps 2 --n 1")
            await recorder.wait_for(job, EventKind.QUEUED, EVENT_WAIT_S)
            queued = text(next(e.reply for e in recorder.events if e.kind is EventKind.QUEUED))
            status = text(await bot.service.queue_status(ALICE))
            # Paused: the job is not started while the loop polls the flag many times over.
            with pytest.raises(TimeoutError):
                await recorder.wait_for(job, EventKind.STARTED, timeout=2.0)
            assert bot.store.job(job).status is JobStatus.QUEUED  # type: ignore[union-attr]
            resumed = text(await admin.resume(ROOT))
            await recorder.wait_for(job, EventKind.FINISHED, JOB_WAIT_S)
            return paused, queued, status, resumed, recorder.kinds(job)
        finally:
            await bot.service.stop()

    paused, queued, status, resumed, kinds = run(scenario())
    assert paused.startswith("The queue is paused")
    assert "The queue is paused by an admin" in queued
    assert "The queue is paused by an admin" in status
    assert resumed == "The queue runs again; 1 job(s) waiting."
    assert kinds[0] is EventKind.QUEUED and kinds[-1] is EventKind.FINISHED
    assert not bot.store.queue_paused()


def test_a_pause_written_by_another_process_is_obeyed(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    """The admin command line pauses and resumes a running bot through the database."""
    bot = make_bot()
    recorder = Recorder()
    bot.service.subscribe("test", recorder)

    async def scenario() -> list[EventKind]:
        await bot.service.start()
        with Store(f"sqlite:///{tmp_path}/easel.db") as other:
            try:
                other.set_queue_paused(True, "cli")
                job = await queue(bot, ALICE, "a harbour --steps 2 --n 1")
                with pytest.raises(TimeoutError):
                    await recorder.wait_for(job, EventKind.STARTED, timeout=2.0)
                assert "paused" in text(await bot.service.queue_status(ALICE))
                other.set_queue_paused(False, "cli")  # nothing wakes the bot but its polling
                await recorder.wait_for(job, EventKind.FINISHED, JOB_WAIT_S)
                return recorder.kinds(job)
            finally:
                await bot.service.stop()

    assert run(scenario())[-1] is EventKind.FINISHED


def test_chat_rules_change_what_is_refused_there(make_bot: Callable[..., Bot]) -> None:
    bot = make_bot()
    admin = AdminService(bot.service)
    service = bot.service

    async def nsfw_refused(origin: Origin) -> bool:
        try:
            await queue(bot, ALICE, "a nude statue --steps 2 --n 1", origin)
        except Refusal as refusal:
            assert refusal.reply.message.key is Key.NSFW_WORD
            return True
        return False

    async def scenario() -> list[bool | str]:
        seen: list[bool | str] = [await nsfw_refused(ORIGIN)]
        seen.append(text(await admin.rules(ROOT, ORIGIN, nsfw_allowed=True)))
        seen += [await nsfw_refused(ORIGIN), await nsfw_refused(OTHER_CHAT)]
        seen.append(text(await admin.rules(ROOT, ORIGIN, nsfw_allowed=False), "ko"))
        seen.append(await nsfw_refused(ORIGIN))
        return seen

    seen = run(scenario())
    assert seen[0] is True
    assert seen[1] == "Saved. This chat's rules: NSFW prompts allowed; default preset: none."
    assert seen[2] is False and seen[3] is True  # the other chat keeps its own rules
    assert seen[4] == "저장했습니다. 이 채팅의 규칙: NSFW 프롬프트 거부, 기본 프리셋: 없음."
    assert seen[5] is True
    assert service.store.count_queued() == 1


def test_a_chats_default_preset_applies_after_the_users_own_choices(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "presets.toml").write_text(PRESETS, encoding="utf-8")
    bot = make_bot()
    service = bot.service
    router = TextRouter(service, CommandRegistry(), "test")

    async def typed(line: str) -> str:
        routed = await router.route(TextRequest(ROOT, ORIGIN, line))
        assert routed.reply is not None
        return text(routed.reply)

    unknown = run(typed("/admin rules preset inq"))
    assert "inq" in unknown and "ink" in unknown  # a suggestion
    assert bot.store.chat("test", "chat-1").default_preset is None
    assert run(typed("/admin rules nsfw maybe")) == "maybe is not on or off."
    shown = run(typed("/admin rules preset ink"))
    assert shown == "Saved. This chat's rules: NSFW prompts refused; default preset: ink."
    assert run(typed("/admin rules")) == shown.removeprefix("Saved. ")

    assert run(service.options(ALICE, "a cat", ORIGIN)).preset == "ink"
    assert run(service.options(ALICE, "a cat", OTHER_CHAT)).preset is None
    assert run(service.options(ALICE, "a cat --preset chalk", ORIGIN)).preset == "chalk"
    run(service.update_settings(ALICE, {"preset": "chalk"}))
    assert run(service.options(ALICE, "a cat", ORIGIN)).preset == "chalk"
    for nothing in ("none", "off", "NONE"):  # no preset at all, whatever the defaults say
        assert run(service.options(ALICE, f"a cat --preset {nothing}", ORIGIN)).preset is None
        assert run(service.options(BOB, f"a cat --preset {nothing}", ORIGIN)).preset is None

    async def queued_prompt() -> str:
        job = await queue(bot, BOB, "a cat --steps 2 --n 1")
        record = bot.store.job(job)
        assert record is not None
        return record.request

    assert "ink drawing" in run(queued_prompt())  # the chat's preset words reach the job
    run(typed("/admin rules preset none"))
    assert bot.store.chat("test", "chat-1").default_preset is None


def test_reload_picks_up_a_new_presets_file_and_keeps_the_last_good_one(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    bot = make_bot()
    admin = AdminService(bot.service)
    presets = tmp_path / "models" / "presets.toml"
    assert text(run(admin.reload(ROOT))).endswith("Presets: none.")
    presets.write_text(PRESETS, encoding="utf-8")
    assert text(run(admin.reload(ROOT))).endswith("Presets: ink, chalk.")
    assert run(bot.service.options(ALICE, "a cat --preset ink", ORIGIN)).preset == "ink"

    presets.write_text('[presets.ink]\ndescription_en = "Ink"\n', encoding="utf-8")
    broken = run(admin.reload(ROOT))
    assert text(broken).startswith("Reloaded")
    problem = text(broken).splitlines()[1]
    assert problem.startswith("Reloaded with a problem; the previous presets stay in use:")
    assert "description_ko" in problem
    assert "이전 프리셋" in text(broken, "ko")
    assert bot.service.presets().ids() == ["ink", "chalk"]  # the old ones still work

    async def still_usable() -> int:
        return await queue(bot, ALICE, "a cat --preset chalk --steps 2 --n 1")

    assert run(still_usable()) == 1


def test_reload_reads_the_vocabulary_and_says_what_is_wrong_with_it(
    make_bot: Callable[..., Bot], tmp_path: Path
) -> None:
    bot = make_bot()
    admin = AdminService(bot.service)
    override = tmp_path / "models" / "vocabulary.toml"
    override.write_text(
        '[[style]]\nid = "Claymation"\nen = "Claymation"\nko = "클레이"\nprompt = "claymation"\n',
        encoding="utf-8",
    )
    assert len(text(run(admin.reload(ROOT))).splitlines()) == 1  # no problem
    claymation = run(bot.service.options(ALICE, "a cat --style claymation", ORIGIN))
    assert claymation.style == "claymation"

    override.write_text("[[colour]]\nid = 'x'\n", encoding="utf-8")
    lines = text(run(admin.reload(ROOT))).splitlines()
    assert lines[1].startswith("Reloaded with a problem; the previous vocabulary entries stay")
    assert "colour" in lines[1]
    claymation = run(bot.service.options(ALICE, "a cat --style claymation", ORIGIN))
    assert claymation.style == "claymation"
