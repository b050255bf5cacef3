"""Running a service process: settings, logging, the aiohttp runner. Used by each `__main__`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import uvloop
from aiohttp import web

from .logs import JsonAccessLogger, set_pseudonym_key, setup_logging
from .settings import CommonSettings, SettingsError, load_settings

SettingsT = TypeVar("SettingsT", bound=CommonSettings)
log = logging.getLogger("rtc.service")


def run_service(
    settings_cls: type[SettingsT],
    create_app: Callable[[SettingsT], web.Application],
    shutdown_timeout: float = 5.0,
) -> None:
    """`shutdown_timeout`: how long SIGTERM waits for in-flight requests before cancelling them."""
    try:
        settings = load_settings(settings_cls)
    except SettingsError as exc:
        # Fail fast and say which variable is wrong; values are never printed.
        print(f"{settings_cls.__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings.service_name, settings.log_level)
    key = settings.log_pseudonym_key
    set_pseudonym_key(key.get_secret_value().encode() if key is not None else None)
    log.info(
        "starting",
        extra={"host": settings.host, "port": settings.port, "eventLoop": settings.event_loop},
    )
    for message, variables in settings.startup_warnings():
        log.warning(message, extra={"variables": list(variables)})
    loop = uvloop.new_event_loop() if settings.event_loop == "uvloop" else asyncio.new_event_loop()
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log_class=JsonAccessLogger,
        access_log=logging.getLogger("rtc.access"),
        print=None,
        shutdown_timeout=shutdown_timeout,
        loop=loop,
    )


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
