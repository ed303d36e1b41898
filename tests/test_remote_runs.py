"""Remote runs without Redis or workers: what crosses machines, which worker a batch goes to,
and what the bot does with runs whose worker was lost (the dispatcher on a real database, with
an executor that plays the workers' part)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.core.events import EventKind, Origin, UserRef
from bot.runtime import Bot, build_bot, open_store
from bot.settings import Settings
from bot.store import JobStatus
from pipeline.engine import Engine
from pipeline.errors import InvalidRequestError
from pipeline.executors import OutcomeStatus, PreparedWork, Task, TaskOutcome, Work
from pipeline.executors.local import LocalExecutor
from pipeline.executors.remote.channels import WorkerInfo
from pipeline.executors.remote.executor import RemoteExecutor
from pipeline.executors.remote.wire import RunOrder, RunReport, inline_images
from pipeline.executors.remote.worker import fit_report
from pipeline.images import Infotext
from pipeline.request import (
    ControlUse,
    GeneratedImage,
    GenerationRequest,
    ImageRef,
    UpscaleRequest,
)

ORIGIN = Origin("test", "chat-remote")
ALICE = UserRef("test", "alice", "Alice", "en")
MINJI = UserRef("test", "minji", "민지", "ko")


def noise(seed: int, size: int = 32) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# ------------------------------------------------------------------------- what crosses


def test_orders_and_reports_round_trip_as_json_with_identical_pixels(tmp_path: Path) -> None:
    source = tmp_path / "chosen.png"
    noise(1).save(source)
    request = GenerationRequest(
        "a castle",
        seeds=(5, 6),
        init_image=ImageRef(path=str(source)),
        mask_image=ImageRef(path=str(source)),  # a zoom out's mask crosses as bytes too
        control=ControlUse(ImageRef(path=str(source)), "tiny-canny", "canny"),  # so does a map
        model="tiny-sd1",
    )
    upscale = UpscaleRequest(ImageRef(path=str(source)), scale=2)
    order = RunOrder(
        "run-1",
        (Task(1, inline_images(request)), Task(2, inline_images(upscale))),
        preview_every=2.0,
        lease_seconds=30.0,
    )
    text = order.to_json()
    assert str(tmp_path) not in text  # no path of this machine crosses
    back = RunOrder.from_json(json.loads(json.dumps(text)))
    assert back == order
    made = noise(2)
    infotext = Infotext("a castle", steps=20, seed=5, width=32, height=32)
    report = RunReport(
        "run-1",
        "gpu-a",
        (TaskOutcome(1, OutcomeStatus.DONE, (GeneratedImage(made, 5, infotext),), seconds=1.5),),
    )
    received = RunReport.from_json(report.to_json())
    image = received.outcomes[0].images[0]
    assert np.array_equal(np.asarray(image.image), np.asarray(made))
    assert (image.seed, image.infotext, received.outcomes[0].seconds) == (5, infotext, 1.5)


def test_a_path_never_crosses_and_a_gone_image_is_a_clear_refusal(tmp_path: Path) -> None:
    request = GenerationRequest("x", init_image=ImageRef(path=str(tmp_path / "gone.png")))
    with pytest.raises(ValueError, match="inline"):
        RunOrder("r", (Task(1, request),), None, 30.0).to_json()
    with pytest.raises(InvalidRequestError) as refused:
        inline_images(request)
    assert "gone.png" in str(refused.value) and refused.value.ko is not None


def test_a_result_too_large_to_send_fails_its_job_alone_with_the_limit_named() -> None:
    small = GeneratedImage(Image.new("RGB", (8, 8)), 1, Infotext("a"))
    large = GeneratedImage(noise(3, 256), 2, Infotext("b"))
    report = RunReport(
        "r",
        "w",
        (
            TaskOutcome(1, OutcomeStatus.DONE, (small,)),
            TaskOutcome(2, OutcomeStatus.DONE, (large,)),
        ),
    )
    fitted = RunReport.from_json(fit_report(report, 100_000))
    kept, failed = fitted.outcomes
    assert kept.status is OutcomeStatus.DONE and len(kept.images) == 1
    assert failed.status is OutcomeStatus.FAILED and failed.failure is not None
    assert "EASEL_MAX_TRANSFER_MB" in failed.failure.detail
    assert failed.failure.detail_ko is not None


# ----------------------------------------------------------------------- which worker


def placing(*workers: WorkerInfo) -> RemoteExecutor:
    executor = RemoteExecutor("redis://127.0.0.1:1/0", preparer=None)  # type: ignore[arg-type]
    executor.workers = {info.name: info for info in workers}
    return executor


def worker(name: str, **fields: Any) -> WorkerInfo:
    values: dict[str, Any] = {"queue": f"q.{name}", "device": "cuda:0", "slots": 1}
    return WorkerInfo(name, **(values | fields))


def test_a_batch_never_goes_to_a_worker_without_its_checkpoint() -> None:
    executor = placing(
        worker("a", models=("sd15",), loaded=("sd15",)), worker("b", models=("sd15", "anime"))
    )
    assert not executor.can_start("realistic")
    assert executor.reserve("realistic") is None
    assert executor.reserve("anime") == "b"
    assert not executor.can_start("anime")  # b's one engine is taken now
    assert executor.reserve("sd15") == "a"
    assert executor.reserve("sd15") is None
    executor.release("b")
    assert executor.reserve("sd15") == "b"


def test_the_worker_holding_the_loras_goes_first_then_the_loaded_checkpoint() -> None:
    executor = placing(
        worker("a", models=("sd15", "anime"), loaded=("sd15",)),
        worker("b", models=("sd15", "anime"), loaded=("anime",), loras=("ink", "film")),
        worker("c", models=("sd15", "anime"), loaded=("anime",)),
    )
    assert executor.reserve("sd15", ["ink"]) == "b"  # its LoRA, though a has the checkpoint
    assert executor.reserve("anime") == "c"  # loaded there; a would have to switch
    assert executor.reserve("anime") == "a"  # the one left


# ------------------------------------------------------------- lost workers, in the bot


class PlayedWorkers:
    """The executor seam as remote workers fill it, playing out given outcomes per run: a
    run's outcome is LOST, NOT_TAKEN, a stale result, or the real images (from the engine)."""

    remote = True

    def __init__(self, engine: Engine, models_dir: Path, script: list[str]) -> None:
        self.local = LocalExecutor(engine, models_dir)
        self.script = script
        self.runs: list[tuple[str, list[int]]] = []
        self.store: Any = None
        self.forgotten: list[str] = []  # runs whose outcomes the bot recorded
        self._busy = False

    async def start(self) -> None:
        pass

    async def prepare(self, work: Work) -> PreparedWork:
        return await self.local.prepare(work)

    def can_start(self, model: str | None = None) -> bool:
        return not self._busy

    def reserve(self, model: str | None = None, loras: Collection[str] = ()) -> str | None:
        self._busy = True
        return "gpu-a"

    def release(self, slot: str) -> None:
        self._busy = False

    async def run(
        self,
        tasks: Sequence[Task],
        on_progress: Any,
        preview_every: float | None = None,
        run_id: str | None = None,
        slot: str | None = None,
    ) -> list[TaskOutcome]:
        assert run_id is not None
        self.runs.append((run_id, [task.task_id for task in tasks]))
        try:
            played = self.script.pop(0)
            if played in ("lost", "not_taken"):
                status = OutcomeStatus.LOST if played == "lost" else OutcomeStatus.NOT_TAKEN
                return [TaskOutcome(task.task_id, status) for task in tasks]
            outcomes = await self.local.run(tasks, on_progress, preview_every)
            if played == "stale":  # meanwhile another run (another worker) finished the job
                for task in tasks:
                    self.store.mark_done(task.task_id, [], None)
            return outcomes
        finally:
            self.release(slot or "")

    def cancel(self, task_id: int) -> None:
        self.local.cancel(task_id)

    def recorded(self, run_id: str) -> None:
        self.forgotten.append(run_id)

    def abandon(self, run_id: str) -> None:
        pass

    async def close(self) -> None:
        await self.local.close()


def played_bot(engine: Engine, tmp_path: Path, script: list[str]) -> tuple[Bot, PlayedWorkers]:
    settings = Settings(
        _env_file=None,
        outputs_dir=tmp_path / "out",
        models_dir=tmp_path / "models",
        database_url=f"sqlite:///{tmp_path}/easel.db",
        progress_interval=0,
    )
    executor = PlayedWorkers(engine, settings.models_dir, script)
    store = open_store(settings)
    executor.store = store
    native = engine.model.native_size
    bot = build_bot(settings, None, store, executor, engine.model_name, native)
    return bot, executor


async def one_job(bot: Bot, user: UserRef, text: str) -> tuple[int, list[Any]]:
    events: list[Any] = []

    async def record(event: Any) -> None:
        events.append(event)

    bot.service.subscribe(ORIGIN.platform, record)
    await bot.service.start()
    ticket = await bot.service.imagine(user, await bot.service.options(user, text, ORIGIN), ORIGIN)
    await asyncio.wait_for(bot.service.wait_until_idle(ORIGIN.platform), 120)
    await bot.service.stop()
    return ticket.job_id, events


def test_a_job_whose_worker_dies_twice_fails_with_a_clear_message(
    engine: Engine, tmp_path: Path
) -> None:
    bot, workers = played_bot(engine, tmp_path, ["lost", "lost"])
    job_id, events = asyncio.run(one_job(bot, MINJI, "a castle --steps 2 --n 1"))
    row = bot.store.job(job_id)
    assert row is not None and row.status is JobStatus.FAILED and row.attempts == 2
    assert len(workers.runs) == 2 and workers.runs[0][0] != workers.runs[1][0]  # new run id
    failed = [event for event in events if event.kind is EventKind.FAILED]
    assert len(failed) == 1
    text = failed[0].reply.message.render("ko")
    assert "GPU 워커" in text and "2번" in text
    assert "GPU worker" in failed[0].reply.message.render("en")
    bot.store.close()


def test_a_run_no_worker_took_costs_no_attempt_and_runs_again(
    engine: Engine, tmp_path: Path
) -> None:
    bot, workers = played_bot(engine, tmp_path, ["not_taken", "not_taken", "lost", "done"])
    job_id, _ = asyncio.run(one_job(bot, ALICE, "a castle --steps 2 --n 1"))
    row = bot.store.job(job_id, with_images=True)
    assert row is not None and row.status is JobStatus.DONE
    assert row.attempts == 2  # the lost run and the one that finished; the untaken ones free
    assert len(row.images) == 1 and Path(row.images[0].path).is_file()
    assert len(workers.runs) == 4
    assert workers.forgotten == [run_id for run_id, _ in workers.runs]  # reports may go
    bot.store.close()


def test_a_result_for_a_job_that_moved_on_is_dropped_with_its_files(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bot, _ = played_bot(engine, tmp_path, ["stale"])
    job_id, events = asyncio.run(one_job(bot, ALICE, "a castle --steps 2 --n 1"))
    row = bot.store.job(job_id, with_images=True)
    assert row is not None and row.status is JobStatus.DONE
    assert row.images == ()  # the other run's record stands; this one's images are not added
    assert list((tmp_path / "out").rglob("*.png")) == []  # and its files are gone
    assert not [event for event in events if event.kind is EventKind.FINISHED]
    assert any(
        "dropped" in record.getMessage() and str(job_id) in record.getMessage()
        for record in caplog.records
    )
    bot.store.close()
