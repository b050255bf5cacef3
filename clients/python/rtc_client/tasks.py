"""The client's background tasks, so that close() can let them finish or cancel them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any

log = logging.getLogger("rtc_client")


class Tasks:
    def __init__(self) -> None:
        self._work: set[asyncio.Future[Any]] = set()
        self._timers: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Work worth finishing at close (telemetry, acks, closing connections)."""
        task = asyncio.ensure_future(coro)
        self._work.add(task)
        task.add_done_callback(self._done)

    def timer(self, coro: Coroutine[Any, Any, None]) -> None:
        """A wait that only matters while the client runs: cancelled at close."""
        task = asyncio.create_task(coro)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def close(self, grace: float = 5.0) -> None:
        for timer in list(self._timers):
            timer.cancel()
        if self._work:
            await asyncio.wait(list(self._work), timeout=grace)
        for task in list(self._work):
            task.cancel()

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._work.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background task failed", extra={"error": repr(task.exception())})
