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
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from pipeline.checkpoint_names import (
    CHECKPOINT_SUFFIXES,
    DEFAULT_HUB_MODEL,
    CheckpointNames,
    CheckpointStamp,
    ModelSource,
    SeveralLocalModelsError,
    SourceKind,
    checkpoint_stamp,
    detect_local_family,
    family_from_configs,
    find_local_models,
    folder_family,
    resolve_local_model,
    resolve_model,
)
from pipeline.checkpoints import (
    detect_family,
    is_v_prediction,
    read_checkpoint,
    write_config_folder,
)
from pipeline.device import DeviceChoice
from pipeline.errors import InvalidRequestError, ModelLoadError, first_line
from pipeline.families import SD2, SDXL, ModelFamily
from pipeline.hub import HubUnavailableError, hub_unreachable, hub_unusable
from pipeline.tokenizer import OPEN_CLIP_PAD, build_clip_tokenizer

# Names found without torch (pipeline/checkpoint_names.py), kept importable from here.
__all__ = [
    "CHECKPOINT_SUFFIXES",
    "DEFAULT_HUB_MODEL",
    "CheckpointNames",
    "CheckpointStamp",
    "ModelSource",
    "SeveralLocalModelsError",
    "SourceKind",
    "checkpoint_stamp",
    "detect_local_family",
    "family_from_configs",
    "find_local_models",
    "resolve_local_model",
    "resolve_model",
]
__all__ += ["CheckpointInfo", "CheckpointSwitchError", "HashCache", "HubUnavailableError"]
__all__ += ["LoadedModel", "ModelLoader", "describe_local_models", "download_from_hub"]
__all__ += ["hub_unreachable", "load_model", "sha256_of", "weights_variant"]

log = logging.getLogger(__name__)


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
        family = folder_family(folder)
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
            **dict(family.pipeline_options),
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
        text_encoders = {
            name: create_diffusers_clip_model_from_ldm(
                model_class,
                state,
                subfolder=name,
                config=str(config),
                torch_dtype=device.dtype,
                local_files_only=True,
            )
            for name, model_class in _text_encoder_classes(family).items()
        }
    except (KeyError, ValueError, RuntimeError, OSError) as error:
        raise ModelLoadError(
            f"{path} looks like a {family.label} checkpoint but its tensors do not fit that "
            f"layout: {first_line(error)}"
        ) from error
    scheduler_class = _scheduler_class(config)
    tokenizers = {"tokenizer": build_clip_tokenizer(family.pad_token)}
    if family is SDXL:
        tokenizers["tokenizer_2"] = build_clip_tokenizer(OPEN_CLIP_PAD)  # OpenCLIP pads with "!"
    pipe = family.txt2img_class(
        vae=vae,
        unet=unet,
        scheduler=scheduler_class.from_pretrained(str(config), subfolder="scheduler"),
        **text_encoders,
        **tokenizers,
        **dict(family.pipeline_options),
    )
    return pipe.to(device.device), family


def _text_encoder_classes(family: ModelFamily) -> dict[str, type]:
    if family is SDXL:
        return {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
    return {"text_encoder": CLIPTextModel}


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
    variants = ["fp16", None] if device.dtype == torch.float16 else [None]
    for variant in variants:
        cached = _hub_snapshot(repo_id, variant, local_only=True)
        if cached is not None:
            return cached
    reason = hub_unusable()
    if reason is not None:
        raise HubUnavailableError(repo_id, reason)
    _check_hub_family(repo_id)
    log.warning("Downloading %s from the Hugging Face hub into its cache.", repo_id)
    errors: list[str] = []
    for variant in variants:
        try:
            return _hub_snapshot(repo_id, variant, local_only=False)
        except (OSError, ValueError) as error:
            errors.append(first_line(error))
    raise ModelLoadError(f"Could not download {repo_id}: {errors[-1]}")


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


class ModelLoader(CheckpointNames):
    """Loads checkpoints by name for an engine that switches between them (`easel models
    use`): finds them as CheckpointNames does, and loads them onto the device."""

    def __init__(
        self, models_dir: Path, device: DeviceChoice, cache_dir: Path, hashes: HashCache
    ) -> None:
        super().__init__(models_dir)
        self.device = device
        self.cache_dir = cache_dir
        self.hashes = hashes

    def load(self, source: ModelSource) -> LoadedModel:
        loaded = load_model(source, self.device, self.cache_dir, self.hashes)
        self.remember(source)
        return loaded
