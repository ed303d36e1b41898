"""A fake server (the fake Discord by default, or the fake Telegram) on its own thread and event
loop, as the real service runs apart from the bot: for a benchmark whose timestamps must not
wait on the bot's loop, and for code that runs its own `asyncio.run` (a CLI command)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from tests.fakes.discord import FakeDiscord, FakeDiscordSettings

T = TypeVar("T")
P = ParamSpec("P")
JOIN_TIMEOUT_S = 30.0


class ServedFake(Protocol):
    """What a fake server offers: started and closed on its loop, its own faults recorded."""

    internal_errors: list[Exception]

    async def start(self) -> None: ...

    async def close(self) -> None: ...


F = TypeVar("F", bound=ServedFake)


class FakeThread(Generic[F]):
    """`async with FakeThread() as fakes:` a started fake Discord (`fakes.fake`) on its own
    thread; `FakeThread(fake=FakeTelegram())` another fake. `await fakes.call(coroutine)` runs
    one of the fake's coroutines there (`fakes.fake.slash(...)`), `await fakes.do(function,
    ...)` one of its plain methods. Also usable without a running loop: `with FakeThread() as
    fakes:`."""

    @overload
    def __init__(
        self: FakeThread[FakeDiscord], settings: FakeDiscordSettings | None = None
    ) -> None: ...

    @overload
    def __init__(self, settings: None = None, *, fake: F) -> None: ...

    def __init__(self, settings: FakeDiscordSettings | None = None, *, fake: Any = None) -> None:
        self.fake = fake if fake is not None else FakeDiscord(settings)
        self._name = type(self.fake).__name__
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self._name)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = JOIN_TIMEOUT_S) -> T:
        """Run a coroutine on the fake's loop and wait for it (from a thread with no loop)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return await asyncio.wrap_future(future)

    async def do(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a plain function on the fake's loop: the fake's state changes there only (a
        scripted update wakes the long polls waiting on that loop)."""

        async def inside() -> T:
            return function(*args, **kwargs)

        return await self.call(inside())

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
            raise AssertionError(f"the {self._name} failed: {self.fake.internal_errors}")

    def __enter__(self) -> FakeThread[F]:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    async def __aenter__(self) -> FakeThread[F]:
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
