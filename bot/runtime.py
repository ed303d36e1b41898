"""Assembling the bot: settings -> database (migrated) -> engine -> executor -> job service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bot.core.bus import EventBus
from bot.core.config import DEFAULT_BATCH_IMAGES, CoreConfig
from bot.core.dispatcher import Dispatcher
from bot.core.service import JobService
from bot.core.sources import Sources
from bot.logs import SecretMask, configured_secrets, secrets_of
from bot.outputs import cleanup_orphans
from bot.settings import Settings
from bot.store import Role, Store
from pipeline.executors import Executor
from pipeline.text import clean_text

if TYPE_CHECKING:  # the engine imports torch and diffusers; front ends load without them
    from pipeline.engine import Engine


def core_config(settings: Settings, on_gpu: bool) -> CoreConfig:
    batch = settings.max_batch_images or DEFAULT_BATCH_IMAGES["gpu" if on_gpu else "cpu"]
    return CoreConfig(
        outputs_dir=settings.outputs_dir,
        models_dir=settings.models_dir,
        limits=settings.limits(),
        max_batch_images=batch,
        max_queued_per_user=settings.max_queued_per_user,
        max_running_per_user=settings.max_running_per_user,
        max_queue=settings.max_queue,
        daily_images=settings.daily_images,
        banned_words=settings.banned_word_list(),
        upscaler=settings.upscaler,
        inpaint_model=settings.inpaint_model,
        progress_interval=settings.progress_interval,
        # Never throttle a chat harder than a single job.
        progress_chat_interval=min(settings.progress_chat_interval, settings.progress_interval),
        shutdown_timeout=settings.shutdown_timeout,
    )


def open_store(settings: Settings, hold_bot_lock: bool = False) -> Store:
    """The database, with every migration applied.

    `hold_bot_lock`: claim the database for this bot process first (until `store.close()` or
    the process ends), so that a second bot on it stops with `BotAlreadyRunningError` before it
    migrates or touches a job; then remove the files a crash left under the outputs folder."""
    store = Store(settings.database_url, mask=failure_mask(settings))
    try:
        if hold_bot_lock:
            store.hold_bot_lock()
        store.upgrade()
        if hold_bot_lock:
            cleanup_orphans(store, settings.outputs_dir)
    except BaseException:
        store.close()
        raise
    return store


def failure_mask(settings: Settings) -> Callable[[str], str]:
    """What the store masks in a failed job's traceback and error: the logs' masking (the
    tokens and their secret halves, Bot API URLs, URL passwords, the database password)."""
    return SecretMask([*secrets_of(settings), *configured_secrets()]).mask


@dataclass
class Bot:
    service: JobService
    store: Store
    executor: Executor


def build_bot(
    settings: Settings,
    engine: Engine | None,
    store: Store,
    executor: Executor | None = None,
    default_model: str | None = None,
    native_size: int | None = None,
) -> Bot:
    """The job service on `engine`. Jobs are queued for the checkpoint an operator chose
    (`easel models use`), else `default_model` (the configured one; by default the one
    loaded now); the executor loads a batch's checkpoint before running it. A reload asked
    from another process (`easel presets reload`) re-reads presets.toml and the vocabulary.
    Without an engine (remote GPU workers run the jobs), `executor`, `default_model` and
    `native_size` (the default checkpoint's) are required."""
    if engine is None:
        assert executor is not None and default_model is not None and native_size is not None
    on_gpu = engine is None or engine.model.pipe.device.type != "cpu"
    config = replace(core_config(settings, on_gpu), lease_seconds=settings.lease_seconds)
    if executor is None:
        from pipeline.executors.local import LocalExecutor

        assert engine is not None
        executor = LocalExecutor(engine, settings.models_dir)
    bus = EventBus(config.progress_interval, chat_interval=config.progress_chat_interval)
    loaded = engine.model_name if engine is not None else None
    dispatcher = Dispatcher(store, executor, config, bus, loaded_model=loaded)
    sources = Sources(settings.models_dir)
    service = JobService(
        store,
        dispatcher,
        config,
        vocabulary=sources.vocabulary,
        presets=sources.presets,
        native_size=native_size or engine.model.native_size,  # type: ignore[union-attr]
        reload=sources.reload,
        default_model=default_model or loaded,
    )
    grant_admins(service, settings)
    return Bot(service, store, executor)


def build_remote_bot(settings: Settings, store: Store, model: str | None = None) -> Bot:
    """The job service with its batches run by GPU workers on other machines (`easel
    worker`, through EASEL_BROKER_URL): no weights here. Jobs are checked against their
    checkpoint's config and tokenizer files in this machine's models folder, and LoRA names
    against its `lora` folder and the files the workers announce. The default checkpoint is
    `model`, else EASEL_MODEL, else the only one in the models folder."""
    from pipeline.executors.preparer import OfflinePreparer
    from pipeline.executors.remote.executor import RemoteExecutor
    from pipeline.loading import resolve_model

    assert settings.broker_url is not None, "checked by Settings for EASEL_EXECUTOR=celery"
    source = resolve_model(model or settings.model, settings.models_dir)
    executor: RemoteExecutor | None = None

    def announced_loras() -> set[str]:
        return executor.lora_names() if executor is not None else set()

    preparer = OfflinePreparer(
        settings.models_dir, settings.limits(), announced_loras, default_model=source.name
    )
    preparer.remember(source)
    native_size = preparer.traits(source.name).native_size
    executor = RemoteExecutor(
        settings.broker_url,
        preparer,
        lease_seconds=settings.lease_seconds,
        max_bytes=settings.max_transfer_mb * 2**20,
        result_url=settings.result_url,
    )
    return build_bot(
        settings, None, store, executor, default_model=source.name, native_size=native_size
    )


def grant_admins(service: JobService, settings: Settings) -> None:
    """EASEL_ADMINS: the users who are admins from the start (more are made with
    `/admin role`). Listing is only ever a grant: removing someone from the setting leaves
    their stored role as it is. Called while the bot is assembled, before any event loop
    serves: the store is called directly."""
    store = service.store
    for platform, user_id in settings.admin_list():
        user = store.user(platform, clean_text(user_id))
        store.set_role(user.id, Role.ADMIN)
