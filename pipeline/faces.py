"""Face restoration, as the AUTOMATIC1111 web UI's "Restore faces": find the faces in a finished
image, restore each with GFPGAN, CodeFormer or RestoreFormer, and paste them back.

What is whose:
- The networks are spandrel's: it recognises a GFPGAN or RestoreFormer checkpoint by its keys
  and builds the model. CodeFormer is in spandrel-extra-arches, spandrel's package for the
  architectures under restrictive licences (CodeFormer's is non-commercial): it is used where
  it is installed, added to a private copy of spandrel's registry so that the upscalers loaded
  elsewhere see no new architectures.
- The calls are ours, not spandrel's `ImageModelDescriptor.__call__`: all three networks were
  trained on faces in [-1, 1] and return [-1, 1] (as the GFPGAN and CodeFormer projects' own
  inference code normalises them), while spandrel's call passes its [0, 1] input straight to
  GFPGAN and CodeFormer (only its RestoreFormer call converts), and has no way to pass
  CodeFormer's fidelity weight. GFPGAN runs with its stored noise, so a face restores the same
  way every time.
- Detection, cropping and pasting are written here by hand: facexlib's RetinaFace and ParseNet
  would mean downloading weights at run time. OpenCV ships a Haar cascade that finds frontal
  faces with nothing to download; YuNet (`cv2.FaceDetectorYN`) is used instead when its ONNX
  file is in `models/facedetection`. Faces are not aligned by landmarks: each is cut as a square
  about twice the detector's box (the whole head, as GFPGAN's crops), resized to 512, restored,
  resized back and pasted through a mask that ramps smoothly to nothing at the crop's edges
  (no seam), so every pixel outside the crops is left exactly as it was.

torch, spandrel and OpenCV are imported where they are used: importing this module is cheap.
"""

from __future__ import annotations

import functools
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from pipeline.errors import GenerationOutOfMemory, InvalidRequestError, ModelLoadError, first_line

if TYPE_CHECKING:
    import torch
    from spandrel import ArchRegistry, ImageModelDescriptor

__all__ = ["CROP_SCALE", "FACE_ARCHITECTURES", "FACE_SIZE", "MIN_FACE_SIZE", "FaceBox"]
__all__ += ["FaceDetector", "FaceRestoration", "FaceRestorer", "FaceRestorerFile"]
__all__ += ["RestoresFaces", "UnknownFaceRestorerError", "clear_face_restorer_cache"]
__all__ += ["detect_faces", "face_crop", "face_restorer_file", "find_face_restorers"]
__all__ += ["load_face_restorer", "restore_faces"]

logger = logging.getLogger(__name__)

# A1111's folders: GFPGAN (also RestoreFormer, which A1111 has no folder of its own for) and
# Codeformer. Matched in any case, so `CodeFormer` works on case-sensitive file systems too.
FACE_RESTORER_FOLDERS = ("GFPGAN", "Codeformer")
FACE_RESTORER_SUFFIXES = (".pth", ".safetensors", ".ckpt")
# The weights facexlib downloads next to A1111's GFPGAN models (its RetinaFace detector and
# ParseNet face parser): not face restorers.
_HELPER_PREFIXES = ("detection_", "parsing_")
# spandrel's architecture ids, by the family words a user may give instead of a file name.
FACE_ARCHITECTURES = {
    "gfpgan": "GFPGAN",
    "codeformer": "CodeFormer",
    "restoreformer": "RestoreFormer",
}
DETECTION_FOLDER = "facedetection"
YUNET_PATTERN = "face_detection_yunet*.onnx"
HAAR_CASCADE = "haarcascade_frontalface_default.xml"

FACE_SIZE = 512  # what all three networks are trained on
MIN_FACE_SIZE = 24  # px: smaller detections are ignored (also the Haar cascade's window)
CROP_SCALE = 2.0  # crop side / the detector box's longer side: the whole head
FEATHER = 0.1  # the paste mask ramps over this fraction of the crop's side
YUNET_SCORE = 0.9  # OpenCV's own default for YuNet
DEFAULT_CODEFORMER_WEIGHT = 0.5  # A1111's default
# Cached networks, across every FaceRestorer; a GFPGAN or CodeFormer is 300-350 MB of weights.
CACHE_SIZE = 2

_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError)


class UnknownFaceRestorerError(ModelLoadError):
    """No face-restoration model file of that name (or family) in the models folder."""

    def __init__(self, message: str, available: Sequence[str]) -> None:
        super().__init__(message)
        self.available = tuple(available)


@dataclass(frozen=True)
class FaceRestorerFile:
    """A face-restoration model file: `name` is its stem, `folder` the models subfolder's name
    as it is on disk (`GFPGAN`, `Codeformer`)."""

    name: str
    path: Path
    folder: str


@dataclass(frozen=True)
class FaceBox:
    """A detected face, in image pixels. `score` is YuNet's confidence (0 to 1) or the Haar
    cascade's level weight (unbounded, higher is surer)."""

    x: int
    y: int
    width: int
    height: int
    score: float


@dataclass(frozen=True)
class FaceRestoration:
    """The image with its faces restored, and how many were."""

    image: Image.Image
    faces: int


class RestoresFaces(Protocol):
    """What `restore_faces` needs of a restorer (a FaceRestorer, or a stand-in)."""

    def restore(
        self, face: Image.Image, codeformer_weight: float = DEFAULT_CODEFORMER_WEIGHT
    ) -> Image.Image: ...


FaceDetector = Callable[[Image.Image], Sequence[FaceBox]]


# --- model files --------------------------------------------------------------------------


def find_face_restorers(models_dir: Path) -> list[FaceRestorerFile]:
    """Every face-restoration file in `models/GFPGAN` and `models/Codeformer`, by name."""
    wanted = {folder.lower() for folder in FACE_RESTORER_FOLDERS}
    if not models_dir.is_dir():
        return []
    files: list[FaceRestorerFile] = []
    for folder in sorted(models_dir.iterdir()):
        if not folder.is_dir() or folder.name.lower() not in wanted:
            continue
        for path in folder.rglob("*"):
            if path.suffix.lower() not in FACE_RESTORER_SUFFIXES or not path.is_file():
                continue
            if path.name.lower().startswith(_HELPER_PREFIXES):
                continue
            files.append(FaceRestorerFile(path.stem, path, folder.name))
    return sorted(files, key=lambda file: (file.name.lower(), str(file.path)))


def face_restorer_file(name: str, models_dir: Path) -> FaceRestorerFile:
    """The file named `name` (its stem or file name, any case), or for "gfpgan", "codeformer"
    or "restoreformer" the first file of that family: by file name, else by its architecture
    as spandrel detects it. Raises UnknownFaceRestorerError, listing what there is."""
    wanted = name.strip().lower()
    available = find_face_restorers(models_dir)
    for file in available:
        if wanted in (file.name.lower(), file.path.name.lower()):
            return file
    architecture = FACE_ARCHITECTURES.get(wanted)
    if architecture is not None:
        found = _first_of_family(wanted, architecture, available)
        if found is not None:
            return found
    names = [file.name for file in available]
    folders = " and ".join(f"{models_dir.name}/{folder}" for folder in FACE_RESTORER_FOLDERS)
    what = f"No {architecture} model" if architecture else f"No face restorer named {name!r}"
    raise UnknownFaceRestorerError(
        f"{what} in {folders}. Available: {', '.join(names) or 'none'} (or a family: "
        f"{', '.join(FACE_ARCHITECTURES)}). Put GFPGAN and RestoreFormer .pth or .safetensors "
        f"files in {models_dir.name}/GFPGAN and CodeFormer ones in {models_dir.name}/Codeformer.",
        names,
    )


def _first_of_family(
    word: str, architecture: str, files: list[FaceRestorerFile]
) -> FaceRestorerFile | None:
    for file in files:
        if word in file.name.lower():
            return file
    for file in files:
        if _architecture_of(file.path) == architecture:
            return file
    return None


def _architecture_of(path: Path) -> str | None:
    """The face architecture spandrel sees in a file's keys (read without its weights where the
    format allows: a safetensors header, a memory-mapped .pth), or None."""
    try:
        state = _keys_only(path)
    except Exception as error:  # any unreadable file is simply not a match
        logger.debug("Could not read the keys of %s: %s", path, first_line(error))
        return None
    from spandrel import canonicalize_state_dict

    state = canonicalize_state_dict(state)
    registry = _registry()
    for architecture in FACE_ARCHITECTURES.values():
        if architecture in registry and registry[architecture].architecture.detect(state):
            return architecture
    return None


def _keys_only(path: Path) -> dict[str, object]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            return dict.fromkeys(handle.keys())
    import torch

    loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError("not a state dict")
    return loaded


@functools.cache
def _registry() -> ArchRegistry:
    """spandrel's architectures, plus CodeFormer where spandrel-extra-arches is installed."""
    from spandrel import MAIN_REGISTRY

    registry = MAIN_REGISTRY.copy()
    try:
        from spandrel_extra_arches import EXTRA_REGISTRY
    except ImportError:
        return registry
    if "CodeFormer" not in registry:
        registry.add(EXTRA_REGISTRY["CodeFormer"])
    return registry


def _has_codeformer() -> bool:
    return "CodeFormer" in _registry()


# --- the networks -------------------------------------------------------------------------


class FaceRestorer:
    """A GFPGAN, CodeFormer or RestoreFormer network on one device, restoring 512x512 faces."""

    def __init__(
        self,
        file: FaceRestorerFile | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        import torch

        self.path = Path(file.path if isinstance(file, FaceRestorerFile) else file)
        self.device = torch.device(device)
        wanted = torch.float32 if dtype is None else dtype
        self._model = _load_cached(self.path.resolve(), _mtime(self.path), self.device, wanted)

    @property
    def name(self) -> str:
        """The file stem, as recorded in the image's parameters."""
        return self.path.stem

    @property
    def architecture(self) -> str:
        """spandrel's id: "GFPGAN", "CodeFormer" or "RestoreFormer"."""
        return self._model.architecture.id

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network runs in: the one asked for, or float32 where unsupported."""
        return self._model.dtype

    @property
    def network(self) -> torch.nn.Module:
        return self._model.model

    def restore(
        self, face: Image.Image, codeformer_weight: float = DEFAULT_CODEFORMER_WEIGHT
    ) -> Image.Image:
        """`face` restored. It should be a 512x512 crop; another size is resized to 512 and the
        result back. `codeformer_weight` is CodeFormer's fidelity (0: the most restoration,
        1: the closest to the input); the other networks have no such setting."""
        import torch

        _check_weight(codeformer_weight)
        size = face.size
        face = face.convert("RGB")
        if size != (FACE_SIZE, FACE_SIZE):
            face = face.resize((FACE_SIZE, FACE_SIZE), Image.Resampling.LANCZOS)
        pixels = np.asarray(face, dtype=np.float32) / 127.5 - 1.0
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
        out_of_memory = False
        try:
            with torch.inference_mode():
                output = self._forward(tensor.to(self.device, self.dtype), codeformer_weight)
                array = (
                    output[0].float().add(1).mul(127.5).clamp(0, 255).round().byte().cpu()
                ).permute(1, 2, 0)
        except torch.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:
            # Outside the except block, so the traceback's tensors are freed before emptying.
            _empty_device_cache(self.device)
            raise GenerationOutOfMemory(
                f"The GPU ran out of memory restoring a face with {self.name}."
            )
        restored = Image.fromarray(array.numpy(), "RGB")
        if size != restored.size:
            restored = restored.resize(size, Image.Resampling.LANCZOS)
        return restored

    def _forward(self, pixels: torch.Tensor, codeformer_weight: float) -> torch.Tensor:
        """The network's image for `pixels` (1, 3, 512, 512, in [-1, 1]), in [-1, 1]."""
        network = self._model.model
        if self.architecture == "GFPGAN":
            # No intermediate RGB outputs; the noise stored in the checkpoint, not fresh noise.
            return network(pixels, return_rgb=False, randomize_noise=False)[0]
        if self.architecture == "CodeFormer":
            return network(pixels, weight=float(codeformer_weight))[0]
        return network(pixels)[0]


def load_face_restorer(
    file: FaceRestorerFile | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> FaceRestorer:
    """The restorer in `file`, loaded (or taken from the cache) on `device` in `dtype`
    (float32 when None). A file spandrel loads as anything but a face restorer is refused
    (ModelLoadError)."""
    return FaceRestorer(file, device, dtype)


def clear_face_restorer_cache() -> None:
    """Drop every cached network, e.g. to give its memory back to generation."""
    _load_cached.cache_clear()


# The modification time is part of the key so that a replaced file is loaded again.
@functools.lru_cache(maxsize=CACHE_SIZE)
def _load_cached(
    path: Path, mtime_ns: int, device: torch.device, dtype: torch.dtype
) -> ImageModelDescriptor:
    model = _load_descriptor(path, device)
    return model.to(_supported_dtype(model, dtype)).eval()


def _load_descriptor(path: Path, device: torch.device) -> ImageModelDescriptor:
    from safetensors import SafetensorError
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        model = ModelLoader(device, registry=_registry()).load_from_file(path)
    except (*_LOAD_ERRORS, SafetensorError, UnsupportedModelError) as error:
        detail = first_line(error)
        if isinstance(error, UnsupportedModelError):
            detail = "not a model architecture spandrel knows (GFPGAN, CodeFormer, RestoreFormer)"
            if not _has_codeformer():
                detail += "; CodeFormer models also need the spandrel-extra-arches package"
        raise ModelLoadError(
            f"{path.name} could not be loaded as a face restorer: {detail}"
        ) from error
    architecture = model.architecture.id
    if not isinstance(model, ImageModelDescriptor) or architecture not in _FACE_IDS:
        kind = {"SR": "an upscaler", "Restoration": "an image restoration model"}
        raise ModelLoadError(
            f"{path.name} is {kind.get(model.purpose, 'a model')} ({architecture}), not a face "
            f"restorer ({', '.join(_FACE_IDS)}); only those go in "
            f"{' or '.join(FACE_RESTORER_FOLDERS)}."
        )
    return model


_FACE_IDS = tuple(FACE_ARCHITECTURES.values())


def _supported_dtype(model: ImageModelDescriptor, dtype: torch.dtype) -> torch.dtype:
    import torch

    from pipeline.upscale import supported_dtype

    if model.architecture.id == "CodeFormer":
        # spandrel says bfloat16, but its codebook lookup multiplies in float32 and fails.
        return torch.float32
    return supported_dtype(model, dtype)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError as error:
        raise ModelLoadError(
            f"Face restorer {path.name} is unreadable: {first_line(error)}"
        ) from error


def _check_weight(weight: float) -> None:
    if isinstance(weight, bool) or not 0.0 <= weight <= 1.0:
        raise InvalidRequestError(
            f"The CodeFormer weight must be between 0 and 1, not {weight}.",
            ko=f"CodeFormer 가중치는 0에서 1 사이여야 합니다. 입력: {weight}",
        )


def _empty_device_cache(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


# --- detection ----------------------------------------------------------------------------


def detect_faces(image: Image.Image, models_dir: Path | None = None) -> list[FaceBox]:
    """The faces in `image`, largest first, none smaller than MIN_FACE_SIZE: YuNet's where
    `models_dir/facedetection` has its ONNX file (and it loads), else the Haar cascade's."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    yunet = _yunet_file(models_dir) if models_dir is not None else None
    boxes: list[FaceBox] | None = None
    if yunet is not None:
        try:
            boxes = _detect_yunet(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), yunet)
        except cv2.error as error:
            logger.warning(
                "%s could not be used (%s); detecting faces with OpenCV's Haar cascade.",
                yunet.name,
                first_line(error),
            )
    if boxes is None:
        boxes = _detect_haar(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    boxes = [box for box in boxes if min(box.width, box.height) >= MIN_FACE_SIZE]
    return sorted(boxes, key=lambda box: (-box.width * box.height, -box.score))


def _yunet_file(models_dir: Path) -> Path | None:
    if not models_dir.is_dir():
        return None
    candidates = [
        path
        for folder in models_dir.iterdir()
        if folder.is_dir() and folder.name.lower() == DETECTION_FOLDER
        for path in folder.glob(YUNET_PATTERN)
        if path.is_file()
    ]
    # The newest release (the date is in the name), full precision before int8.
    return max(candidates, key=lambda p: ("int8" not in p.name, p.name), default=None)


def _detect_yunet(bgr: np.ndarray, model: Path) -> list[FaceBox]:
    import cv2

    height, width = bgr.shape[:2]
    detector = cv2.FaceDetectorYN.create(str(model), "", (width, height), YUNET_SCORE)
    _, faces = detector.detect(bgr)
    if faces is None:
        return []
    boxes: list[FaceBox] = []
    # Each row: x, y, width, height, five landmarks (x, y), score.
    for row in faces:
        left, top = max(0, round(row[0])), max(0, round(row[1]))
        right = min(width, round(row[0] + row[2]))
        bottom = min(height, round(row[1] + row[3]))
        if right > left and bottom > top:
            boxes.append(FaceBox(left, top, right - left, bottom - top, float(row[14])))
    return boxes


def _detect_haar(gray: np.ndarray) -> list[FaceBox]:
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_CASCADE)
    if cascade.empty():
        raise ModelLoadError(f"OpenCV's {HAAR_CASCADE} is missing from its data folder.")
    found, _, weights = cascade.detectMultiScale3(
        cv2.equalizeHist(gray),
        scaleFactor=1.1,
        minNeighbors=5,
        minSize=(MIN_FACE_SIZE, MIN_FACE_SIZE),
        outputRejectLevels=True,
    )
    return [
        FaceBox(int(x), int(y), int(w), int(h), float(weight))
        for (x, y, w, h), weight in zip(found, weights, strict=True)
    ]


# --- cropping and pasting -----------------------------------------------------------------


@dataclass(frozen=True)
class _Crop:
    """A square around a face, `side` pixels from (left, top); it may reach outside the image."""

    left: int
    top: int
    side: int


def face_crop(box: FaceBox, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The part of the image (left, top, right, bottom) that restoring `box` may change in a
    `width` x `height` image, or None where the crop misses the image."""
    crop = _crop_for(box)
    left, top = max(crop.left, 0), max(crop.top, 0)
    right, bottom = min(crop.left + crop.side, width), min(crop.top + crop.side, height)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def _crop_for(box: FaceBox) -> _Crop:
    side = max(2, round(max(box.width, box.height) * CROP_SCALE))
    left = round(box.x + box.width / 2 - side / 2)
    top = round(box.y + box.height / 2 - side / 2)
    return _Crop(left, top, side)


def restore_faces(
    image: Image.Image,
    restorer: RestoresFaces,
    models_dir: Path,
    codeformer_weight: float = DEFAULT_CODEFORMER_WEIGHT,
    detector: FaceDetector | None = None,
) -> FaceRestoration:
    """`image` with each face found (by `detector`, else `detect_faces`) restored and pasted
    back. Pixels outside every face's crop are unchanged; an image without faces comes back
    as it was (the same object) with `faces == 0`. Transparency is kept."""
    _check_weight(codeformer_weight)
    boxes = list(detector(image)) if detector is not None else detect_faces(image, models_dir)
    width, height = image.size
    regions = [(box, face_crop(box, width, height)) for box in boxes]
    regions = [(box, region) for box, region in regions if region is not None]
    if not regions:
        return FaceRestoration(image, 0)
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    alpha = image.convert("RGBA").getchannel("A") if has_alpha else None
    pixels = np.array(image.convert("RGB"))
    for box, region in regions:
        crop = _crop_for(box)
        face = Image.fromarray(_cut(pixels, crop, region))
        if crop.side != FACE_SIZE:
            face = face.resize((FACE_SIZE, FACE_SIZE), Image.Resampling.LANCZOS)
        restored = restorer.restore(face, codeformer_weight).convert("RGB")
        if restored.size != (crop.side, crop.side):
            restored = restored.resize((crop.side, crop.side), Image.Resampling.LANCZOS)
        _paste(pixels, np.asarray(restored), crop, region)
    result = Image.fromarray(pixels, "RGB")
    if alpha is not None:
        result.putalpha(alpha)
    return FaceRestoration(result, len(regions))


def _cut(pixels: np.ndarray, crop: _Crop, region: tuple[int, int, int, int]) -> np.ndarray:
    """The crop's square of `pixels`; where it reaches past the image, the image reflected."""
    left, top, right, bottom = region
    inside = pixels[top:bottom, left:right]
    before_y, before_x = top - crop.top, left - crop.left
    after_y = crop.top + crop.side - bottom
    after_x = crop.left + crop.side - right
    if before_y or before_x or after_y or after_x:
        widths = ((before_y, after_y), (before_x, after_x), (0, 0))
        inside = np.pad(inside, widths, mode="reflect" if min(inside.shape[:2]) > 1 else "edge")
    return inside


def _paste(
    pixels: np.ndarray, restored: np.ndarray, crop: _Crop, region: tuple[int, int, int, int]
) -> None:
    """Blend `restored` (the crop's square) into `pixels` over the region, in place."""
    left, top, right, bottom = region
    height, width = pixels.shape[:2]
    feather = max(1.0, crop.side * FEATHER)
    # No ramp on a side where the crop was cut by the image's edge: no pixel there to meet.
    rows = _ramp(bottom - top, feather, top > 0, bottom < height)
    columns = _ramp(right - left, feather, left > 0, right < width)
    mask = (rows[:, None] * columns[None, :])[:, :, None]
    ours = restored[top - crop.top : bottom - crop.top, left - crop.left : right - crop.left]
    theirs = pixels[top:bottom, left:right].astype(np.float32)
    blended = theirs + (ours.astype(np.float32) - theirs) * mask
    pixels[top:bottom, left:right] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _ramp(size: int, feather: float, start: bool, end: bool) -> np.ndarray:
    """Weights along one side of the region: 1 in the middle, easing (smoothstep) to near 0
    over `feather` pixels at each end that `start`/`end` asks for."""
    position = np.arange(size, dtype=np.float32) + 0.5
    weight = np.ones(size, dtype=np.float32)
    if start:
        weight = np.minimum(weight, position / feather)
    if end:
        weight = np.minimum(weight, (size - position) / feather)
    weight = np.clip(weight, 0.0, 1.0)
    return weight * weight * (3.0 - 2.0 * weight)
