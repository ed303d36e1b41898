"""Job events to the front ends that subscribed for their platform, with progress throttled."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bot.core.events import EventHandler, EventKind, JobEvent

log = logging.getLogger(__name__)


class EventBus:
    def __init__(
        self, progress_interval: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.progress_interval = progress_interval
        self._clock = clock
        self._handlers: dict[str, list[EventHandler]] = {}
        self._last_progress: dict[int, float] = {}

    def subscribe(self, platform: str, handler: EventHandler) -> None:
        self._handlers.setdefault(platform, []).append(handler)

    async def publish(self, event: JobEvent) -> bool:
        """True when every handler of the event's platform took it (so it counts as
        delivered); a handler that raises is logged and the event stays undelivered."""
        if event.kind is EventKind.PROGRESS and not self._progress_due(event.job_id):
            return False
        if event.is_final:
            self._last_progress.pop(event.job_id, None)
        handlers = self._handlers.get(event.origin.platform, [])
        delivered = bool(handlers)
        for handler in handlers:
            try:
                await handler(event)
            except Exception:  # a front end's failure must not stop the queue
                log.exception("Delivering %s of job %s failed", event.kind, event.job_id)
                delivered = False
        return delivered

    def _progress_due(self, job_id: int) -> bool:
        now = self._clock()
        last = self._last_progress.get(job_id)
        if last is not None and now - last < self.progress_interval:
            return False
        self._last_progress[job_id] = now
        return True
