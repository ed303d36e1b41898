"""The fake Discord on its own thread and event loop, as Discord runs apart from the bot: for a
benchmark whose timestamps must not wait on the bot's loop, and for code that runs its own
`asyncio.run` (a CLI command)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from tests.fakes.discord import FakeDiscord, FakeDiscordSettings

T = TypeVar("T")
JOIN_TIMEOUT_S = 30.0


class FakeThread:
    """`async with FakeThread() as fakes:` a started fake (`fakes.fake`) on its own thread;
    `await fakes.call(fakes.fake.slash(...))` runs one of its coroutines there. Also usable
    without a running loop: `with FakeThread() as fakes:`."""

    def __init__(self, settings: FakeDiscordSettings | None = None) -> None:
        self.fake = FakeDiscord(settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-discord")

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = JOIN_TIMEOUT_S) -> T:
        """Run a coroutine on the fake's loop and wait for it (from a thread with no loop)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return await asyncio.wrap_future(future)

    def _start(self) -> None:
        self._thread.start()
        self.run(self.fake.start())

    def _stop(self) -> None:
        try:
            self.run(self.fake.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(JOIN_TIMEOUT_S)
            self._loop.close()
        if self.fake.internal_errors:
            raise AssertionError(f"the fake Discord failed: {self.fake.internal_errors}")

    def __enter__(self) -> FakeThread:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    async def __aenter__(self) -> FakeThread:
        self._thread.start()
        await self.call(self.fake.start())
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.call(self.fake.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, JOIN_TIMEOUT_S)
            self._loop.close()
