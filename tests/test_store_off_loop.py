"""No store call runs on the event loop while the bot serves: a slow database must not stall
the chats (Discord closes a gateway connection whose heartbeats stop).

Every public method of `Store` is wrapped to note the thread it runs on and whether an event
loop runs there; then a whole life goes through the console front end (a job, a button press,
history, info, settings, the queue, a ban, a pause, a cancel, a resume written by another
process and seen by the control poll), and a restart through the job and admin services
(recovery of a job a crash left running, status messages bound by a front end, setting menus,
the remix line, the last grid). Not one store call may have run on the loop's thread.

Moving the calls off the loop puts awaits where there were none; the second test holds one
(a batch's rows being marked running) open and cancels the job meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.core.admin import AdminService
from bot.core.events import EventKind, JobEvent, Origin, UserRef
from bot.core.service import JobService
from bot.runtime import build_bot, open_store
from bot.serve import serve_console
from bot.settings import Settings
from bot.store import JobStatus, Store
from bot.store.threads import THREAD_NAME
from pipeline.engine import Engine
from tests.test_console import ScriptedInput, console_settings

LIMIT_S = 120.0  # a life that outlives this has hung
LOCAL = UserRef("console", "local", "local", "en")
ORIGIN = Origin("console", "local")
# What the bot must have done on the store's threads, at least once each: the proof that the
# life ran through the store at all.
EXPECTED = {
    "recover",
    "queued_jobs",
    "recent_durations",
    "control_state",
    "queue_paused",
    "set_queue_paused",
    "user",
    "user_by_id",
    "settings",
    "update_settings",
    "chat",
    "add_job",
    "job",
    "mark_running",
    "mark_done",
    "mark_cancelled",
    "history",
    "last_grid",
    "writing",  # the ban: one transaction with the queued jobs it cancels
    "unban",
    "update_chat",
    "set_role",
    "set_status_message",
    "undelivered",
    "count_delivery_attempt",
    "mark_delivered",
}


@dataclass(frozen=True)
class Call:
    name: str
    thread: int  # threading.get_ident()
    thread_name: str
    on_loop: bool  # an event loop runs on that thread


def watch_store(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Each call of a public `Store` method, by any instance, from now on."""
    calls: list[Call] = []
    for name, member in vars(Store).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        monkeypatch.setattr(Store, name, _recorded(name, member, calls))
    return calls


def _recorded(name: str, method: Callable[..., Any], calls: list[Call]) -> Callable[..., Any]:
    @functools.wraps(method)
    def recorded(self: Store, *args: Any, **kwargs: Any) -> Any:
        thread = threading.current_thread()
        calls.append(Call(name, threading.get_ident(), thread.name, _loop_runs_here()))
        return method(self, *args, **kwargs)

    return recorded


def _loop_runs_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class ResumedElsewhere:
    """A console line that first resumes the queue as the operator's command line would (a
    store of its own, on the console's input thread), then waits until the bot, having seen
    the shared control row change, ran job `job`."""

    def __init__(self, operator: Store, job: int) -> None:
        self.operator = operator
        self.job = job
        self.resumed = False

    def __call__(self) -> str | None:
        if not self.resumed:
            self.operator.set_queue_paused(False, "cli:operator")
            self.resumed = True
        row = self.operator.job(self.job)
        return f"/info {self.job}" if row is not None and row.status is JobStatus.DONE else None


def first_life(settings: Settings, engine: Engine, operator: Store) -> str:
    lines = [
        "/imagine a red fox --steps 2 --n 1",  # job 1
        "/wait",
        "easel:1:U1",  # the grid's U1 button, pressed: job 2
        "/wait",
        "/history",
        "/info 1",
        "/settings style=watercolor",
        "/settings",
        "/queue",
        "/admin ban bob spamming",
        "/admin pause",
        "/imagine a blue fox --steps 2 --n 1",  # job 3: held by the pause
        "/cancel 3",
        "/imagine a green fox --steps 2 --n 1",  # job 4: held, until the resume below
        ResumedElsewhere(operator, 4),
        "/admin pause",
        "/imagine a white fox --steps 2 --n 1",  # job 5: still queued when the chat ends
    ]
    out = io.StringIO()
    bot = build_bot(settings, engine, open_store(settings))
    try:
        session = serve_console(bot, settings, ScriptedInput(lines), out, "en")
        asyncio.run(asyncio.wait_for(session, LIMIT_S))
    finally:
        bot.store.close()
    return out.getvalue()


def second_life(settings: Settings, engine: Engine) -> dict[str, Any]:
    """A restart, driven through the services as a front end would; the bot is assembled
    and closed outside the loop, as `easel run` does."""
    bot = build_bot(settings, engine, open_store(settings))
    try:
        return asyncio.run(asyncio.wait_for(serve(bot.service), LIMIT_S))
    finally:
        bot.store.close()


async def serve(service: JobService) -> dict[str, Any]:
    events: list[JobEvent] = []

    async def on_event(event: JobEvent) -> None:
        if event.kind is EventKind.STARTED:  # the front end's own message about the job
            await service.bind_status_message(event.job_id, f"message-{event.job_id}")
        events.append(event)

    service.subscribe(ORIGIN.platform, on_event)
    try:
        await service.start()  # job 5, left running by a crash, is queued again
        await service.deliver_missed(ORIGIN.platform)
        await asyncio.wait_for(service.wait_until_idle(ORIGIN.platform), LIMIT_S)
        admin = AdminService(service)
        return {
            "finished": [event.job_id for event in events if event.kind is EventKind.FINISHED],
            "menus": await service.setting_menus(LOCAL, 5),
            "plain": await service.plain_text_prompts(LOCAL),
            "remix": await service.remix_line(LOCAL, 1, ORIGIN),
            "grid": await service.last_grid(LOCAL, ORIGIN),
            "active": await service.active_jobs(LOCAL),
            "unbanned": (await admin.unban(LOCAL, UserRef("console", "bob"))).text("en"),
            "rules": (await admin.rules(LOCAL, ORIGIN, nsfw_allowed=False)).text("en"),
            "role": (await admin.set_role(LOCAL, UserRef("console", "bob"), "vip")).text("en"),
        }
    finally:
        await service.stop()


def test_no_store_call_runs_on_the_event_loop(
    tmp_path: Path, models_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = console_settings(tmp_path, models_dir)
    calls = watch_store(monkeypatch)

    with Store(settings.database_url) as operator:
        output = first_life(settings, engine, operator)
        assert "Job #1 is done" in output
        assert "upscaled to 128x128 (job #2)" in output
        assert "Your jobs, page 1 of 1 (2 in all):" in output
        assert "  style: watercolor\n" in output
        assert "Job #3 was cancelled." in output
        assert "Job #4 is done" in output  # the resume from another process was obeyed
        assert "stay queued for the next start" in output  # job 5
        assert operator.user("console", "bob").banned
        assert operator.mark_running([5]) == {5}  # the crash: job 5 was running
        operator.set_queue_paused(False, "cli:operator")

    seen = second_life(settings, engine)
    assert seen["finished"] == [5]
    style = seen["menus"][0]
    assert (style.name, style.current) == ("style", "watercolor")  # saved in the first life
    assert seen["plain"] is True
    assert seen["remix"].startswith("a red fox")
    assert seen["grid"] == 5
    assert seen["active"] == []
    assert seen["unbanned"] == "User bob is no longer banned."
    assert seen["rules"].startswith("Saved.")
    assert seen["role"] == "User bob is now vip (was user)."
    with Store(settings.database_url) as store:
        job = store.job(5)
        assert job is not None and job.status is JobStatus.DONE and job.attempts == 2

    on_loop = sorted({call.name for call in calls if call.on_loop})
    assert on_loop == [], f"store calls on the event loop: {on_loop}"
    on_store_threads = {call.name for call in calls if call.thread_name.startswith(THREAD_NAME)}
    assert on_store_threads >= EXPECTED, sorted(EXPECTED - on_store_threads)


def test_a_job_cancelled_while_its_batch_starts_ends_cancelled_without_running(
    tmp_path: Path, models_dir: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the queue giving a batch up and its rows saying running there is an await now:
    a cancel then is taken (it is not "already finished"), and the job never runs."""
    monkeypatch.setattr("bot.store.database.SQLITE_THREADS", 2)  # the cancel's reads pass
    settings = console_settings(tmp_path, models_dir)
    bot = build_bot(settings, engine, open_store(settings))
    service, dispatcher = bot.service, bot.service.dispatcher
    cancelled = threading.Event()
    mark_running = bot.store.mark_running

    def held_mark_running(*args: Any, **kwargs: Any) -> set[int]:
        cancelled.wait(LIMIT_S)  # on a store thread: the loop and the cancel go on
        return mark_running(*args, **kwargs)

    monkeypatch.setattr(bot.store, "mark_running", held_mark_running)
    events: list[JobEvent] = []

    async def on_event(event: JobEvent) -> None:
        events.append(event)

    async def scenario() -> tuple[int, str]:
        service.subscribe(ORIGIN.platform, on_event)
        await service.start()
        try:
            options = await service.options(LOCAL, "a fox --steps 2 --n 1", ORIGIN)
            job = (await service.imagine(LOCAL, options, ORIGIN)).job_id
            while job in dispatcher.scheduler:  # until the loop takes its batch
                await asyncio.sleep(0.01)
            reply = await service.cancel(LOCAL, job, ORIGIN)
            cancelled.set()
            await service.wait_until_idle(ORIGIN.platform)
            return job, reply.text("en")
        finally:
            cancelled.set()
            await service.stop()

    try:
        job, said = asyncio.run(asyncio.wait_for(scenario(), LIMIT_S))
        row = bot.store.job(job, with_images=True)
    finally:
        bot.store.close()
    assert said == f"Stopping job #{job}…"  # taken, not "already finished"
    assert [event.kind for event in events] == [EventKind.QUEUED, EventKind.CANCELLED]
    assert row is not None and row.status is JobStatus.CANCELLED and not row.images
