"""What several command groups share: the consoles, early settings, the model load."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

from pydantic import ValidationError
from rich.console import Console

from bot.settings import EarlySettings, Settings
from pipeline.checkpoint_names import ModelSource, SourceKind
from pipeline.errors import ModelLoadError
from pipeline.hub import HubUnavailableError

if TYPE_CHECKING:  # the engine imports torch and diffusers: slow for `easel --help`
    from bot.store import Store
    from pipeline.device import DeviceChoice
    from pipeline.engine import Engine
    from pipeline.loading import HashCache, LoadedModel


# Plain click help: flags show as `--tile`, options as `--n <int>`, not `--tile <bool>`.
HELP_STYLE = None

# Markup is off: prompts, paths and model names are printed as they are, brackets included.
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
# Piped into a file or a script, tables are not folded at 80 columns.
PIPED_WIDTH = 200
out = Console(
    soft_wrap=True,
    markup=False,
    highlight=False,
    width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH,
)


def early_settings() -> EarlySettings:
    """EASEL_LOG_LEVEL, EASEL_LOG_FORMAT, EASEL_DEBUG and HF_HUB_OFFLINE from the environment
    and `.env`; a bad value leaves the defaults here and is refused when the full settings are
    read."""
    try:
        return EarlySettings()
    except ValidationError:
        return EarlySettings.model_construct()


def export_hub_offline(settings: EarlySettings) -> None:
    """HF_HUB_OFFLINE from `.env` into the process environment, where huggingface_hub reads it
    (once, when it is imported: this runs before that)."""
    if settings.hf_hub_offline and "HF_HUB_OFFLINE" not in os.environ:
        os.environ["HF_HUB_OFFLINE"] = "1"


def _quiet_libraries() -> None:
    """The libraries' loading bars and warnings, unless a DEBUG log level asks for all."""
    from pipeline.quiet import quiet_libraries

    early = early_settings()
    # JSON logs are read by a program: no bars between their lines.
    quiet_libraries(early.logging_level() <= logging.DEBUG, bars=early.log_format == "text")


def _load_engine(
    settings: Settings,
    model: str | None,
    quiet: bool,
    locale: str | None = None,
    warm_up: bool = False,
) -> Engine:
    """The engine on the chosen checkpoint, with the configured acceleration; `warm_up` (the
    bot's start): with EASEL_COMPILE on, compile the sizes in use before the first job.

    A checkpoint that cannot be had (several local ones and none named, a hub model offline)
    is refused before the engine's libraries are imported, which takes seconds."""
    chosen = bool(model or settings.model)
    source = _model_source(settings, model)
    if source.kind is SourceKind.HUB:
        _require_hub_model(settings, source, chosen)
    with _collector_paused():
        engine = _build_engine(settings, source, chosen, quiet, locale)
    # Said after the collection that ends the pause, so that a Ctrl-C pressed once the model
    # shows as loaded never lands in an object's finalizer, where Python drops it.
    err.print(_model_line(engine, locale))
    if warm_up:
        engine.warm_up(settings.warmup_size_list())
    return engine


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while the engine's libraries import and the checkpoint loads:
    the collector would walk the growing heap again and again, a fifth of the start's time.
    What was loaded lives as long as the process, so it is frozen out of later collections
    (which then stay short in the bot) after one last one for the start's own garbage."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        if was_enabled:
            gc.enable()


def _build_engine(
    settings: Settings, source: ModelSource, chosen: bool, quiet: bool, locale: str | None
) -> Engine:
    _quiet_libraries()
    from bot.core.messages import Key, Message
    from bot.serve import console_locale
    from pipeline.acceleration import apply_cpu_threads
    from pipeline.batching import BatchMode, BatchShape
    from pipeline.device import choose_device
    from pipeline.engine import Engine
    from pipeline.loading import HashCache, ModelLoader

    language = locale or console_locale(None)
    device = choose_device(settings.device, settings.dtype)
    err.print(_device_line(device, language))
    apply_cpu_threads(settings.cpu_threads, device.device)
    hashes = HashCache(settings.cache_dir / "hashes.json")
    # A hub download draws its own progress bars, which a spinner would garble.
    spinner = not quiet and source.kind is not SourceKind.HUB
    loading = Message(Key.STARTUP_LOADING, {"model": source.name}).render(language)
    status = err.status(loading) if spinner else nullcontext()
    with status:
        loaded = _load_or_explain(settings, source, device, hashes, chosen)
    loader = ModelLoader(settings.models_dir, device, settings.cache_dir, hashes)
    loader.remember(source)  # a path or repo given at start can be switched back to by name
    return Engine(
        loaded,
        settings.limits(),
        batching=BatchShape(BatchMode(settings.batch_mode), settings.batch_rows),
        models_dir=settings.models_dir,
        loader=loader,
        acceleration=settings.acceleration(),
    )


def _model_line(engine: Engine, locale: str | None) -> str:
    from bot.core.messages import Key, Message
    from bot.serve import console_locale

    model = engine.model
    about = {"model": model.source.name, "family": model.family.label, "size": model.native_size}
    return Message(Key.STARTUP_MODEL, about).render(locale or console_locale(None))


def configured_model(settings: Settings, model: str | None) -> ModelSource | None:
    """The checkpoint --model or EASEL_MODEL names (or the only local one); None when that
    does not resolve (several local ones and none named)."""
    try:
        return _model_source(settings, model)
    except ModelLoadError:
        return None


def _model_source(settings: Settings, model: str | None) -> ModelSource:
    """The checkpoint to load; with none named and several here, a list to pick from."""
    from pipeline.checkpoint_names import SeveralLocalModelsError, resolve_model

    try:
        return resolve_model(model or settings.model, settings.models_dir)
    except SeveralLocalModelsError as error:
        raise ModelLoadError(
            f"{len(error.names)} checkpoints in {error.models_dir} and no EASEL_MODEL: pick one "
            f"with --model NAME or EASEL_MODEL=NAME. Checkpoints: {', '.join(error.names)}."
        ) from error


def _load_or_explain(
    settings: Settings,
    source: ModelSource,
    device: DeviceChoice,
    hashes: HashCache,
    chosen: bool,
) -> LoadedModel:
    """Load the model; offline without a local one, say where a checkpoint goes."""
    from pipeline.loading import load_model

    try:
        return load_model(source, device, settings.cache_dir, hashes)
    except HubUnavailableError as error:
        if chosen:
            raise
        raise _default_model_missing(settings, error) from error


def _require_hub_model(settings: Settings, source: ModelSource, chosen: bool) -> None:
    """The hub model is cached or can be downloaded; offline without it, say where a
    checkpoint goes."""
    from pipeline.hub import require_hub_model

    try:
        require_hub_model(source.location)
    except HubUnavailableError as error:
        if chosen:
            raise
        raise _default_model_missing(settings, error) from error


def _default_model_missing(settings: Settings, error: HubUnavailableError) -> ModelLoadError:
    """No model named and the default one cannot be had: where a local checkpoint goes."""
    folder = settings.models_dir / "stable-diffusion"
    return ModelLoadError(
        f"No checkpoint in {folder}, and the default model {error.repo_id} is not "
        f"downloaded and cannot be: {error.reason}. Put a .safetensors checkpoint in "
        f"{folder}, or set EASEL_MODEL (or --model) to a checkpoint file, folder or "
        "Hugging Face repo id."
    )


def _device_line(device: DeviceChoice, locale: str) -> str:
    """Where generation runs, in the user's language; the CPU is said to be slow."""
    from bot.core.messages import Key, Message

    dtype = str(device.dtype).removeprefix("torch.")
    if device.is_cpu:
        why = Key.STARTUP_CPU_CHOSEN if device.chosen_by_user else Key.STARTUP_NO_GPU
        return Message(Key.STARTUP_CPU, {"dtype": dtype, "why": Message(why)}).render(locale)
    name = str(device.device)
    if device.device.type == "cuda":
        import torch

        name = f"{device.device} ({torch.cuda.get_device_name(device.device)})"
    return Message(Key.STARTUP_DEVICE, {"device": name, "dtype": dtype}).render(locale)


def operator_store(settings: Settings | None = None) -> Store:
    """The bot's database for an operator's command, which may run beside the bot: never
    migrated here (an older bot may be running on it), and refused with what to do when it
    does not exist yet or is not at this version's revision."""
    from bot.store import Store, StoreError, missing_sqlite_file

    url = (settings or Settings()).database_url
    missing = missing_sqlite_file(url)
    if missing is not None:
        raise StoreError(
            f"No database yet ({missing} does not exist): start the bot or run "
            "`easel db upgrade` first."
        )
    store = Store(url)
    current, head = store.current(), store.head()
    if current != head:
        store.close()
        raise StoreError(
            f"The database {store.url} is at revision {current or 'none'} and this Easel "
            f"needs {head}: run `easel db upgrade`."
        )
    return store


def operator_name() -> str:
    """Who made a change from the command line, for the shared row's `changed_by`."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment
        return "cli"
