"""`easel worker`: a GPU worker for a bot running with EASEL_EXECUTOR=celery."""

from __future__ import annotations

from typing import Annotated

import typer

from bot.cli.common import _load_engine, err, operator_store
from bot.cli.output import ModelOption
from bot.cli.texts import bilingual
from bot.settings import Settings


def worker(
    device: Annotated[
        str | None,
        typer.Option(
            help=bilingual(
                "The device: cuda, cuda:1, cpu ...; default: EASEL_DEVICE.",
                "장치: cuda, cuda:1, cpu ... 기본: EASEL_DEVICE.",
            )
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            max=8,
            help=bilingual(
                "Batches run at once, each on its own copy of the model.",
                "동시에 실행할 배치 수(배치마다 모델을 한 벌씩 올립니다).",
            ),
        ),
    ] = 1,
    name: Annotated[
        str | None,
        typer.Option(
            help=bilingual(
                "This worker's name; default: EASEL_WORKER_NAME, else the host's.",
                "이 워커의 이름. 기본: EASEL_WORKER_NAME, 없으면 호스트 이름.",
            )
        ),
    ] = None,
    model: ModelOption = None,
) -> None:
    """Run a GPU worker: take batches from the bot through EASEL_BROKER_URL (Redis) and the
    shared database (DATABASE_URL), until Ctrl-C."""
    from bot.worker import serve_worker, worker_name

    settings = Settings()
    if not settings.broker_url:
        err.print(
            "easel worker needs EASEL_BROKER_URL: the Redis the bot uses "
            "(e.g. redis://10.0.0.5:6379/0)."
        )
        raise typer.Exit(2)
    if device is not None:
        settings = settings.model_copy(update={"device": device})
    label = worker_name(
        settings.model_copy(update={"worker_name": name or settings.worker_name}), device
    )
    store = operator_store(settings)
    try:
        engines = [_load_engine(settings, model, quiet=index > 0) for index in range(concurrency)]
        used = str(engines[0].model.pipe.device)
        serve_worker(settings, engines, store, label, used)
    finally:
        store.close()
