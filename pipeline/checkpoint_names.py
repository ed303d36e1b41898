"""Checkpoints by name: what the models folder holds, which one a name means, and its family,
all read from file names, headers and configs, without torch or diffusers (pipeline/loading.py
loads the weights).

The bot checks jobs against a checkpoint by these names even where the weights are on other
machines (pipeline/preparation.py), and `easel models` lists them the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pipeline.checkpoints import check_unet_inputs, detect_family, read_shapes
from pipeline.errors import ModelLoadError, first_line
from pipeline.families import SD1, SD2, SDXL, ModelFamily
from pipeline.folders import ModelFolders

DEFAULT_HUB_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class SeveralLocalModelsError(ModelLoadError):
    """No model was named and the models folder holds more than one checkpoint."""

    def __init__(self, models_dir: Path, names: list[str]) -> None:
        self.models_dir = models_dir
        self.names = names
        super().__init__(
            f"{len(names)} checkpoints in {models_dir} and none chosen; pick one by name: "
            f"{', '.join(names)}."
        )


class SourceKind(StrEnum):
    DIFFUSERS_FOLDER = "diffusers"
    SINGLE_FILE = "single-file"
    HUB = "hub"


@dataclass(frozen=True)
class ModelSource:
    name: str  # what users call it: the file stem, the folder name or the repo id
    kind: SourceKind
    location: str  # a path, or a repo id for the hub


# What a checkpoint's files were like: (path inside it, mtime in ns, size) for each file.
CheckpointStamp = tuple[tuple[str, int, int], ...]


def checkpoint_stamp(source: ModelSource) -> CheckpointStamp:
    """The state of a checkpoint's files, to tell whether they changed since it was last
    tried: the file itself, or every file in a diffusers folder (weights added under unet/
    change it). Empty for the hub, and for a path that is not there."""
    if source.kind is SourceKind.HUB:
        return ()
    root = Path(source.location)
    files = sorted(root.rglob("*")) if root.is_dir() else [root]
    stamp: list[tuple[str, int, int]] = []
    for file in files:
        try:
            status = file.stat()
        except OSError:  # removed meanwhile, or a broken link
            continue
        if not file.is_dir():
            name = "." if file == root else str(file.relative_to(root))
            stamp.append((name, status.st_mtime_ns, status.st_size))
    return tuple(stamp)


def find_local_models(models_dir: Path) -> list[ModelSource]:
    """Checkpoints and diffusers folders under the models folder, sorted by name."""
    found: dict[str, ModelSource] = {}
    for folder in ModelFolders(models_dir).checkpoints:
        for entry in sorted(folder.rglob("*")):
            source = _source_for_path(entry, folder)
            if source is not None and source.location not in found:
                found[source.location] = source
    return sorted(found.values(), key=lambda source: source.name.lower())


def _source_for_path(entry: Path, root: Path) -> ModelSource | None:
    if entry.is_file() and entry.suffix in CHECKPOINT_SUFFIXES:
        if (entry.parent / "model_index.json").exists() or _inside_diffusers_folder(entry, root):
            return None
        return ModelSource(entry.stem, SourceKind.SINGLE_FILE, str(entry))
    if entry.is_dir() and (entry / "model_index.json").is_file():
        return ModelSource(entry.name, SourceKind.DIFFUSERS_FOLDER, str(entry))
    return None


def _inside_diffusers_folder(path: Path, root: Path) -> bool:
    for parent in path.parents:
        if parent == root or root not in parent.parents:
            return False
        if (parent / "model_index.json").exists():
            return True
    return False


def resolve_model(name: str | None, models_dir: Path) -> ModelSource:
    """Turn a model name, path or repo id into a source; None picks the default.

    The default is the only local checkpoint when there is exactly one, the SD 1.5 repo when
    there is none, and a SeveralLocalModelsError listing them when there are several.
    """
    local = find_local_models(models_dir)
    if name is None or name == "":
        if len(local) > 1:
            raise SeveralLocalModelsError(models_dir, [source.name for source in local])
        return local[0] if local else _hub(DEFAULT_HUB_MODEL)
    path = Path(name).expanduser()
    if path.exists():
        source = _source_for_path(path.resolve(), path.resolve().parent)
        if source is None:
            raise ModelLoadError(
                f"{path} is not a model: expected a .safetensors or .ckpt file, or a diffusers "
                "folder with a model_index.json."
            )
        return source
    for source in local:
        if name in (source.name, Path(source.location).name):
            return source
    lowered = name.lower()
    matches = [source for source in local if source.name.lower() == lowered]
    if len(matches) == 1:
        return matches[0]
    if _REPO_ID.match(name) and not name.endswith(CHECKPOINT_SUFFIXES):
        return _hub(name)
    known = ", ".join(source.name for source in local) or "none"
    raise ModelLoadError(
        f"No model named {name!r}. Local models in {models_dir}: {known}. "
        "Give a file stem, a path, or a Hugging Face repo id such as "
        f"{DEFAULT_HUB_MODEL}."
    )


def resolve_local_model(name: str, models_dir: Path) -> ModelSource:
    """The checkpoint of the models folder called `name` (as `easel models` lists it, case
    ignored where that is unambiguous), checked from its headers: a ModelLoadError naming
    the local checkpoints when there is none, or it is of a kind Easel cannot run."""
    local = find_local_models(models_dir)
    known = ", ".join(source.name for source in local) or "none"
    try:
        source = resolve_model(name, models_dir) if name.strip() else None
    except ModelLoadError:
        source = None
    if source is None or source not in local:
        raise ModelLoadError(
            f"No checkpoint named {name!r} in {models_dir}; the checkpoints there: {known}."
        )
    try:
        detect_local_family(source)
    except ModelLoadError as error:
        raise ModelLoadError(f"{source.name} cannot be used: {first_line(error)}") from error
    return source


def _hub(repo_id: str) -> ModelSource:
    return ModelSource(repo_id, SourceKind.HUB, repo_id)


def detect_local_family(source: ModelSource) -> ModelFamily:
    path = Path(source.location)
    if source.kind is SourceKind.SINGLE_FILE:
        return detect_family(read_shapes(path), path)
    return folder_family(path)


def folder_family(folder: Path) -> ModelFamily:
    try:
        index = json.loads((folder / "model_index.json").read_text())
        text = json.loads((folder / "text_encoder" / "config.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"{folder} is not a complete diffusers model folder ({error}); expected "
            "model_index.json, unet/config.json and text_encoder/config.json."
        ) from error
    return family_from_configs(index, text, unet, str(folder))


def family_from_configs(index: dict, text: dict, unet: dict, where: str) -> ModelFamily:
    check_unet_inputs(int(unet.get("in_channels", 4)), where)
    if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
        first_encoder = index.get("text_encoder") or [None]
        refiner = index.get("requires_aesthetics_score") or not any(first_encoder)
        if refiner or unet.get("addition_embed_type") != "text_time":
            raise ModelLoadError(
                f"{where} is an SDXL refiner (one text encoder, an aesthetic score); Easel runs "
                "SDXL base checkpoints and their fine-tunes."
            )
        return SDXL
    # OpenAI CLIP (SD 1.x) uses quick_gelu; OpenCLIP (SD 2.x) uses gelu.
    return SD1 if text.get("hidden_act") == "quick_gelu" else SD2


class CheckpointNames:
    """Checkpoints by name for whatever switches between them (`easel models use`): the models
    folder's, plus the sources `remember` was given (the one the bot started with may be a
    path or a hub repo outside the folder)."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._known: dict[str, ModelSource] = {}

    def remember(self, source: ModelSource) -> None:
        self._known[source.name] = source

    def find(self, name: str) -> ModelSource:
        """The checkpoint called `name`, by its name alone (nothing read): a ModelLoadError
        when there is none."""
        source = self._known.get(name)
        return source if source is not None else resolve_model(name, self.models_dir)

    def source(self, name: str) -> ModelSource:
        """The checkpoint called `name`, checked from its headers (no weights read): a
        ModelLoadError when there is none or it is of a kind Easel cannot run."""
        source = self.find(name)
        if source.kind is not SourceKind.HUB:
            detect_local_family(source)
        return source
