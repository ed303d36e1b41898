"""Job events to the front ends that subscribed for their platform, with progress throttled
per job and per chat (chat platforms limit how often a bot may edit messages in one chat)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from bot.core.events import EventHandler, EventKind, JobEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Subscriber:
    handler: EventHandler
    previews: bool


class EventBus:
    def __init__(
        self,
        progress_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        chat_interval: float = 1.0,
    ) -> None:
        self.progress_interval = progress_interval
        self.chat_interval = chat_interval
        self._clock = clock
        self._subscribers: dict[str, list[_Subscriber]] = {}
        self._last_progress: dict[int, float] = {}
        self._last_chat_progress: dict[tuple[str, str], float] = {}

    def subscribe(self, platform: str, handler: EventHandler, previews: bool = False) -> None:
        """`previews`: this front end shows live previews, so PROGRESS events carry them."""
        self._subscribers.setdefault(platform, []).append(_Subscriber(handler, previews))

    def has_subscribers(self, platform: str) -> bool:
        return bool(self._subscribers.get(platform))

    def wants_previews(self, platform: str) -> bool:
        return any(subscriber.previews for subscriber in self._subscribers.get(platform, ()))

    async def publish(self, event: JobEvent) -> bool:
        """True when every handler of the event's platform took it (so it counts as
        delivered); a handler that raises is logged and the event stays undelivered."""
        if event.kind is EventKind.PROGRESS and not self._progress_due(event):
            return False
        if event.is_final:
            self._last_progress.pop(event.job_id, None)
        subscribers = self._subscribers.get(event.origin.platform, [])
        delivered = bool(subscribers)
        for subscriber in subscribers:
            try:
                if event.preview is not None and not subscriber.previews:
                    await subscriber.handler(_without_preview(event))
                else:
                    await subscriber.handler(event)
            except Exception:  # a front end's failure must not stop the queue
                log.exception("Delivering %s of job %s failed", event.kind, event.job_id)
                delivered = False
        return delivered

    def _progress_due(self, event: JobEvent) -> bool:
        now = self._clock()
        chat = (event.origin.platform, event.origin.chat)
        last_job = self._last_progress.get(event.job_id)
        last_chat = self._last_chat_progress.get(chat)
        if last_job is not None and now - last_job < self.progress_interval:
            return False
        if last_chat is not None and now - last_chat < self.chat_interval:
            return False
        self._last_progress[event.job_id] = now
        self._last_chat_progress[chat] = now
        return True


def _without_preview(event: JobEvent) -> JobEvent:
    return replace(event, preview=None)
