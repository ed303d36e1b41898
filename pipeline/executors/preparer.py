"""Checking work before it is queued: `prepare_work`, the one path every executor's `prepare`
takes, and `OfflinePreparer`, which checks work without the weights, for a bot whose GPU
workers are on other machines (`easel run --executor celery`).

The offline answer is the local executor's answer: the checks are the engine's own
(`prepare_job`, pipeline/preparation.py), against ModelTraits read from the checkpoint's config
and tokenizer files (pipeline/model_traits.py) instead of the loaded pipeline.

Importing this module imports neither torch nor diffusers (nor transformers): reading a
checkpoint's tokenizer imports transformers, and the first generation checked imports
diffusers' scheduler classes (and torch with them), since whether a sampler can run a number
of steps is the scheduler's answer. `warm_up` does that ahead of the first job.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from pipeline.batching import key_digest
from pipeline.checkpoint_names import CheckpointNames, CheckpointStamp, ModelSource
from pipeline.checkpoint_names import checkpoint_stamp as stamp_of
from pipeline.errors import InvalidRequestError, ModelLoadError, first_line
from pipeline.executors.work import PreparedWork, Work
from pipeline.lora_names import LoraFolder, UnknownLoraError, names_lora, unknown_lora_name
from pipeline.model_traits import read_model_traits
from pipeline.preparation import ModelTraits, PreparedJob, check_upscale_request, prepare_job
from pipeline.request import GenerationRequest, UpscaleRequest
from pipeline.validation import Limits

RemoteLoras = Callable[[], Collection[str]]


def prepare_work(
    work: Work, limits: Limits, prepare_generation: Callable[[GenerationRequest], PreparedJob]
) -> PreparedWork:
    """`work` checked, with its size and seeds fixed and its batch key: an upscale by its image
    alone (1.0 of cost, never batched), a generation by `prepare_generation`."""
    if isinstance(work, UpscaleRequest):
        check_upscale_request(work, limits)
        return PreparedWork(work=work, batch_key=None, cost=1.0)
    job = prepare_generation(work)
    return PreparedWork(work=job.request, batch_key=key_digest(job), notes=job.notes, cost=job.cost)


class UnusableCheckpointError(InvalidRequestError):
    """A job's checkpoint that cannot be read here: no such name, or files Easel cannot use."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        # The reason goes last: a chat shows the first 300 characters.
        super().__init__(
            f"The checkpoint {name!r} cannot be used, so the job cannot be checked; an admin "
            f"can choose another one with `easel models use`. Why: {reason}",
            ko=f"체크포인트 {name!r}을(를) 쓸 수 없어 작업을 확인할 수 없습니다. 관리자가 "
            f"`easel models use`로 다른 체크포인트를 고를 수 있습니다. 이유: {reason}",
        )


@dataclass(frozen=True)
class _Read:
    """Traits read from a checkpoint's files, with the files' stamp when they were read."""

    source: ModelSource
    stamp: CheckpointStamp
    traits: ModelTraits


class OfflinePreparer:
    """The executor's `prepare` without the weights: each job checked against its own
    checkpoint (its `model`, a name as `easel models` lists it), read from that checkpoint's
    files once and again when they change.

    `remote_loras`: the LoRA names GPU workers announce. A LoRA is valid when its file is in
    `models_dir` or a worker announced it; it is called (from a worker thread, so it must be
    safe to call there) only for a name the folder does not have. `default_model`: the
    checkpoint of work that names none."""

    def __init__(
        self,
        models_dir: Path,
        limits: Limits | None = None,
        remote_loras: RemoteLoras | None = None,
        default_model: str | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.limits = limits or Limits()
        self.default_model = default_model
        self.checkpoints = CheckpointNames(models_dir)
        self._remote_loras = remote_loras or (lambda: ())
        self._loras = LoraFolder(models_dir)
        self._read: dict[str, _Read] = {}
        # One check at a time, as the engine checks (a tokenizer is not for concurrent calls).
        self._lock = threading.Lock()

    def remember(self, source: ModelSource) -> None:
        """Know a checkpoint outside the models folder by its name (the one the bot started
        with may be a path or a hub repo)."""
        self.checkpoints.remember(source)

    async def prepare(self, work: Work) -> PreparedWork:
        """Check work without running it; raises InvalidRequestError with a clear message.
        Off the event loop, as LocalExecutor.prepare."""
        return await asyncio.to_thread(self.prepare_now, work)

    def prepare_now(self, work: Work) -> PreparedWork:
        """`prepare`, on the calling thread."""
        return prepare_work(work, self.limits, self._prepare_generation)

    def traits(self, name: str) -> ModelTraits:
        """The traits of the checkpoint called `name`; UnusableCheckpointError when there is
        none or its files cannot be read."""
        try:
            source = self.checkpoints.find(name)
            stamp = stamp_of(source)
            known = self._read.get(name)
            if known is not None and known.source == source and known.stamp == stamp:
                return known.traits
            traits = read_model_traits(source)
        except ModelLoadError as error:
            raise UnusableCheckpointError(name, first_line(error)) from error
        self._read[name] = _Read(source, stamp, traits)
        return traits

    def warm_up(self) -> None:
        """Import what checking the first generation needs (diffusers' scheduler classes, and
        torch: seconds), so that job does not wait for it. Blocking: call it off the loop."""
        import pipeline.samplers  # noqa: F401

    def _prepare_generation(self, request: GenerationRequest) -> PreparedJob:
        name = request.model or self.default_model
        if name is None:
            raise InvalidRequestError(
                "The job names no checkpoint and no default one is set.",
                ko="작업에 체크포인트가 지정되지 않았고 기본 체크포인트도 없습니다.",
            )
        with self._lock:
            traits = self.traits(name)
            return prepare_job(request, traits, self.limits, self.models_dir, self._find_lora)

    def _find_lora(self, name: str) -> None:
        """A LoRA of the models folder, or one a worker announced; else the folder's error
        (with the announced names among those it lists)."""
        try:
            self._loras.lookup(name)
        except UnknownLoraError as error:
            remote = list(self._remote_loras())
            if names_lora(remote, name):
                return
            if not remote:
                raise
            every = sorted({*error.available, *remote}, key=str.lower)
            raise unknown_lora_name(every, name) from None
