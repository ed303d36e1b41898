"""The store's calls, run off the event loop: while the bot serves, a slow database (a busy
PostgreSQL, a SQLite file on a slow disk) must not stall the loop, whose chats, heartbeats
(Discord's gateway closes a connection that misses them) and progress messages it keeps.

Each `Store` has a small pool of its own threads (`Store.threads`). The bot's core awaits its
store work there (`await store.threads.run(store.job, 7)`); the operator's command line and
the workers, which have no loop to keep, call the store directly. Calls on the pool are short
transactions, each in its own session, so any thread may run any of them; one SQLite file
gets one thread (SQLite writes one transaction at a time, and a second thread would only wait
on its lock), other databases a few. A call's result, or its error, comes back to the awaiting
coroutine as if it had been called there.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
THREAD_NAME = "easel-store"
SQLITE_THREADS = 1
SERVER_THREADS = 4  # PostgreSQL, MySQL: a few queries may wait on the server at once


class StoreThreads:
    """A store's own threads; created empty (a thread starts at the first call), ended by
    `close` (the store's)."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=THREAD_NAME)

    async def run(self, call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`call(*args, **kwargs)` on one of the store's threads; the loop goes on meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    def close(self) -> None:
        """Let the calls under way finish, drop those not started, end the threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
