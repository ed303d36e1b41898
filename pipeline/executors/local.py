"""The default executor: the engine in one dedicated thread of this process.

The event loop only awaits; every engine call runs on the one "easel-gpu" thread, so one batch
runs at a time and the loop stays responsive. A batch that fails is retried job by job, so a
bad job (an unreadable LoRA, an image too large for memory) fails alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from PIL import Image

from pipeline.batching import key_digest
from pipeline.engine import Engine, PreparedJob
from pipeline.errors import EaselError, GenerationOutOfMemory, InvalidRequestError, first_line
from pipeline.executors.preparer import prepare_work
from pipeline.executors.work import (
    Failure,
    FailureKind,
    OutcomeStatus,
    PreparedWork,
    ProgressSink,
    Task,
    TaskOutcome,
    Work,
)
from pipeline.images import Infotext, open_rgb, read_infotext
from pipeline.preparation import check_upscale_source
from pipeline.request import (
    GeneratedImage,
    GenerationRequest,
    ProgressEvent,
    ResultStatus,
    UpscaleRequest,
)
from pipeline.upscale import check_upscale_size, load_upscaler, upscale_image
from pipeline.upscale_detail import plan_detail, upscaled_parameters

__all__ = ["LocalExecutor", "key_digest"]

LOCAL_SLOT = "local"


class LocalExecutor:
    def __init__(self, engine: Engine, models_dir: Path) -> None:
        self.engine = engine
        self.models_dir = models_dir
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-gpu")
        self._cancels: dict[int, threading.Event] = {}
        self._reserved = False  # a batch holds the one GPU thread (see `reserve`)

    async def prepare(self, work: Work) -> PreparedWork:
        # Off the loop, but not on the GPU thread, so a long batch does not hold up replies.
        return await asyncio.to_thread(self._prepare, work)

    def _prepare(self, work: Work) -> PreparedWork:
        return prepare_work(work, self.engine.limits, self.engine.prepare)

    async def run(
        self,
        tasks: Sequence[Task],
        on_progress: ProgressSink,
        preview_every: float | None = None,
        run_id: str | None = None,
        slot: str | None = None,
    ) -> list[TaskOutcome]:
        loop = asyncio.get_running_loop()

        def progress(event: ProgressEvent) -> None:
            loop.call_soon_threadsafe(on_progress, event)

        for task in tasks:
            self._cancels[task.task_id] = threading.Event()
        try:
            return await loop.run_in_executor(
                self._thread, self._run, list(tasks), progress, preview_every
            )
        finally:
            if slot is not None:
                self.release(slot)
            for task in tasks:
                self._cancels.pop(task.task_id, None)

    def run_blocking(
        self,
        tasks: Sequence[Task],
        on_progress: ProgressSink,
        preview_every: float | None = None,
        cancelled: Collection[int] = (),
    ) -> list[TaskOutcome]:
        """Run a batch on the calling thread (a remote worker's own): the caller keeps to one
        batch at a time. `cancel` works as during `run`; `cancelled`: tasks already asked to
        stop, which end cancelled without running."""
        for task in tasks:
            event = self._cancels[task.task_id] = threading.Event()
            if task.task_id in cancelled:
                event.set()
        try:
            return self._run(list(tasks), on_progress, preview_every)
        finally:
            for task in tasks:
                self._cancels.pop(task.task_id, None)

    remote = False

    def can_start(self, model: str | None = None) -> bool:
        """One batch at a time, on any checkpoint (the engine loads it)."""
        return not self._reserved

    def reserve(self, model: str | None = None, loras: Collection[str] = ()) -> str | None:
        if self._reserved:
            return None
        self._reserved = True
        return LOCAL_SLOT

    def release(self, slot: str) -> None:
        self._reserved = False

    def cancel(self, task_id: int) -> None:
        event = self._cancels.get(task_id)
        if event is not None:
            event.set()

    async def close(self) -> None:
        for event in self._cancels.values():
            event.set()
        await asyncio.to_thread(self._thread.shutdown, wait=True)

    # ------------------------------------------------------------------ on the GPU thread

    def _run(
        self, tasks: list[Task], progress: ProgressSink, preview_every: float | None = None
    ) -> list[TaskOutcome]:
        try:
            # Between batches: the checkpoint the batch was queued for (its jobs share it).
            self.engine.use_model(tasks[0].work.model)
        except Exception as error:  # the previous checkpoint stays; these jobs fail
            return [_failed(task, error) for task in tasks]
        if len(tasks) == 1 and isinstance(tasks[0].work, UpscaleRequest):
            return [self._upscale(tasks[0], progress)]
        prepared: dict[int, PreparedJob] = {}
        outcomes: dict[int, TaskOutcome] = {}
        for task in tasks:
            try:
                assert isinstance(task.work, GenerationRequest)
                prepared[task.task_id] = self.engine.prepare(task.work)
            except Exception as error:  # this job fails alone
                outcomes[task.task_id] = _failed(task, error)
        runnable = [task for task in tasks if task.task_id in prepared]
        if runnable:
            for outcome in self._generate(runnable, prepared, progress, preview_every):
                outcomes[outcome.task_id] = outcome
        return [outcomes[task.task_id] for task in tasks]

    def _generate(
        self,
        tasks: list[Task],
        prepared: dict[int, PreparedJob],
        progress: ProgressSink,
        preview_every: float | None = None,
    ) -> list[TaskOutcome]:
        started = time.perf_counter()
        cancels = [self._cancels.get(task.task_id) for task in tasks]
        try:
            results = self.engine.run_batch(
                [prepared[task.task_id] for task in tasks],
                _keyed_by_task(tasks, progress),
                cancels,
                preview_every,
            )
        except Exception as error:  # a job's failure is reported, never raised
            if len(tasks) > 1:
                # Alone, each job may well fit in memory, and a bad one fails by itself.
                return [
                    outcome
                    for task in tasks
                    for outcome in self._generate([task], prepared, progress, preview_every)
                ]
            return [_failed(tasks[0], error)]
        seconds = time.perf_counter() - started
        return [
            TaskOutcome(
                task_id=task.task_id,
                status=OutcomeStatus.DONE
                if result.status is ResultStatus.DONE
                else OutcomeStatus.CANCELLED,
                images=result.images,
                seconds=seconds,
            )
            for task, result in zip(tasks, results, strict=True)
        ]

    def _upscale(self, task: Task, progress: ProgressSink) -> TaskOutcome:
        """Enlarge, then the detail pass by the rule `easel upscale` follows too."""
        work = task.work
        assert isinstance(work, UpscaleRequest)
        cancel = self._cancels.get(task.task_id)
        if cancel is not None and cancel.is_set():
            return TaskOutcome(task.task_id, OutcomeStatus.CANCELLED)
        started = time.perf_counter()
        try:
            limits = self.engine.limits
            image, infotext = _read_source(work, limits.max_input_pixels)
            check_upscale_size(image.size, work.scale, limits.max_output_pixels)
            pipe = self.engine.model.pipe
            model = load_upscaler(work.upscaler, self.models_dir, pipe.device, pipe.dtype)
            enlarged, used = upscale_image(image, work.scale, model, limits.max_output_pixels)
            plan = plan_detail(infotext, enlarged, work.detail, self.engine.limits.max_area)
            if plan.request is not None:
                job = self.engine.prepare(plan.request)
                result = self.engine.run(job, on_progress=progress, cancel=cancel)
                if result.status is ResultStatus.CANCELLED:
                    return TaskOutcome(task.task_id, OutcomeStatus.CANCELLED)
                enlarged, infotext = result.images[0].image, result.images[0].infotext
            face_keys: tuple[tuple[str, str], ...] = ()
            if work.face_restoration is not None:
                enlarged, face_keys = self.engine.restore_faces(enlarged, work)
        except Exception as error:  # a job's failure is reported, never raised
            return _failed(task, error)
        parameters = upscaled_parameters(infotext, enlarged.size, used, work.scale)
        if face_keys:  # restored now: any earlier record of a restoration is replaced
            names = {name for name, _ in face_keys}
            kept = tuple(item for item in parameters.extra if item[0] not in names)
            parameters = replace(parameters, extra=(*kept, *face_keys))
        seed = parameters.seed if parameters.seed is not None else 0
        return TaskOutcome(
            task_id=task.task_id,
            status=OutcomeStatus.DONE,
            images=(GeneratedImage(image=enlarged, seed=seed, infotext=parameters),),
            seconds=time.perf_counter() - started,
        )


def _keyed_by_task(tasks: Sequence[Task], progress: ProgressSink) -> ProgressSink:
    """The engine keys previews by a job's position in the batch; the caller knows task ids."""

    def relay(event: ProgressEvent) -> None:
        if event.previews:
            previews = tuple((tasks[position].task_id, jpeg) for position, jpeg in event.previews)
            event = replace(event, previews=previews)
        progress(event)

    return relay


def _read_source(work: UpscaleRequest, max_pixels: int) -> tuple[Image.Image, Infotext | None]:
    """The image and the parameters it carries (kept on the enlarged copy)."""
    check_upscale_source(work)
    path = work.image.path
    source = Path(path) if path is not None else work.image.data or b""
    image = open_rgb(source, max_pixels, "The image to upscale", "업스케일할 이미지")
    return image, read_infotext(Path(path)) if path is not None else None


def _failure_kind(error: BaseException) -> FailureKind:
    if isinstance(error, GenerationOutOfMemory):
        return FailureKind.OUT_OF_MEMORY
    if isinstance(error, InvalidRequestError | EaselError):
        return FailureKind.INVALID
    return FailureKind.ERROR


def _failed(task: Task, error: BaseException) -> TaskOutcome:
    kind = _failure_kind(error)
    trace = "".join(traceback.format_exception(error)) if kind is FailureKind.ERROR else None
    korean = error.ko if isinstance(error, InvalidRequestError) else None
    failure = Failure(kind, first_line(error), trace, korean)
    return TaskOutcome(task.task_id, OutcomeStatus.FAILED, failure=failure)
