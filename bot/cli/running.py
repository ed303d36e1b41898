"""`easel chat` and `easel run`: the bot, in this terminal or on its chat platforms."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli.common import _load_engine, _quiet_libraries, configured_model, err
from bot.cli.output import ModelOption
from bot.cli.texts import bilingual
from bot.logs import masked_url
from bot.settings import Settings
from pipeline.errors import ModelLoadError

if TYPE_CHECKING:
    from bot.runtime import Bot
    from bot.store import Store
    from pipeline.engine import Engine


def chat(
    lang: Annotated[
        str | None,
        typer.Option(
            help=bilingual("en or ko; default: from LANG.", "en 또는 ko. 기본: LANG에서.")
        ),
    ] = None,
    model: ModelOption = None,
    previews: Annotated[
        Path | None,
        typer.Option(
            help=bilingual(
                "Save each job's live preview in this folder (job-N.jpg).",
                "작업마다 실시간 미리보기를 이 폴더에 저장합니다 (job-N.jpg).",
            )
        ),
    ] = None,
) -> None:
    """Chat with the bot here: /imagine, /u 2, /v 3, /remix, /history, /help. Reads commands
    from stdin when it is not a terminal, and exits when input ends and its jobs are done."""
    import asyncio

    from bot.console.chat import previews_folder
    from bot.serve import console_locale, serve_console

    settings = Settings()
    if previews is not None:
        previews = previews_folder(previews)
    locale = console_locale(lang)
    bot = _open_bot(settings, model, locale)
    asyncio.run(serve_console(bot, settings, sys.stdin, sys.stdout, locale, previews))


def run(
    model: ModelOption = None,
    executor: Annotated[
        str | None,
        typer.Option(
            help=bilingual(
                "local (this machine's GPU) or celery (GPU workers started with `easel "
                "worker`); default: EASEL_EXECUTOR.",
                "local(이 컴퓨터의 GPU) 또는 celery(`easel worker`로 띄운 GPU 워커). "
                "기본: EASEL_EXECUTOR.",
            )
        ),
    ] = None,
    lang: Annotated[
        str | None,
        typer.Option(
            help=bilingual(
                "en or ko for the console and start-up lines.",
                "콘솔과 시작 메시지의 언어: en 또는 ko.",
            )
        ),
    ] = None,
) -> None:
    """Run the bot: Discord and/or Telegram when their tokens are set, else the console chat."""
    import asyncio

    from bot.core.messages import Key, Message
    from bot.serve import (
        console_locale,
        load_front_ends,
        serve_console,
        serve_front_ends,
        wanted_front_ends,
    )

    settings = Settings() if executor is None else Settings(executor=executor)
    front_ends = load_front_ends(wanted_front_ends(settings))
    for front_end in front_ends:  # a refused token stops here, before the model loads
        asyncio.run(front_end.check_token(settings))
    locale = console_locale(lang)
    if not front_ends:
        err.print(Message(Key.RUN_CONSOLE).render(locale))
    bot = _open_bot(settings, model, locale)
    if front_ends:
        asyncio.run(serve_front_ends(bot, settings, front_ends))
    else:
        asyncio.run(serve_console(bot, settings, sys.stdin, sys.stdout, locale))


def _remote_bot(settings: Settings, store: Store, model: str | None) -> Bot:
    """The bot without weights: GPU workers run its batches."""
    from bot.runtime import build_remote_bot

    _quiet_libraries()
    try:
        bot = build_remote_bot(settings, store, model)
    except BaseException:
        store.close()
        raise
    broker = masked_url(settings.broker_url or "")
    err.print(
        f"Batches go to GPU workers through {broker}: start them with `easel worker` on the "
        "GPU machines."
    )
    return bot


def _open_bot(settings: Settings, model: str | None, locale: str | None = None) -> Bot:
    """The bot on the checkpoint an operator chose with `easel models use` (kept across
    restarts), else the configured one."""
    from bot.runtime import build_bot, open_store

    store = open_store(settings, hold_bot_lock=True)
    chosen = store.control_state().model
    if settings.executor == "celery":
        return _remote_bot(settings, store, model)
    engine: Engine | None = None
    if chosen:
        try:
            engine = _load_engine(settings, chosen, quiet=False, locale=locale, warm_up=True)
        except ModelLoadError as error:
            err.print(
                f"The checkpoint chosen with `easel models use` ({chosen}) cannot be loaded: "
                f"{error} Loading the configured one; new jobs still ask for {chosen} until "
                "`easel models use` chooses another (or --default)."
            )
    if engine is None:
        engine = _load_engine(settings, model, quiet=False, locale=locale, warm_up=True)
    configured = configured_model(settings, model)
    if configured is not None and engine.loader is not None:
        engine.loader.remember(configured)  # `models use --default` may switch back to it
    default = configured.name if configured is not None else engine.model_name
    return build_bot(settings, engine, store, default_model=default)
