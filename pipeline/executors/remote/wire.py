"""What crosses between the bot and a remote worker: plain JSON, no paths, no live objects.

Input images (an upscale's source, a variation's or img2img's init image) travel inside the
order as PNG/JPEG bytes, and result images inside the report as PNG bytes, through the broker
and Celery's result backend (Redis). Nothing else has to be shared between machines: no
folder, no object store. The price is size: each message is capped (`max_bytes`,
EASEL_MAX_TRANSFER_MB), well above a 4-image grid at 1024² (~6 MB of PNG) or a 4x upscale
within the default output limit (~30 MB), and a result over it fails its job with a clear
message rather than stalling the broker.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.errors import InvalidRequestError
from pipeline.executors.work import Failure, FailureKind, OutcomeStatus, Task, TaskOutcome, Work
from pipeline.request import GeneratedImage, GenerationRequest, ImageRef, UpscaleRequest
from pipeline.request import _infotext_from_json as infotext_from_json

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RunOrder:
    """One batch for one worker: `run_id` is the Celery task id and the job rows' run id (a
    worker runs a job only while its row names this run)."""

    run_id: str
    tasks: tuple[Task, ...]
    preview_every: float | None
    lease_seconds: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "run_id": self.run_id,
                "tasks": [
                    {"task_id": task.task_id, "work": _work_to_json(task.work)}
                    for task in self.tasks
                ],
                "preview_every": self.preview_every,
                "lease_seconds": self.lease_seconds,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> RunOrder:
        payload = json.loads(text)
        tasks = tuple(
            Task(int(item["task_id"]), _work_from_json(item["work"])) for item in payload["tasks"]
        )
        return cls(
            run_id=str(payload["run_id"]),
            tasks=tasks,
            preview_every=payload.get("preview_every"),
            lease_seconds=float(payload["lease_seconds"]),
        )


@dataclass(frozen=True)
class RunReport:
    """What a worker sends back: the outcome of each task it ran (the ones it claimed)."""

    run_id: str
    worker: str
    outcomes: tuple[TaskOutcome, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "run_id": self.run_id,
                "worker": self.worker,
                "outcomes": [_outcome_to_json(outcome) for outcome in self.outcomes],
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> RunReport:
        payload = json.loads(text)
        outcomes = tuple(_outcome_from_json(item) for item in payload["outcomes"])
        return cls(str(payload["run_id"]), str(payload["worker"]), outcomes)


def inline_images(work: Work, max_bytes: int = DEFAULT_MAX_BYTES) -> Work:
    """The work with every input image as bytes instead of a path on this machine."""
    if isinstance(work, UpscaleRequest):
        return replace(work, image=_inlined(work.image, max_bytes))
    if work.init_image is not None:
        work = replace(work, init_image=_inlined(work.init_image, max_bytes))
    if work.mask_image is not None:  # a zoom out's or pan's canvas mask
        work = replace(work, mask_image=_inlined(work.mask_image, max_bytes))
    if work.control is not None:
        control = replace(work.control, image=_inlined(work.control.image, max_bytes))
        work = replace(work, control=control)
    return work


def too_large(size: int, max_bytes: int) -> Failure:
    megabytes, limit = size / 2**20, max_bytes / 2**20
    return Failure(
        FailureKind.INVALID,
        f"The result is too large to send from the GPU worker ({megabytes:.1f} MB; the limit "
        f"is {limit:.0f} MB, EASEL_MAX_TRANSFER_MB).",
        detail_ko=f"결과가 GPU 워커에서 보내기에 너무 큽니다({megabytes:.1f} MB, 한도 "
        f"{limit:.0f} MB, EASEL_MAX_TRANSFER_MB).",
    )


def _inlined(image: ImageRef, max_bytes: int) -> ImageRef:
    if image.path is None:
        return image
    path = Path(image.path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidRequestError(
                f"The image ({path.name}) is too large to send to a GPU worker.",
                ko=f"이미지({path.name})가 GPU 워커로 보내기에 너무 큽니다.",
            )
        return ImageRef(data=path.read_bytes())
    except OSError as error:
        raise InvalidRequestError(
            f"The image ({path.name}) is gone.", ko=f"이미지({path.name})가 더 이상 없습니다."
        ) from error


def _work_to_json(work: Work) -> dict[str, str]:
    if isinstance(work, UpscaleRequest):
        return {"kind": "upscale", "request": work.to_json()}
    if isinstance(work, GenerationRequest):
        if _names_a_path(work):
            raise ValueError("a path cannot cross machines: inline the image first")
        return {"kind": "generate", "request": work.to_json()}
    raise TypeError(f"not work: {work!r}")


def _work_from_json(value: dict[str, str]) -> Work:
    if value["kind"] == "upscale":
        work = UpscaleRequest.from_json(value["request"])
        if work.image.path is not None:
            raise ValueError("an upscale from another machine names a path")
        return work
    if value["kind"] == "generate":
        request = GenerationRequest.from_json(value["request"])
        if _names_a_path(request):
            raise ValueError("a request from another machine names a path")
        return request
    raise ValueError(f"unknown kind of work: {value['kind']!r}")


def _names_a_path(request: GenerationRequest) -> bool:
    control = request.control.image if request.control is not None else None
    images = (request.init_image, request.mask_image, control)
    return any(image is not None and image.path is not None for image in images)


def _outcome_to_json(outcome: TaskOutcome) -> dict[str, Any]:
    return {
        "task_id": outcome.task_id,
        "status": outcome.status.value,
        "images": [
            {
                "png": base64.b64encode(_png(item.image)).decode("ascii"),
                "seed": item.seed,
                "infotext": asdict(item.infotext),
            }
            for item in outcome.images
        ],
        "failure": None if outcome.failure is None else asdict(outcome.failure),
        "seconds": outcome.seconds,
    }


def _outcome_from_json(value: dict[str, Any]) -> TaskOutcome:
    images = tuple(
        GeneratedImage(
            image=_image(base64.b64decode(item["png"])),
            seed=int(item["seed"]),
            infotext=infotext_from_json(dict(item["infotext"])),
        )
        for item in value["images"]
    )
    failure = value.get("failure")
    return TaskOutcome(
        task_id=int(value["task_id"]),
        status=OutcomeStatus(value["status"]),
        images=images,
        failure=None
        if failure is None
        else Failure(
            FailureKind(failure["kind"]), failure["detail"], failure["trace"], failure["detail_ko"]
        ),
        seconds=float(value["seconds"]),
    )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()
