"""The Celery application, configured the same way in the bot and in every worker.

A batch is one task, `easel.run`, whose id is the run id written in the jobs' rows. It is
sent to the queue of the worker the bot chose (`easel.worker.<name>`): the bot keeps the
fair scheduler and the affinity (a worker that already holds the checkpoint and LoRAs), so
Celery only carries the batch there. Late acknowledgement with one task prefetched means a
worker takes a batch only when it has a free engine, and a batch whose worker process dies is
not lost from the broker; that it never runs twice is the job rows' work (run ids and leases,
see worker.py), not the broker's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

RUN_TASK = "easel.run"
RESULT_SECONDS = 24 * 3600  # a report waits this long for a bot that restarted
# Kombu's Redis transport gives an unacknowledged task to another worker after this; the
# bot's leases find a dead worker long before, so this only has to outlast a long batch.
VISIBILITY_SECONDS = 12 * 3600


def worker_queue(name: str) -> str:
    return f"easel.worker.{name}"


def celery_app(broker_url: str, result_url: str | None = None) -> Celery:
    from celery import Celery

    app = Celery("easel", broker=broker_url, backend=result_url or broker_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_expires=RESULT_SECONDS,
        broker_transport_options={"visibility_timeout": VISIBILITY_SECONDS},
        result_backend_transport_options={"visibility_timeout": VISIBILITY_SECONDS},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Easel's log handler writes to the stderr of the moment: Celery's stand-in for it
        # would swallow every line logged while a task runs.
        worker_redirect_stdouts=False,
        worker_send_task_events=True,  # Flower shows the runs
        task_send_sent_event=True,
        task_default_queue="easel",
    )
    return app
