"""Switching checkpoints and reloading presets in a running bot, as the operator's commands do
it from another process (their own Store handle on the same database): jobs queued after
`easel models use` run on the new checkpoint, jobs queued before keep theirs, a checkpoint
that cannot be loaded fails its batch and leaves the previous one, and `easel presets reload`
changes the presets the running service uses."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from bot.cli.models import choose_model
from bot.cli.presets import ask_reload
from bot.core.events import EventKind, JobEvent, Origin, UserRef
from bot.core.scheduler import FairScheduler, QueuedJob
from bot.core.work import work_of
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from bot.store import JobRecord
from pipeline.device import DeviceChoice
from pipeline.engine import Engine, batch_key
from pipeline.errors import ModelLoadError
from pipeline.images import Infotext, read_infotext
from pipeline.loading import (
    CheckpointSwitchError,
    HashCache,
    LoadedModel,
    ModelLoader,
    ModelSource,
)
from pipeline.request import GenerationRequest, ImageRef, UpscaleRequest
from tests.conftest import TEST_BATCHING

pytestmark = pytest.mark.heavy  # started first: see conftest.py

CPU = DeviceChoice(torch.device("cpu"), torch.float32)
ORIGIN = Origin("test", "chat-1")
ALICE = UserRef("test", "alice", "Alice", "en")
JOB_WAIT_S = 120.0
RELOAD_WAIT_S = 10.0  # the bot polls every 0.5 s; this only bounds a broken test
LINE = "--steps 2 --size 64x64 --n 1"
PRESETS = """
[presets.{id}]
description_en = "{en}"
description_ko = "{ko}"
trigger = "{id} drawing"
"""


@dataclass
class Switching:
    settings: Settings
    engine: Engine
    loader: ModelLoader
    models: Path


@pytest.fixture
def switching(models_dir: Path, cache_dir: Path, tmp_path: Path) -> Switching:
    """A models folder of its own (presets.toml may be written there) with the session's two
    tiny checkpoints, tiny-sd1 (a diffusers folder) and tiny-sd1-single (one file), and an
    engine that loads tiny-sd1 itself, so that freeing it touches no other test's model."""
    models = tmp_path / "models"
    checkpoints = models / "stable-diffusion"
    checkpoints.mkdir(parents=True)
    for entry in (models_dir / "stable-diffusion").iterdir():
        (checkpoints / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    loader = ModelLoader(models, CPU, cache_dir, HashCache(cache_dir / "hashes.json"))
    engine = Engine(
        loader.load(loader.source("tiny-sd1")),
        models_dir=models,
        loader=loader,
        batching=TEST_BATCHING,
    )
    settings = Settings(
        _env_file=None,
        outputs_dir=tmp_path / "out",
        models_dir=models,
        database_url=f"sqlite:///{tmp_path}/easel.db",
        progress_interval=0,
    )
    return Switching(settings, engine, loader, models)


@pytest.fixture
def make_bot(switching: Switching) -> Iterator[Any]:
    made: list[Bot] = []

    def make() -> Bot:
        bot = build_bot(switching.settings, switching.engine, open_store(switching.settings))
        made.append(bot)
        return bot

    yield make
    for bot in made:
        bot.store.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self.changed = asyncio.Event()

    async def __call__(self, event: JobEvent) -> None:
        self.events.append(event)
        self.changed.set()

    def last(self, job_id: int) -> JobEvent:
        return [event for event in self.events if event.job_id == job_id][-1]

    async def ended(self, job_id: int) -> EventKind:
        final = (EventKind.FINISHED, EventKind.FAILED)

        async def seen() -> EventKind:
            while True:
                kinds = [e.kind for e in self.events if e.job_id == job_id and e.kind in final]
                if kinds:
                    return kinds[0]
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(seen(), JOB_WAIT_S)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 300))


async def queue(bot: Bot, line: str) -> int:
    service = bot.service
    ticket = await service.imagine(ALICE, await service.options(ALICE, line, ORIGIN), ORIGIN)
    return ticket.job_id


def request_of(bot: Bot, job_id: int) -> GenerationRequest:
    job = bot.store.job(job_id)
    assert job is not None
    work = work_of(job)
    assert isinstance(work, GenerationRequest)
    return work


def parameters_of(bot: Bot, job_id: int) -> Infotext:
    job: JobRecord | None = bot.store.job(job_id, with_images=True)
    assert job is not None and job.images, job
    info = read_infotext(Path(job.images[0].path))
    assert info is not None
    return info


def test_jobs_queued_after_models_use_run_on_the_new_checkpoint(
    switching: Switching, make_bot: Any
) -> None:
    bot = make_bot()
    recorder = Recorder()
    jobs: dict[str, int] = {}

    async def scenario() -> list[EventKind]:
        bot.service.subscribe("test", recorder)
        await bot.service.start()
        try:
            await bot.service.dispatcher.set_paused(True)  # both run after the switch
            jobs["before"] = await queue(bot, f"a lighthouse {LINE}")
            choose_model(switching.settings, "tiny-sd1-single")  # what `models use` runs
            jobs["after"] = await queue(bot, f"a harbour {LINE}")
            await bot.service.dispatcher.set_paused(False)
            ends = [await recorder.ended(jobs["before"]), await recorder.ended(jobs["after"])]
            # Buttons on the earlier grid: its children keep the checkpoint it ran on.
            for action in ("V1", "U1"):
                ticket = await bot.service.act(ALICE, jobs["before"], action, ORIGIN)
                jobs[action] = ticket.job_id
            choose_model(switching.settings, None)  # `models use --default`
            jobs["back"] = await queue(bot, f"a beach {LINE}")
            for name in ("V1", "U1", "back"):
                ends.append(await recorder.ended(jobs[name]))
            return ends
        finally:
            await bot.service.stop()

    assert run(scenario()) == [EventKind.FINISHED] * 5
    assert request_of(bot, jobs["before"]).model == "tiny-sd1"
    assert request_of(bot, jobs["after"]).model == "tiny-sd1-single"
    assert request_of(bot, jobs["V1"]).model == "tiny-sd1"
    upscale = bot.store.job(jobs["U1"])
    assert upscale is not None and work_of(upscale).model == "tiny-sd1"
    assert request_of(bot, jobs["back"]).model == "tiny-sd1"
    models = {name: parameters_of(bot, job).model for name, job in jobs.items()}
    assert models == {
        "before": "tiny-sd1",
        "after": "tiny-sd1-single",
        "V1": "tiny-sd1",
        "U1": "tiny-sd1",
        "back": "tiny-sd1",
    }
    single = switching.models / "stable-diffusion" / "tiny-sd1-single.safetensors"
    hashes = switching.loader.hashes
    assert parameters_of(bot, jobs["after"]).model_hash == hashes.short_hash(single)
    assert parameters_of(bot, jobs["before"]).model_hash is None  # a folder has no A1111 hash
    assert switching.engine.model_name == "tiny-sd1"


def test_a_checkpoint_that_cannot_load_fails_its_batch_and_the_old_one_stays(
    switching: Switching, make_bot: Any
) -> None:
    bot = make_bot()
    recorder = Recorder()

    async def scenario() -> tuple[int, int, EventKind, EventKind]:
        bot.service.subscribe("test", recorder)
        await bot.service.start()
        try:
            # Chosen while its file was there, deleted since (`models use` checks the name).
            bot.store.set_model("vanished", "test")
            lost = await queue(bot, f"a lighthouse {LINE}")
            failed = await recorder.ended(lost)
            bot.store.set_model(None, "test")
            fine = await queue(bot, f"a lighthouse {LINE}")
            return lost, fine, failed, await recorder.ended(fine)
        finally:
            await bot.service.stop()

    lost, fine, failed, finished = run(scenario())
    assert (failed, finished) == (EventKind.FAILED, EventKind.FINISHED)
    reply = recorder.last(lost).reply
    english, korean = reply.text("en"), reply.text("ko")
    assert f"Job #{lost} failed: The checkpoint 'vanished' could not be loaded" in english
    assert "'tiny-sd1' stays loaded" in english and "easel models use" in english
    assert "체크포인트 'vanished'을(를) 불러올 수 없어 'tiny-sd1'을(를) 계속 씁니다" in korean
    assert parameters_of(bot, fine).model == "tiny-sd1"


def test_a_failed_load_loads_the_previous_checkpoint_again(switching: Switching) -> None:
    """A folder whose configs say SD 1.x but that has no weights passes the header check,
    so the engine frees tiny-sd1 before the load fails; it then loads tiny-sd1 again."""
    make_hollow(switching)
    engine = switching.engine
    loaded = engine.model
    with pytest.raises(CheckpointSwitchError) as refused:
        engine.use_model("hollow")
    assert engine.model is not loaded  # freed before the load, then loaded again
    assert "The checkpoint 'hollow' could not be loaded" in str(refused.value)
    assert "'tiny-sd1' stays loaded" in str(refused.value)
    assert engine.model_name == "tiny-sd1"
    request = GenerationRequest("a lighthouse", width=64, height=64, steps=2, seeds=(5,))
    result = engine.generate(request)
    assert result.images[0].infotext.model == "tiny-sd1"
    assert result.images[0].image.size == (64, 64)


def make_hollow(switching: Switching) -> Path:
    """A checkpoint folder with tiny-sd1's configs and no weights: it passes the header check
    and fails to load."""
    source = (switching.models / "stable-diffusion" / "tiny-sd1").resolve()
    hollow = switching.models / "stable-diffusion" / "hollow"
    for config in source.rglob("*.json"):
        target = hollow / config.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(config, target)
    return hollow


class HalfBuilt:
    """Stands for what a failed load had put on the GPU when it raised."""


def test_what_a_failed_load_built_is_freed_before_the_previous_checkpoint_loads(
    switching: Switching, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_hollow(switching)
    real_load = switching.loader.load
    built: list[weakref.ref[HalfBuilt]] = []
    alive_at_reload: list[bool] = []

    def load(source: ModelSource) -> LoadedModel:
        if source.name == "hollow":
            half_built = HalfBuilt()  # a local of the failing frame, as diffusers' are
            built.append(weakref.ref(half_built))
            raise RuntimeError("CUDA out of memory while loading the UNet")
        alive_at_reload.append(any(ref() is not None for ref in built))
        return real_load(source)

    monkeypatch.setattr(switching.loader, "load", load)
    with pytest.raises(CheckpointSwitchError) as refused:
        switching.engine.use_model("hollow")
    assert alive_at_reload == [False]  # tiny-sd1 loaded again with nothing of hollow's left
    assert "Why: CUDA out of memory while loading the UNet" in str(refused.value)
    assert "'tiny-sd1' stays loaded" in str(refused.value)
    assert isinstance(refused.value.__cause__, RuntimeError)  # the cause stays, its frames not
    assert refused.value.__cause__.__traceback__ is None
    assert switching.engine.model_name == "tiny-sd1"


def test_a_checkpoint_that_failed_to_load_is_refused_at_once_until_its_files_change(
    switching: Switching, monkeypatch: pytest.MonkeyPatch
) -> None:
    hollow = make_hollow(switching)
    engine = switching.engine
    loads: list[str] = []
    real_load = switching.loader.load

    def load(source: ModelSource) -> LoadedModel:
        loads.append(source.name)
        return real_load(source)

    monkeypatch.setattr(switching.loader, "load", load)

    def refusal() -> str:
        with pytest.raises(CheckpointSwitchError) as refused:
            engine.use_model("hollow")
        return str(refused.value)

    first = refusal()
    assert loads == ["hollow", "tiny-sd1"]  # tried, then the previous one loaded again
    kept = engine.model
    assert refusal() == first  # the next batch: the same answer, nothing unloaded or loaded
    assert loads == ["hollow", "tiny-sd1"] and engine.model is kept
    request = GenerationRequest("a lighthouse", width=64, height=64, steps=2, seeds=(5,))
    assert engine.generate(request).images[0].infotext.model == "tiny-sd1"

    config = hollow / "unet" / "config.json"
    stamp = config.stat()
    os.utime(config, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # the files changed
    assert refusal() == first
    assert loads == ["hollow", "tiny-sd1"] * 2 and engine.model is not kept

    assert engine.use_model("tiny-sd1-single")  # another name asked: hollow is tried again
    assert refusal().endswith(first.split("Why: ")[1])
    assert "'tiny-sd1-single' stays loaded" in refusal()
    assert loads == ["hollow", "tiny-sd1"] * 2 + ["tiny-sd1-single", "hollow", "tiny-sd1-single"]
    assert engine.model_name == "tiny-sd1-single"


def test_presets_reload_from_another_process_changes_the_running_service(
    switching: Switching, make_bot: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = switching.models / "presets.toml"
    path.write_text(PRESETS.format(id="ink", en="Ink", ko="잉크"), encoding="utf-8")
    bot = make_bot()
    assert bot.service.presets().ids() == ["ink"]
    # Same size and time stamp: only a reload, not the file watch, can see the change.
    stamp = path.stat()
    path.write_text(PRESETS.format(id="oak", en="Oak", ko="오크"), encoding="utf-8")
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert path.stat().st_size == stamp.st_size
    assert bot.service.presets().ids() == ["ink"]

    async def until(condition: Any) -> None:
        deadline = time.monotonic() + RELOAD_WAIT_S
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def scenario() -> tuple[list[str], list[str]]:
        await bot.service.start()
        try:
            ask_reload(switching.settings)  # what `easel presets reload` runs
            await until(lambda: bot.service.presets().ids() == ["oak"])
            reloaded = bot.service.presets().ids()
            path.write_text("[presets.oak\n", encoding="utf-8")
            stamp = path.stat()
            ask_reload(switching.settings)
            await until(lambda: "presets.toml is not used" in caplog.text)
            os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
            return reloaded, bot.service.presets().ids()
        finally:
            await bot.service.stop()

    with caplog.at_level(logging.INFO, logger="bot.core.service"):
        reloaded, after_broken = run(scenario())
    assert reloaded == ["oak"]
    assert "Reloaded presets and vocabulary (asked by cli" in caplog.text
    assert "presets.toml is not used, the last good presets stay" in caplog.text
    assert after_broken == ["oak"]  # the broken file left the last good presets in use


def test_the_scheduler_prefers_the_loaded_checkpoint_within_a_round() -> None:
    scheduler = FairScheduler(max_batch_images=4)
    scheduler.add(QueuedJob(1, user_id=10, tier=2, images=1, batch_key="b", model="other"))
    scheduler.add(QueuedJob(2, user_id=20, tier=2, images=1, batch_key="a", model="loaded"))
    scheduler.add(QueuedJob(3, user_id=20, tier=2, images=1, batch_key="a2", model="loaded"))
    order = [[job.job_id for job in scheduler.next_batch(active_model="loaded")] for _ in range(3)]
    # Job 2 goes before the older job 1, but user 10 still gets their turn before job 3.
    assert order == [[2], [1], [3]]
    plain = FairScheduler(max_batch_images=4)
    plain.add(QueuedJob(1, user_id=10, tier=2, images=1, batch_key="b", model="other"))
    plain.add(QueuedJob(2, user_id=20, tier=2, images=1, batch_key="a"))  # an old row: any
    assert [job.job_id for job in plain.next_batch(active_model="loaded")] == [2]
    assert [job.job_id for job in plain.next_batch(active_model=None)] == [1]


def test_the_bot_starts_on_the_checkpoint_chosen_before_it_stopped(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import bot.cli.running as running

    settings = Settings(
        _env_file=None,
        outputs_dir=tmp_path / "out",
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path}/easel.db",
    )
    asked: list[str | None] = []

    def load(settings: Settings, model: str | None, **_: Any) -> Engine:
        asked.append(model)
        if model == "vanished":
            raise ModelLoadError("No model named 'vanished'.")
        return engine

    monkeypatch.setattr(running, "_load_engine", load)
    store = open_store(settings)
    store.set_model("tiny-sd1-single", "cli:ops")
    store.close()
    started = running._open_bot(settings, "tiny-sd1")
    started.store.close()
    assert asked == ["tiny-sd1-single"]  # the choice beats --model
    assert started.service.default_model == "tiny-sd1"  # what `models use --default` means

    store = open_store(settings)
    store.set_model("vanished", "cli:ops")
    store.close()
    again = running._open_bot(settings, "tiny-sd1")
    again.store.close()
    assert asked[1:] == ["vanished", "tiny-sd1"]
    message = capsys.readouterr().err
    assert "The checkpoint chosen with `easel models use` (vanished) cannot be loaded" in message


def test_the_request_records_its_checkpoint_and_old_rows_still_read(engine: Engine) -> None:
    request = GenerationRequest("a lighthouse", width=64, height=64, steps=2, model="tiny-sd1")
    assert GenerationRequest.from_json(request.to_json()) == request
    old_row = json.loads(request.to_json())
    del old_row["model"]  # written before jobs named their checkpoint
    assert GenerationRequest.from_json(json.dumps(old_row)).model is None
    upscale = UpscaleRequest(ImageRef(path="grid.png"), model="tiny-sd1")
    assert UpscaleRequest.from_json(upscale.to_json()) == upscale
    assert UpscaleRequest.from_json('{"image": {"path": "grid.png"}}').model is None
    # Jobs for different checkpoints never share a pipeline call.
    keys = {
        batch_key(engine.prepare(replace(request, model=model)))
        for model in ("tiny-sd1", "tiny-sd1-single", None)
    }
    assert len(keys) == 3
