"""The Redis side channels between the bot and its workers, beside Celery's own queues.

- `easel:run:<run id>` (pub/sub): a run's events, from its worker: claimed, progress (with
  previews), done.
- `easel:cancel` (pub/sub) and `easel:cancel:<job id>` (a key, for a worker that takes the
  run after the cancel was published): stop a job within a sampling step.
- `easel:worker:<name>` (a key that expires) and the set `easel:workers`: what each worker
  holds and how busy it is, renewed every few seconds; a worker whose key expired is gone.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from enum import StrEnum

CANCEL_CHANNEL = "easel:cancel"
WORKERS_SET = "easel:workers"
CANCEL_KEEP_SECONDS = 24 * 3600  # a cancel outlives any queue wait


def run_channel(run_id: str) -> str:
    return f"easel:run:{run_id}"


def cancel_key(job_id: int) -> str:
    return f"easel:cancel:{job_id}"


def worker_key(name: str) -> str:
    return f"easel:worker:{name}"


class RunEventKind(StrEnum):
    CLAIMED = "claimed"  # the worker holds the run's lease and starts it
    PROGRESS = "progress"
    DONE = "done"  # the report is in the result backend
    DROPPED = "dropped"  # nothing of the run could be claimed: no report comes


@dataclass(frozen=True)
class RunEvent:
    kind: RunEventKind
    worker: str
    step: int = 0
    total: int = 0
    previews: tuple[tuple[int, bytes], ...] = ()  # (job id, JPEG)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind.value,
                "worker": self.worker,
                "step": self.step,
                "total": self.total,
                "previews": [
                    [job_id, base64.b64encode(jpeg).decode("ascii")]
                    for job_id, jpeg in self.previews
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RunEvent:
        payload = json.loads(text)
        previews = tuple(
            (int(job_id), base64.b64decode(jpeg)) for job_id, jpeg in payload["previews"]
        )
        return cls(
            RunEventKind(payload["kind"]),
            str(payload["worker"]),
            int(payload["step"]),
            int(payload["total"]),
            previews,
        )


@dataclass(frozen=True)
class WorkerInfo:
    """A worker's announcement: the checkpoints it can load (`models`) and the one loaded in
    each of its engines, the LoRAs resident there and those it has files for, its device and
    free memory, its slots (one engine each), how many are busy and with which runs."""

    name: str
    queue: str
    device: str
    slots: int
    busy: int = 0
    loaded: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    loras: tuple[str, ...] = ()  # resident in its engines
    lora_files: tuple[str, ...] = ()  # in its models folder
    runs: tuple[str, ...] = ()  # the run ids it is running now
    free_memory: int | None = None  # bytes on its device; None when unknown
    extra: dict[str, str] = field(default_factory=dict)

    def has_model(self, model: str) -> bool:
        return not model or model in self.models or model in self.loaded

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "queue": self.queue,
                "device": self.device,
                "slots": self.slots,
                "busy": self.busy,
                "loaded": list(self.loaded),
                "models": list(self.models),
                "loras": list(self.loras),
                "lora_files": list(self.lora_files),
                "runs": list(self.runs),
                "free_memory": self.free_memory,
                "extra": self.extra,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerInfo:
        payload = json.loads(text)
        return cls(
            name=str(payload["name"]),
            queue=str(payload["queue"]),
            device=str(payload["device"]),
            slots=int(payload["slots"]),
            busy=int(payload["busy"]),
            loaded=tuple(payload["loaded"]),
            models=tuple(payload["models"]),
            loras=tuple(payload["loras"]),
            lora_files=tuple(payload.get("lora_files") or ()),
            runs=tuple(payload.get("runs") or ()),
            free_memory=payload.get("free_memory"),
            extra=dict(payload.get("extra") or {}),
        )
