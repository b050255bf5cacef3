"""Stopping background tasks in bounded time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("rtc.service")


async def stop_task(task: asyncio.Task[Any], wait_seconds: float = 2.0) -> None:
    """Cancel a background task and wait for it, for at most `wait_seconds`.

    A graceful stop must end in bounded time: a cancellation can be lost (Python 3.11's
    `asyncio.wait_for` may return a result that completed at the moment of the cancel instead of
    raising), and an unbounded `await task` then holds the process until it is killed. Like
    `await task`, raises what the task itself raised; a task that ignores both cancels is left
    running (logged).
    """
    for _ in range(2):
        task.cancel()
        done, _pending = await asyncio.wait({task}, timeout=wait_seconds / 2)
        if done:
            if not task.cancelled():
                task.result()  # a failure of its own is raised, as `await task` would
            return
    log.warning("background task did not stop", extra={"task": task.get_name()})
