"""`easel worker`: a GPU worker that takes batches from the bot through Celery and Redis.

It holds the model weights (one engine per slot, on its own device), claims each batch's jobs
in the shared database under a lease it renews, runs them, and sends the images back through
Redis. It needs the same Redis and database as the bot, and its own models folder with the
checkpoints and LoRAs the jobs name; nothing else is shared.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.settings import Settings

if TYPE_CHECKING:
    from bot.store import Store
    from pipeline.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreLeases:
    """The job rows' side of a remote run (see pipeline/executors/remote/worker.py)."""

    store: Store

    def claim(
        self, run_id: str, job_ids: Sequence[int], worker: str, lease_seconds: float
    ) -> set[int]:
        return self.store.claim_run(run_id, job_ids, worker, lease_seconds)

    def renew(
        self, run_id: str, job_ids: Sequence[int], worker: str, lease_seconds: float
    ) -> set[int]:
        return self.store.renew_lease(run_id, job_ids, worker, lease_seconds)


def worker_name(settings: Settings, device: str | None) -> str:
    """EASEL_WORKER_NAME, else the host's name (with the device when one is named: two
    workers on one machine's two GPUs get two names)."""
    if settings.worker_name:
        return settings.worker_name
    host = socket.gethostname().split(".")[0] or "worker"
    if device and device not in ("auto", "cuda"):
        return f"{host}-{device.replace(':', '')}"
    return host


def serve_worker(
    settings: Settings, engines: Sequence[Engine], store: Store, name: str, device: str
) -> None:
    """Take batches until stopped (Ctrl-C or SIGTERM finish the running batch first)."""
    import redis
    from celery.exceptions import Ignore

    from pipeline.executors.local import LocalExecutor
    from pipeline.executors.remote.app import RUN_TASK, celery_app, worker_queue
    from pipeline.executors.remote.worker import RunDropped, WorkerNode
    from pipeline.loading import find_local_models
    from pipeline.lora_names import find_loras

    assert settings.broker_url is not None
    app = celery_app(settings.broker_url, settings.result_url)
    models_dir = settings.models_dir
    node = WorkerNode(
        name,
        redis.Redis.from_url(settings.broker_url),
        StoreLeases(store),
        [LocalExecutor(engine, models_dir) for engine in engines],
        device,
        models=lambda: [source.name for source in find_local_models(models_dir)],
        lora_files=lambda: [lora.name for lora in find_loras(models_dir)],
        max_bytes=settings.max_transfer_mb * 2**20,
    )

    @app.task(name=RUN_TASK)
    def run(order: str) -> str:
        try:
            return node.execute(order)
        except RunDropped as dropped:
            raise Ignore() from dropped

    node.start()
    log.info("Worker %s takes batches from %s", name, worker_queue(name))
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={len(engines)}",
                f"--queues={worker_queue(name)}",
                f"--hostname={name}@%h",
                f"--loglevel={logging.getLevelName(settings.logging_level())}",
                "--without-mingle",
                "--without-gossip",
            ]
        )
    finally:
        node.stop()
