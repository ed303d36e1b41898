"""The models folder (checkpoints, LoRAs, upscalers, ControlNet and face models, presets and the
files they name, the vocabulary override), the disk under the outputs folder, and the folders
Easel writes to."""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
from pathlib import Path

from bot.doctor.checks import GIB, Check, gib, nearest_existing
from bot.settings import Settings
from pipeline.errors import EaselError, first_line
from pipeline.folders import ModelFolders
from pipeline.presets import PRESETS_FILE_NAME, Preset, PresetFileError, load_presets

# Free space under the outputs folder: a grid and its four PNGs take a few MB.
DISK_FAIL_BELOW = 1 * GIB
DISK_WARN_BELOW = 10 * GIB
_TRUE = ("1", "ON", "YES", "TRUE")


def check_models_folder(settings: Settings) -> Check:
    root = settings.models_dir
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        return Check.fail(
            "models folder",
            f"EASEL_MODELS_DIR {root} {what}",
            f"mkdir -p {root / 'stable-diffusion'} and put a checkpoint there, or point "
            "EASEL_MODELS_DIR at your models folder (an AUTOMATIC1111 models/ folder works)",
        )
    return Check.ok("models folder", str(root))


def check_checkpoints(settings: Settings) -> Check:
    """The checkpoints here, and whether the bot can tell which one to load."""
    try:  # diffusers and torch: after the torch check says whether they import at all
        from pipeline.loading import (
            DEFAULT_HUB_MODEL,
            SeveralLocalModelsError,
            SourceKind,
            find_local_models,
            resolve_model,
        )
    except Exception as error:
        return Check.warn(
            "checkpoints",
            f"not checked: the model loader cannot be imported ({first_line(error)})",
            "fix the torch check first",
        )
    folder = (ModelFolders(settings.models_dir).checkpoints or [_checkpoint_folder(settings)])[0]
    local = find_local_models(settings.models_dir)
    names = ", ".join(source.name for source in local)
    try:
        source = resolve_model(settings.model, settings.models_dir)
    except SeveralLocalModelsError:
        return Check.fail(
            "checkpoints",
            f"{len(local)} in {folder} ({names}) and no EASEL_MODEL: the bot cannot pick one",
            f"set EASEL_MODEL to one of them in .env, e.g. EASEL_MODEL={local[0].name}",
        )
    except EaselError as error:
        return Check.fail(
            "checkpoints",
            f"EASEL_MODEL: {error}",
            "set EASEL_MODEL to a name `easel models` lists, a file path or a Hugging Face repo "
            "id; or leave it empty when there is one checkpoint",
        )
    if source.kind is not SourceKind.HUB:
        count = f"{len(local)} ({names})" if local else "none in the models folder"
        return Check.ok("checkpoints", f"{count}; the bot loads {source.name}")
    default = settings.model is None
    what = "no checkpoint in the models folder; the default" if default else "EASEL_MODEL"
    if hub_model_cached(source.location):
        return Check.ok("checkpoints", f"{what} {source.location} is in the Hugging Face cache")
    fix = (
        f"put a .safetensors checkpoint in {folder}, or set EASEL_MODEL to a checkpoint file "
        "or a Hugging Face repo id"
    )
    if hub_offline(settings):
        return Check.fail(
            "checkpoints",
            f"{what} {source.location} is not downloaded, and HF_HUB_OFFLINE forbids it",
            fix,
        )
    size = " (about 4 GB)" if source.location == DEFAULT_HUB_MODEL else ""
    return Check.warn(
        "checkpoints",
        f"{what} {source.location} is not downloaded: the bot downloads it{size} at its "
        "first start",
        fix,
    )


def _checkpoint_folder(settings: Settings) -> Path:
    return settings.models_dir / "stable-diffusion"


def hub_offline(settings: Settings) -> bool:
    return settings.hf_hub_offline or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def hub_model_cached(repo_id: str) -> bool:
    """Whether a Hugging Face repo is in the local hub cache (looked up, never downloaded)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def check_loras(settings: Settings) -> Check:
    folders = ModelFolders(settings.models_dir)
    if not folders.loras:
        return Check.ok(
            "LoRAs", f"none (optional: .safetensors LoRAs go in {settings.models_dir / 'lora'})"
        )
    where = ", ".join(str(folder) for folder in folders.loras)
    return Check.ok("LoRAs", f"{len(folders.lora_files())} in {where}")


def check_upscalers(settings: Settings) -> Check:
    """The upscaler models, and EASEL_UPSCALER naming one that is here."""
    files = ModelFolders(settings.models_dir).upscaler_files()
    wanted = (settings.upscaler or "").strip()
    if wanted and wanted.lower() != "lanczos":
        stems = {path.stem.lower() for path in files} | {path.name.lower() for path in files}
        if wanted.lower() not in stems:
            known = ", ".join(path.stem for path in files) or "none"
            return Check.fail(
                "upscalers",
                f"EASEL_UPSCALER={wanted} is not in the models folder (there: {known})",
                f"put {wanted}.pth in {settings.models_dir / 'upscale'}, or set EASEL_UPSCALER "
                "to one that is there (empty: the first, else Lanczos)",
            )
    if not files:
        return Check.ok(
            "upscalers",
            f"none: U buttons upscale with Lanczos (ESRGAN models go in "
            f"{settings.models_dir / 'upscale'})",
        )
    chosen = wanted or files[0].stem
    names = ", ".join(path.stem for path in files)
    return Check.ok("upscalers", f"{len(files)} ({names}); U buttons use {chosen}")


def check_toolbox(settings: Settings) -> Check:
    """What ControlNet, face restoration and SDXL's fp16 VAE will find (all optional)."""
    from pipeline.control_names import find_controlnets
    from pipeline.faces import find_face_restorers
    from pipeline.vae import find_fixed_vae

    models = settings.models_dir
    controlnets = [file.name for file in find_controlnets(models)]
    restorers = [file.name for file in find_face_restorers(models)]
    fixed_vae = find_fixed_vae(models)
    parts = [
        f"ControlNet: {', '.join(controlnets)}" if controlnets else "no ControlNet models",
        f"face restorers: {', '.join(restorers)}" if restorers else "no face restorers",
        f"fp16 VAE fix: {fixed_vae.name}" if fixed_vae else "no fp16-fixed SDXL VAE",
    ]
    if settings.inpaint_model:
        parts.append(f"zoom out and pan painted by {settings.inpaint_model}")
    if controlnets or restorers or fixed_vae:
        return Check.ok("toolbox", "; ".join(parts))
    return Check.ok(
        "toolbox",
        "; ".join(parts) + f" (optional: {models / 'ControlNet'}, {models / 'GFPGAN'}, "
        f"{models / 'Codeformer'}, {models / 'VAE'})",
    )


def check_presets(settings: Settings) -> list[Check]:
    """presets.toml, and one failed check per preset naming a LoRA file that is not here."""
    path = settings.models_dir / PRESETS_FILE_NAME
    try:
        presets = load_presets(settings.models_dir)
    except PresetFileError as error:
        return [
            Check.fail(
                "presets",
                str(error),
                f"fix {path}: until then the bot runs without presets (the README's LoRAs "
                "and presets section shows the format)",
            )
        ]
    if not presets.presets:
        return [Check.ok("presets", f"none ({path} does not exist)")]
    broken = [
        _missing_lora_check(preset, settings.models_dir)
        for preset in presets.presets
        if preset.missing_loras(settings.models_dir)
    ]
    if broken:
        return broken
    return [Check.ok("presets", f"{len(presets.presets)} in {path}, every LoRA file present")]


def _missing_lora_check(preset: Preset, models_dir: Path) -> Check:
    missing = preset.missing_loras(models_dir)
    folder = (ModelFolders(models_dir).loras or [models_dir / "lora"])[0]
    parts = []
    for use in missing:
        source = preset.source_of(use.name)
        parts.append(f"{use.name} (from {source})" if source else use.name)
    target = folder / f"{missing[0].name}.safetensors"
    return Check.fail(
        f"preset {preset.id}",
        f"needs LoRA file(s) not in {folder}: {', '.join(parts)}",
        f"save the file as {target}, or change the preset's `name` (and `source`) in "
        f"{models_dir / PRESETS_FILE_NAME}",
    )


def check_vocabulary(settings: Settings) -> Check:
    from pipeline.prompts.vocabulary import VocabularyStore

    store = VocabularyStore(settings.models_dir)
    store.current()
    if store.last_error is not None:
        return Check.fail(
            "vocabulary",
            f"{store.override_path} is not applied: {store.last_error}",
            f"fix or remove {store.override_path} (the packaged vocabulary is used until then)",
        )
    if store.override_path.is_file():
        return Check.ok("vocabulary", f"packaged, with {store.override_path}")
    return Check.ok("vocabulary", "packaged (no override file)")


def check_disk_space(settings: Settings) -> Check:
    folder = settings.outputs_dir
    usage = shutil.disk_usage(nearest_existing(folder))
    detail = f"{gib(usage.free)} free of {gib(usage.total)} under {folder}"
    fix = (
        "free space on that disk, or point EASEL_OUTPUTS_DIR at a larger one (a grid and its "
        "images take a few MB)"
    )
    if usage.free < DISK_FAIL_BELOW:
        return Check.fail("disk space", detail, fix)
    if usage.free < DISK_WARN_BELOW:
        return Check.warn("disk space", detail, fix)
    return Check.ok("disk space", detail)


def check_writable_folders(settings: Settings) -> list[Check]:
    """The folders Easel writes to: images, the hash and config cache, and SQLite's folder
    (its write-ahead log is a file beside the database)."""
    folders = [
        ("outputs", "EASEL_OUTPUTS_DIR", settings.outputs_dir),
        ("cache", "EASEL_CACHE_DIR", settings.cache_dir),
    ]
    database = _sqlite_path(settings.database_url)
    if database is not None:
        folders.append(("database", "DATABASE_URL", database.parent))
    return [
        check_writable(f"writable: {label}", variable, path) for label, variable, path in folders
    ]


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # the database check says so
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).absolute()


def check_writable(name: str, variable: str, folder: Path) -> Check:
    """Whether a file can be created in `folder` (or `folder` created where it would be)."""
    fix = (
        f"give the user running Easel ({_user()}) write access (chown/chmod), or point "
        f"{variable} at a folder it can write"
    )
    if folder.exists() and not folder.is_dir():
        return Check.fail(name, f"{folder} is a file, not a folder", fix)
    if not folder.exists():
        parent = nearest_existing(folder)
        if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
            return Check.ok(name, f"{folder} (created at first use, in {parent})")
        return Check.fail(name, f"{folder} does not exist and cannot be created in {parent}", fix)
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".easel-doctor-"):
            pass
    except OSError as error:
        return Check.fail(name, f"cannot write in {folder}: {error.strerror or error}", fix)
    return Check.ok(name, str(folder))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
