"""Assembling the bot: settings -> database (migrated) -> engine -> executor -> job service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.core.bus import EventBus
from bot.core.config import DEFAULT_BATCH_IMAGES, CoreConfig
from bot.core.dispatcher import Dispatcher
from bot.core.events import UserRef
from bot.core.service import JobService
from bot.core.sources import Sources
from bot.logs import SecretMask, configured_secrets, secrets_of
from bot.outputs import cleanup_orphans
from bot.settings import Settings
from bot.store import Role, Store
from pipeline.executors import Executor

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
    engine: Engine,
    store: Store,
    executor: Executor | None = None,
    default_model: str | None = None,
) -> Bot:
    """The job service on `engine`. Jobs are queued for the checkpoint an operator chose
    (`easel models use`), else `default_model` (the configured one; by default the one
    loaded now); the executor loads a batch's checkpoint before running it. A reload asked
    from another process (`easel presets reload`) re-reads presets.toml and the vocabulary."""
    config = core_config(settings, engine.model.pipe.device.type != "cpu")
    if executor is None:
        from pipeline.executors.local import LocalExecutor

        executor = LocalExecutor(engine, settings.models_dir)
    bus = EventBus(config.progress_interval, chat_interval=config.progress_chat_interval)
    dispatcher = Dispatcher(store, executor, config, bus, loaded_model=engine.model_name)
    sources = Sources(settings.models_dir)
    service = JobService(
        store,
        dispatcher,
        config,
        vocabulary=sources.vocabulary,
        presets=sources.presets,
        native_size=engine.model.native_size,
        reload=sources.reload,
        default_model=default_model or engine.model_name,
    )
    grant_admins(service, settings)
    return Bot(service, store, executor)


def grant_admins(service: JobService, settings: Settings) -> None:
    """EASEL_ADMINS: the users who are admins from the start (more are made with
    `/admin role`). Listing is only ever a grant: removing someone from the setting leaves
    their stored role as it is."""
    for platform, user_id in settings.admin_list():
        service.grant_role(UserRef(platform, user_id), Role.ADMIN)
