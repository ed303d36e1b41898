"""The contract between the bot and the GPU side: plain dataclasses that round-trip through JSON.

A Celery worker on another machine receives these, so nothing here holds live objects other
than PIL images, which travel as PNG bytes (base64 in JSON).
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.images import Infotext

DETAIL_STRENGTH = 0.3  # the U detail pass's denoising (A1111's SD upscale default)
CODEFORMER_WEIGHT = 0.5  # A1111's default: 0 restores most, 1 keeps most of the face

RANDOM_SEED = -1


@dataclass(frozen=True)
class ImageRef:
    """An input image, by path on the worker's disk or by its encoded bytes."""

    path: str | None = None
    data: bytes | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("an ImageRef holds exactly one of path or data")

    @classmethod
    def from_image(cls, image: Image.Image) -> ImageRef:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return cls(data=buffer.getvalue())

    def open(self) -> Image.Image:
        with Image.open(self._source()) as image:
            return image.convert("RGB")

    def size(self) -> tuple[int, int]:
        """Width and height, from the header alone."""
        with Image.open(self._source()) as image:
            return image.size

    def _source(self) -> Path | io.BytesIO:
        return Path(self.path) if self.path is not None else io.BytesIO(self.data or b"")

    def to_json_value(self) -> dict[str, str]:
        if self.path is not None:
            return {"path": self.path}
        return {"data": base64.b64encode(self.data or b"").decode("ascii")}

    @classmethod
    def from_json_value(cls, value: dict[str, str]) -> ImageRef:
        if "path" in value:
            return cls(path=value["path"])
        return cls(data=base64.b64decode(value["data"]))


LATENT_UPSCALER = "Latent"


@dataclass(frozen=True)
class LoraUse:
    """A LoRA a job asks for, by name (its file stem), with UNet and text-encoder weights."""

    name: str
    unet_weight: float = 1.0
    te_weight: float = 1.0

    @property
    def is_zero(self) -> bool:
        return self.unet_weight == 0 and self.te_weight == 0


@dataclass(frozen=True)
class HiresFix:
    """A1111's hires fix: generate, upscale by `scale`, then img2img at the larger size."""

    scale: float = 2.0
    steps: int | None = None  # None: the base steps
    denoising_strength: float = 0.5
    upscaler: str = LATENT_UPSCALER  # "Latent", "Lanczos", or an upscaler model's name


class ControlMode(StrEnum):
    """A1111's ControlNet control modes, as its parameters name them."""

    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


@dataclass(frozen=True)
class ControlUse:
    """A ControlNet a job asks for: the control image, what turns it into the map the model
    reads (`preprocessor`, "none" for a ready-made map) and the model (a file or folder name
    in models/ControlNet), with A1111's weight, guidance start and end (shares of the steps)
    and control mode. `show`: send the map back with the images."""

    image: ImageRef
    model: str
    preprocessor: str = "none"
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    mode: ControlMode = ControlMode.BALANCED
    show: bool = False

    def to_json_value(self) -> dict[str, Any]:
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        return values | {"image": self.image.to_json_value(), "mode": self.mode.value}

    @classmethod
    def from_json_value(cls, value: dict[str, Any]) -> ControlUse:
        values = dict(value)
        values["image"] = ImageRef.from_json_value(values["image"])
        values["mode"] = ControlMode(values.get("mode", ControlMode.BALANCED.value))
        return cls(**values)


@dataclass(frozen=True)
class GenerationRequest:
    """One batch of images from one prompt; image i uses `seeds[i]` (-1 = pick one at random)."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None  # None: the model's native size
    height: int | None = None
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    schedule_type: str | None = None
    seeds: tuple[int | None, ...] = (RANDOM_SEED,)  # None or -1: random
    init_image: ImageRef | None = None
    denoising_strength: float = 0.75
    # Inpainting (with init_image): white repaints, black keeps the init image's pixels.
    mask_image: ImageRef | None = None
    control: ControlUse | None = None
    # A1111's "Restore faces": a face restorer's name (or gfpgan, codeformer, restoreformer)
    face_restoration: str | None = None
    codeformer_weight: float = CODEFORMER_WEIGHT
    tiling: bool = False
    clip_skip: int = 1
    # A1111's variation seeds: one per image (None or -1: random), blended into the noise of
    # `seeds` at `variation_strength` (0 keeps the image, 1 is the variation seed's own).
    variation_seeds: tuple[int | None, ...] = ()
    variation_strength: float = 0.0
    hires: HiresFix | None = None
    loras: tuple[LoraUse, ...] = ()  # on top of any <lora:…> tags in the prompt
    # The checkpoint (its name, as `easel models` lists it) the job was queued for; None:
    # whichever is loaded (rows written before jobs named one read as None).
    model: str | None = None

    def hires_size(self) -> tuple[int, int]:
        """The final size of a hires-fixed request (multiples of 8)."""
        assert self.hires is not None and self.width is not None and self.height is not None
        scale = self.hires.scale
        return round(self.width * scale / 8) * 8, round(self.height * scale / 8) * 8

    @property
    def image_count(self) -> int:
        return len(self.seeds)

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None

    @property
    def is_inpaint(self) -> bool:
        return self.mask_image is not None

    def to_json(self) -> str:
        return json.dumps(_encode(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> GenerationRequest:
        return _decode_request(json.loads(text))


@dataclass(frozen=True)
class UpscaleRequest:
    """Enlarge one image by `scale` (2 or 4) with an upscaler model (None: Lanczos), then run
    a detail pass at `detail` denoising (0: none); see pipeline/upscale_detail.py."""

    image: ImageRef
    scale: int = 2
    upscaler: str | None = None
    detail: float = DETAIL_STRENGTH
    model: str | None = None  # the checkpoint of the detail pass; None: whichever is loaded
    face_restoration: str | None = None  # faces restored after the detail pass (see above)
    codeformer_weight: float = CODEFORMER_WEIGHT

    def to_json(self) -> str:
        payload = {"image": self.image.to_json_value(), "scale": self.scale}
        payload |= {"upscaler": self.upscaler, "detail": self.detail, "model": self.model}
        if self.face_restoration is not None:
            payload |= {
                "face_restoration": self.face_restoration,
                "codeformer_weight": self.codeformer_weight,
            }
        return json.dumps(payload, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> UpscaleRequest:
        payload = json.loads(text)
        known = {"image", "scale", "upscaler", "detail", "model"}
        unknown = sorted(set(payload) - known - {"face_restoration", "codeformer_weight"})
        if unknown:
            raise ValueError(f"UpscaleRequest has no field(s) {', '.join(unknown)}")
        return cls(
            image=ImageRef.from_json_value(payload["image"]),
            scale=int(payload.get("scale", 2)),
            upscaler=payload.get("upscaler"),
            # Rows written before the detail pass was part of U keep their plain upscale.
            detail=float(payload.get("detail", 0.0)),
            model=payload.get("model"),
            face_restoration=payload.get("face_restoration"),
            codeformer_weight=float(payload.get("codeformer_weight", CODEFORMER_WEIGHT)),
        )


class ResultStatus(StrEnum):
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Timings:
    total_s: float
    diffusion_s: float  # time inside the diffusers pipeline call


@dataclass(frozen=True)
class GeneratedImage:
    image: Image.Image
    seed: int
    infotext: Infotext  # the A1111 "parameters" of this image


@dataclass(frozen=True)
class GenerationResult:
    status: ResultStatus
    request: GenerationRequest  # with seeds and size resolved to what was actually used
    images: tuple[GeneratedImage, ...] = ()
    model_name: str = ""
    model_hash: str | None = None
    timings: Timings = field(default_factory=lambda: Timings(0.0, 0.0))
    control_map: Image.Image | None = None  # what the ControlNet read, when the job asked

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(image.seed for image in self.images)

    def to_json(self) -> str:
        payload = {
            "status": self.status.value,
            "request": _encode(self.request),
            "images": [
                {
                    "image": ImageRef.from_image(item.image).to_json_value(),
                    "seed": item.seed,
                    "infotext": asdict(item.infotext),
                }
                for item in self.images
            ],
            "model_name": self.model_name,
            "model_hash": self.model_hash,
            "timings": asdict(self.timings),
            "control_map": None
            if self.control_map is None
            else ImageRef.from_image(self.control_map).to_json_value(),
        }
        return json.dumps(payload, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> GenerationResult:
        payload = json.loads(text)
        images = tuple(
            GeneratedImage(
                image=ImageRef.from_json_value(item["image"]).open(),
                seed=item["seed"],
                infotext=_infotext_from_json(item["infotext"]),
            )
            for item in payload["images"]
        )
        return cls(
            status=ResultStatus(payload["status"]),
            request=_decode_request(payload["request"]),
            images=images,
            model_name=payload["model_name"],
            model_hash=payload["model_hash"],
            timings=Timings(**payload["timings"]),
            control_map=ImageRef.from_json_value(payload["control_map"]).open()
            if payload.get("control_map")
            else None,
        )


@dataclass(frozen=True)
class ProgressEvent:
    """Steps done of `total`; `previews`, when a front end asked for them and one was due:
    `(key, jpeg)` pairs, one JPEG of at most 256 px a side per job, its images in a grid.
    The engine keys them by the job's position in `run_batch`, an executor by task id."""

    step: int
    total: int
    previews: tuple[tuple[int, bytes], ...] = ()

    def preview(self, key: int) -> bytes | None:
        return dict(self.previews).get(key)


def _infotext_from_json(values: dict[str, Any]) -> Infotext:
    extra = tuple((str(key), str(value)) for key, value in values.pop("extra", ()))
    return Infotext(**values, extra=extra)


def _encode(request: GenerationRequest) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for item in fields(request):
        value = getattr(request, item.name)
        if isinstance(value, ImageRef | ControlUse):
            value = value.to_json_value()
        elif isinstance(value, HiresFix):
            value = asdict(value)
        elif item.name == "loras":
            value = [asdict(use) for use in value]
        elif isinstance(value, tuple):
            value = list(value)
        payload[item.name] = value
    return payload


def _decode_request(payload: dict[str, Any]) -> GenerationRequest:
    known = {item.name for item in fields(GenerationRequest)}
    unknown = sorted(set(payload) - known)
    if unknown:
        # A newer bot talking to an older worker: refuse rather than drop an option silently.
        raise ValueError(f"GenerationRequest has no field(s) {', '.join(unknown)}")
    values = dict(payload)
    for name in ("init_image", "mask_image"):
        if values.get(name) is not None:
            values[name] = ImageRef.from_json_value(values[name])
    if values.get("hires") is not None:
        values["hires"] = HiresFix(**values["hires"])
    if values.get("control") is not None:
        values["control"] = ControlUse.from_json_value(values["control"])
    if "loras" in values:
        values["loras"] = tuple(LoraUse(**use) for use in values["loras"])
    for name in ("seeds", "variation_seeds"):
        if name in values:
            values[name] = tuple(values[name])
    return GenerationRequest(**values)
