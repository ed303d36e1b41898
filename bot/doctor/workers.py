"""GPU workers (EASEL_EXECUTOR=celery): the broker answers, and which workers announce
themselves there, with what they hold. Only read; the broker's password is never printed."""

from __future__ import annotations

from bot.doctor.checks import Check
from bot.logs import masked_url
from bot.settings import Settings
from pipeline.errors import first_line

TIMEOUT_SECONDS = 3.0


def check_workers(settings: Settings) -> list[Check]:
    """No check with the local executor: there are no workers to look for."""
    if settings.executor != "celery" or not settings.broker_url:
        return []
    import redis

    from pipeline.executors.remote.channels import WORKERS_SET, WorkerInfo, worker_key

    shown = masked_url(settings.broker_url)
    client = redis.Redis.from_url(
        settings.broker_url,
        socket_connect_timeout=TIMEOUT_SECONDS,
        socket_timeout=TIMEOUT_SECONDS,
    )
    try:
        names = sorted(name.decode() for name in client.smembers(WORKERS_SET))
        values = client.mget([worker_key(name) for name in names]) if names else []
    except redis.RedisError as error:
        return [
            Check.fail(
                "GPU workers",
                f"cannot reach the broker {shown}: {first_line(error)}",
                "check EASEL_BROKER_URL (host, port, password) and that Redis runs and listens "
                "where this machine can reach it",
            )
        ]
    finally:
        client.close()
    workers = [WorkerInfo.from_json(value) for value in values if value is not None]
    if not workers:
        return [
            Check.warn(
                "GPU workers",
                f"the broker {shown} answers, but no worker announces itself there",
                "start `easel worker` on the GPU machines, with the same EASEL_BROKER_URL and "
                "DATABASE_URL",
            )
        ]
    about = "; ".join(
        f"{info.name} ({info.device}, {info.busy}/{info.slots} busy, "
        f"{', '.join(info.loaded) or 'nothing loaded'})"
        for info in workers
    )
    return [Check.ok("GPU workers", f"{len(workers)} through {shown}: {about}")]
