"""ControlNet models and preprocessors by name, and the checks on a job's ControlNet that need
no torch: what the bot checks before a job is queued (pipeline/control.py runs the models).

Models live in `models/ControlNet` (A1111's folder): diffusers folders (`config.json` beside
the weights) and single files (`.safetensors`, `.pth`, `.ckpt`; A1111's `control_model.` keys
or diffusers' own). A model fits a checkpoint when its cross-attention reads the checkpoint's
text width (768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL), read from its config or from the
file's header without loading a tensor.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.errors import InvalidRequestError
from pipeline.request import ControlMode, ControlUse

CONTROLNET_FOLDERS = ("ControlNet", "controlnet")
CONTROLNET_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
ANNOTATOR_FOLDER = "annotators"  # models/ControlNet/annotators: preprocessors' own weights
NO_PREPROCESSOR = "none"


@dataclass(frozen=True)
class Preprocessor:
    """A control-image preprocessor: its name, the word its models carry in their names, and
    the weights it needs under models/ControlNet/annotators (None: OpenCV alone)."""

    name: str
    model_word: str
    weights: str | None = None


PREPROCESSORS = {
    item.name: item
    for item in (
        Preprocessor("canny", "canny"),
        Preprocessor("lineart_standard", "lineart"),
        Preprocessor("invert", "lineart"),
        Preprocessor("binary", "scribble"),
        Preprocessor("tile", "tile"),
        Preprocessor("depth", "depth", weights="depth"),
        Preprocessor("openpose", "openpose", weights="openpose"),
        Preprocessor("lineart", "lineart", weights="lineart"),
    )
}
# The short words `--cn-mode` takes, and A1111's own names.
MODE_WORDS = {
    ControlMode.BALANCED: "balanced",
    ControlMode.PROMPT: "prompt",
    ControlMode.CONTROL: "control",
}
MODES = {
    **{word: mode for mode, word in MODE_WORDS.items()},
    **{mode.value.lower(): mode for mode in ControlMode},
}


@dataclass(frozen=True)
class ControlNetFile:
    name: str  # the file stem or folder name, what `--cn` calls it
    path: Path

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()


def find_controlnets(models_dir: Path) -> list[ControlNetFile]:
    """Every ControlNet in models/ControlNet: single files and diffusers folders."""
    found: dict[str, ControlNetFile] = {}
    for folder_name in CONTROLNET_FOLDERS:
        folder = models_dir / folder_name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name == ANNOTATOR_FOLDER:
                continue
            if path.is_dir() and (path / "config.json").is_file():
                found.setdefault(path.name.lower(), ControlNetFile(path.name, path))
            elif path.is_file() and path.suffix in CONTROLNET_SUFFIXES:
                found.setdefault(path.stem.lower(), ControlNetFile(path.stem, path))
    return sorted(found.values(), key=lambda item: item.name.lower())


def annotator_folder(models_dir: Path) -> Path:
    for folder_name in CONTROLNET_FOLDERS:
        if (models_dir / folder_name).is_dir():
            return models_dir / folder_name / ANNOTATOR_FOLDER
    return models_dir / CONTROLNET_FOLDERS[0] / ANNOTATOR_FOLDER


def context_width(file: ControlNetFile) -> int | None:
    """The text width the model's cross-attention reads; None when it cannot be told without
    loading it (a pickled .pth)."""
    if file.is_folder:
        try:
            config = json.loads((file.path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        width = config.get("cross_attention_dim")
        return int(width) if isinstance(width, int) else None
    if file.path.suffix != ".safetensors":
        return None
    for key, shape in _safetensors_shapes(file.path).items():
        if key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a .safetensors header (its first bytes), no tensor read."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(min(length, 100_000_000)))
    except (OSError, ValueError, struct.error):
        return {}
    return {
        key: value["shape"]
        for key, value in header.items()
        if isinstance(value, dict) and "shape" in value
    }


def resolve_control(use: ControlUse, models_dir: Path, text_width: int | None) -> ControlUse:
    """`use` with its model named exactly as its file is: a preprocessor's model is the first
    that carries the preprocessor's word and fits a checkpoint of `text_width`; refused
    clearly when none does, or when the named model does not fit. `text_width` None (no
    checkpoint loaded yet): the names alone are checked."""
    check_control_ranges(use)
    preprocessor = use.preprocessor.lower()
    if preprocessor != NO_PREPROCESSOR and preprocessor not in PREPROCESSORS:
        known = ", ".join([NO_PREPROCESSOR, *PREPROCESSORS])
        raise InvalidRequestError(
            f"No ControlNet preprocessor named {use.preprocessor!r}. Available: {known}.",
            ko=f"{use.preprocessor!r}(이)라는 ControlNet 전처리기가 없습니다. "
            f"쓸 수 있는 것: {known}",
        )
    if preprocessor in PREPROCESSORS:
        check_annotator(PREPROCESSORS[preprocessor], models_dir)
    available = find_controlnets(models_dir)
    if use.model:
        file = _named(use.model, available, models_dir)
        if not _fits(file, text_width):
            raise InvalidRequestError(
                f"The ControlNet {file.name} does not fit the loaded checkpoint (it was made "
                "for another model family).",
                ko=f"ControlNet {file.name}은(는) 불러온 체크포인트에 맞지 않습니다"
                "(다른 모델 계열용입니다).",
            )
    else:
        wanted = PREPROCESSORS.get(preprocessor)
        file = _for_preprocessor(wanted, available, text_width, models_dir)
    return replace(use, model=file.name, preprocessor=preprocessor)


def check_annotator(preprocessor: Preprocessor, models_dir: Path) -> None:
    """A preprocessor that needs weights has them."""
    if preprocessor.weights is None:
        return
    folder = annotator_folder(models_dir) / preprocessor.weights
    if not folder.is_dir():
        raise annotator_missing(preprocessor.name, folder)


def annotator_missing(name: str, folder: Path) -> InvalidRequestError:
    where = f"{folder.parent.parent.name}/{folder.parent.name}/{folder.name}"
    return InvalidRequestError(
        f"The {name} preprocessor needs its weights in {where}.",
        ko=f"{name} 전처리기에는 {where}에 가중치가 있어야 합니다.",
    )


def check_control_ranges(use: ControlUse) -> None:
    if not 0.0 <= use.weight <= 2.0:
        raise InvalidRequestError(
            f"The ControlNet weight must be between 0 and 2, not {use.weight:g}.",
            ko=f"ControlNet 가중치는 0에서 2 사이여야 합니다. 입력: {use.weight:g}",
        )
    if not 0.0 <= use.guidance_start < use.guidance_end <= 1.0:
        raise InvalidRequestError(
            "ControlNet's start and end are shares of the steps, 0 to 1, the start below the "
            f"end; not {use.guidance_start:g} and {use.guidance_end:g}.",
            ko="ControlNet 시작과 끝은 단계의 비율(0~1)이며 시작이 끝보다 작아야 합니다. "
            f"입력: {use.guidance_start:g}, {use.guidance_end:g}",
        )


def _named(name: str, available: list[ControlNetFile], models_dir: Path) -> ControlNetFile:
    wanted = name.strip().lower()
    for file in available:
        if wanted in (file.name.lower(), file.path.name.lower()):
            return file
    known = [*PREPROCESSORS, *(file.name for file in available)]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    hint_ko = f" {close[0]!r}을(를) 찾으셨나요?" if close else ""
    preprocessors = ", ".join(PREPROCESSORS)
    raise InvalidRequestError(
        f"No ControlNet preprocessor or model named {name!r}.{hint} Preprocessors: "
        f"{preprocessors}. {_listing(available, models_dir)}",
        ko=f"{name!r}(이)라는 ControlNet 전처리기나 모델이 없습니다.{hint_ko} 전처리기: "
        f"{preprocessors}. {_listing_ko(available, models_dir)}",
    )


def _for_preprocessor(
    preprocessor: Preprocessor | None,
    available: list[ControlNetFile],
    text_width: int | None,
    models_dir: Path,
) -> ControlNetFile:
    if preprocessor is None:
        raise InvalidRequestError(
            "A ready-made control map (preprocessor none) needs a ControlNet model by name: "
            f"--cn MODEL. {_listing(available, models_dir)}",
            ko="이미 만든 컨트롤 맵(전처리기 none)에는 ControlNet 모델 이름이 필요합니다: "
            f"--cn 모델이름. {_listing_ko(available, models_dir)}",
        )
    word = preprocessor.model_word
    matching = [file for file in available if word in file.name.lower()]
    for file in matching:
        if _fits(file, text_width):
            return file
    raise InvalidRequestError(
        f"No {word} ControlNet model for this checkpoint in "
        f"{models_dir.name}/{CONTROLNET_FOLDERS[0]}: its name must contain {word!r}. "
        f"{_listing(available, models_dir)}",
        ko=f"{models_dir.name}/{CONTROLNET_FOLDERS[0]}에 이 체크포인트에 맞는 {word} "
        f"ControlNet 모델이 없습니다. 이름에 {word!r}이(가) 들어가야 합니다. "
        f"{_listing_ko(available, models_dir)}",
    )


def _fits(file: ControlNetFile, text_width: int | None) -> bool:
    width = context_width(file) if text_width is not None else None
    return width is None or width == text_width


def _listing(available: list[ControlNetFile], models_dir: Path) -> str:
    if not available:
        return f"Put ControlNet models in {models_dir.name}/{CONTROLNET_FOLDERS[0]}."
    return "Available: " + ", ".join(file.name for file in available) + "."


def _listing_ko(available: list[ControlNetFile], models_dir: Path) -> str:
    if not available:
        return f"ControlNet 모델을 {models_dir.name}/{CONTROLNET_FOLDERS[0]}에 넣으세요."
    return "쓸 수 있는 것: " + ", ".join(file.name for file in available)


def control_key(use: ControlUse | None) -> str | None:
    """What jobs must share to run in one batch with this ControlNet: the model, the map's
    source (the image's bytes, by digest) and every setting; None without one."""
    if use is None:
        return None
    image = use.image
    # Stored uploads are named by their content's digest already.
    source = image.path or hashlib.sha256(image.data or b"").hexdigest()
    settings = (use.model, use.preprocessor, use.weight, use.guidance_start, use.guidance_end)
    return f"{source} {settings!r} {use.mode.value}"


def short_hash(file: ControlNetFile) -> str | None:
    """A1111's old 8-digit model hash (64 KiB at 1 MiB into the file), which its ControlNet
    extension writes beside the model's name; None for a folder or a small file."""
    if file.is_folder:
        return None
    try:
        with file.path.open("rb") as handle:
            handle.seek(0x100000)
            chunk = handle.read(0x10000)
    except OSError:
        return None
    return hashlib.sha256(chunk).hexdigest()[:8] if chunk else None


def control_parameters(use: ControlUse, model_hash: str | None) -> str:
    """The unit's A1111 parameters ("ControlNet 0"), in the extension's words and order."""
    model = f"{use.model} [{model_hash}]" if model_hash else use.model
    parts = [
        f"Module: {use.preprocessor}",
        f"Model: {model}",
        f"Weight: {use.weight:g}",
        "Resize Mode: Crop and Resize",
        f"Guidance Start: {use.guidance_start:g}",
        f"Guidance End: {use.guidance_end:g}",
        f"Control Mode: {use.mode.value}",
    ]
    return ", ".join(parts)
