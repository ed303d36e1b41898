"""Finding and loading checkpoints: diffusers folders, A1111 single files, Hugging Face repos.

Local models never touch the network. Hub models download into the hub cache with a progress
bar; offline (`HF_HUB_OFFLINE=1`, or a hub that cannot be reached) a missing one is a
HubUnavailableError at once, never minutes of retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from transformers import CLIPTextModel

from pipeline.checkpoints import (
    check_unet_inputs,
    detect_family,
    is_v_prediction,
    read_checkpoint,
    read_shapes,
    write_config_folder,
)
from pipeline.device import DeviceChoice
from pipeline.errors import InvalidRequestError, ModelLoadError, first_line
from pipeline.families import SD1, SD2, ModelFamily, unsupported
from pipeline.folders import ModelFolders
from pipeline.tokenizer import build_clip_tokenizer

log = logging.getLogger(__name__)

DEFAULT_HUB_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


HUB_PROBE_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class HubUnavailableError(ModelLoadError):
    """A hub model that is not in the cache, while the hub cannot be used (offline)."""

    def __init__(self, repo_id: str, reason: str) -> None:
        self.repo_id = repo_id
        self.reason = reason
        super().__init__(f"{repo_id} is not in the Hugging Face cache and {reason}.")


class SeveralLocalModelsError(ModelLoadError):
    """No model was named and the models folder holds more than one checkpoint."""

    def __init__(self, models_dir: Path, names: list[str]) -> None:
        self.models_dir = models_dir
        self.names = names
        super().__init__(
            f"{len(names)} checkpoints in {models_dir} and none chosen; pick one by name: "
            f"{', '.join(names)}."
        )


class CheckpointSwitchError(InvalidRequestError):
    """A batch names a checkpoint that cannot be loaded; the one before stays loaded."""

    def __init__(self, name: str, kept: str | None, reason: str) -> None:
        self.name = name
        self.kept = kept
        stays = f"{kept!r} stays loaded" if kept else "no checkpoint is loaded"
        stays_ko = f"{kept!r}을(를) 계속 씁니다" if kept else "불러온 체크포인트가 없습니다"
        # The reason goes last: a chat shows the first 300 characters.
        super().__init__(
            f"The checkpoint {name!r} could not be loaded, so {stays}; an admin can choose "
            f"another one with `easel models use`. Why: {reason}",
            ko=f"체크포인트 {name!r}을(를) 불러올 수 없어 {stays_ko}. 관리자가 "
            f"`easel models use`로 다른 체크포인트를 고를 수 있습니다. 이유: {reason}",
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


@dataclass(frozen=True)
class CheckpointInfo:
    source: ModelSource
    family: str
    size_bytes: int
    short_hash: str | None


@dataclass
class LoadedModel:
    pipe: DiffusionPipeline
    family: ModelFamily
    source: ModelSource
    short_hash: str | None

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * self.pipe.vae_scale_factor


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


class HashCache:
    """A1111's short model hash (first 10 hex digits of the file's sha256), computed once.

    Entries are keyed by absolute path and invalidated when the size or mtime changes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def short_hash(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        entries = self._read()
        entry = entries.get(key)
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            return str(entry["sha256"])[:10]
        digest = sha256_of(file)
        entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self._write(entries)
        return digest[:10]

    def _read(self) -> dict[str, dict[str, int | str]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, entries: dict[str, dict[str, int | str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(handle, "w") as file:
            json.dump(entries, file, indent=1)
        Path(temporary).replace(self.path)


def sha256_of(file: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_local_models(models_dir: Path, hashes: HashCache) -> list[CheckpointInfo]:
    """What `easel models` lists: name, family, size and short hash of each local model."""
    infos = []
    for source in find_local_models(models_dir):
        path = Path(source.location)
        try:
            family = detect_local_family(source).label
        except ModelLoadError as error:
            family = f"not usable: {error}"
        if source.kind is SourceKind.SINGLE_FILE:
            size = path.stat().st_size
            short = hashes.short_hash(path)
        else:
            size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
            short = None
        infos.append(CheckpointInfo(source, family, size, short))
    return infos


def detect_local_family(source: ModelSource) -> ModelFamily:
    path = Path(source.location)
    if source.kind is SourceKind.SINGLE_FILE:
        return detect_family(read_shapes(path), path)
    return _folder_family(path)


def _folder_family(folder: Path) -> ModelFamily:
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
    if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
        raise unsupported("sdxl", where)
    check_unet_inputs(int(unet.get("in_channels", 4)), where)
    # OpenAI CLIP (SD 1.x) uses quick_gelu; OpenCLIP (SD 2.x) uses gelu.
    return SD1 if text.get("hidden_act") == "quick_gelu" else SD2


def load_model(
    source: ModelSource, device: DeviceChoice, cache_dir: Path, hashes: HashCache
) -> LoadedModel:
    """Load a model onto the device, ready for the engine."""
    if source.kind is SourceKind.SINGLE_FILE:
        pipe, family = _load_single_file(Path(source.location), device, cache_dir)
        short = hashes.short_hash(Path(source.location))
    else:
        folder = Path(source.location)
        if source.kind is SourceKind.HUB:
            folder = download_from_hub(source.location, device)
        family = _folder_family(folder)
        pipe = _load_folder(folder, family, device)
        short = None
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe=pipe, family=family, source=source, short_hash=short)


def weights_variant(folder: Path) -> str | None:
    """ "fp16" when the folder holds only `*.fp16.*` weights (as hub fp16 downloads do)."""
    unet = folder / "unet"
    if any(unet.glob("diffusion_pytorch_model.safetensors")) or any(unet.glob("*model.bin")):
        return None
    return "fp16" if any(unet.glob("*.fp16.*")) else None


def _load_folder(folder: Path, family: ModelFamily, device: DeviceChoice) -> DiffusionPipeline:
    try:
        pipe = family.txt2img_class.from_pretrained(
            str(folder),
            dtype=device.dtype,
            variant=weights_variant(folder),
            local_files_only=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(
            f"{folder} could not be loaded as a diffusers model: {first_line(error)}"
        ) from error
    return pipe.to(device.device)


def _load_single_file(
    path: Path, device: DeviceChoice, cache_dir: Path
) -> tuple[DiffusionPipeline, ModelFamily]:
    checkpoint = read_checkpoint(path)
    shapes = checkpoint.shapes
    family = detect_family(shapes, path)
    v_prediction = family is SD2 and is_v_prediction(path)
    config = write_config_folder(
        shapes, family, v_prediction, cache_dir / "single-file-configs" / _config_key(path)
    )
    state = checkpoint.tensors
    try:
        unet = UNet2DConditionModel.from_single_file(
            state,
            config=str(config),
            subfolder="unet",
            local_files_only=True,
            torch_dtype=device.dtype,
        )
        vae = AutoencoderKL.from_single_file(
            state,
            config=str(config),
            subfolder="vae",
            local_files_only=True,
            torch_dtype=device.dtype,
        )
        text_encoder = create_diffusers_clip_model_from_ldm(
            CLIPTextModel,
            state,
            subfolder="text_encoder",
            config=str(config),
            torch_dtype=device.dtype,
            local_files_only=True,
        )
    except (KeyError, ValueError, RuntimeError, OSError) as error:
        raise ModelLoadError(
            f"{path} looks like a {family.label} checkpoint but its tensors do not fit that "
            f"layout: {first_line(error)}"
        ) from error
    scheduler_class = _scheduler_class(config)
    pipe = family.txt2img_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(family.pad_token),
        unet=unet,
        scheduler=scheduler_class.from_pretrained(str(config), subfolder="scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe.to(device.device), family


def _scheduler_class(config: Path) -> type:
    import diffusers

    name = json.loads((config / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    return getattr(diffusers, name)


def _config_key(path: Path) -> str:
    stat = path.stat()
    raw = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{path.stem[:40]}-{hashlib.sha1(raw.encode()).hexdigest()[:12]}"


def download_from_hub(repo_id: str, device: DeviceChoice) -> Path:
    """The repo's folder in the hub cache, downloading it first (tqdm shows the progress).

    The cache is tried without the network first, so a cached model loads offline. Before a
    download, the repo's small config files are read to refuse unsupported models early.
    """
    from huggingface_hub import constants

    variants = ["fp16", None] if device.dtype == torch.float16 else [None]
    for variant in variants:
        cached = _hub_snapshot(repo_id, variant, local_only=True)
        if cached is not None:
            return cached
    if constants.HF_HUB_OFFLINE:
        raise HubUnavailableError(repo_id, "HF_HUB_OFFLINE is set")
    unreachable = hub_unreachable()
    if unreachable is not None:
        raise HubUnavailableError(repo_id, f"the hub cannot be reached ({unreachable})")
    _check_hub_family(repo_id)
    log.warning("Downloading %s from the Hugging Face hub into its cache.", repo_id)
    errors: list[str] = []
    for variant in variants:
        try:
            return _hub_snapshot(repo_id, variant, local_only=False)
        except (OSError, ValueError) as error:
            errors.append(first_line(error))
    raise ModelLoadError(f"Could not download {repo_id}: {errors[-1]}")


def hub_unreachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub's host cannot be reached, or None when it answers (or a proxy is set, which
    a direct connection cannot judge). One connection attempt instead of the hub client's
    retries, which take half a minute offline."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as error:
        return f"{host}: {first_line(error)}"


def _check_hub_family(repo_id: str) -> ModelFamily:
    from huggingface_hub import hf_hub_download

    configs = []
    try:
        for name in ("model_index.json", "text_encoder/config.json", "unet/config.json"):
            configs.append(json.loads(Path(hf_hub_download(repo_id, name)).read_text()))
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"{repo_id} could not be read from the Hugging Face hub (offline, a wrong repo id, "
            f"or a gated repo that needs a token?): {first_line(error)}"
        ) from error
    return family_from_configs(*configs, where=repo_id)


def _hub_snapshot(repo_id: str, variant: str | None, local_only: bool) -> Path | None:
    """The cached (or, unless `local_only`, downloaded) folder; None when not cached."""
    try:
        folder = DiffusionPipeline.download(
            repo_id,
            variant=variant,
            use_safetensors=True,
            local_files_only=local_only,
            safety_checker=None,  # never used: skip its 1.2 GB
            feature_extractor=None,
        )
    except (OSError, ValueError):
        if local_only:
            return None
        raise
    return Path(folder)


class ModelLoader:
    """Loads checkpoints by name for an engine that switches between them (`easel models
    use`): the models folder's checkpoints, plus the sources `remember` was given (the one
    the bot started with may be a path or a hub repo outside the folder)."""

    def __init__(
        self, models_dir: Path, device: DeviceChoice, cache_dir: Path, hashes: HashCache
    ) -> None:
        self.models_dir = models_dir
        self.device = device
        self.cache_dir = cache_dir
        self.hashes = hashes
        self._known: dict[str, ModelSource] = {}

    def remember(self, source: ModelSource) -> None:
        self._known[source.name] = source

    def source(self, name: str) -> ModelSource:
        """The checkpoint called `name`, checked from its headers (no weights read): a
        ModelLoadError when there is none or it is of a kind Easel cannot run."""
        source = self._known.get(name)
        if source is None:
            source = resolve_model(name, self.models_dir)
        if source.kind is not SourceKind.HUB:
            detect_local_family(source)
        return source

    def load(self, source: ModelSource) -> LoadedModel:
        loaded = load_model(source, self.device, self.cache_dir, self.hashes)
        self.remember(source)
        return loaded
