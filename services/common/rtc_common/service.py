"""Running a service process: settings, logging, the aiohttp runner. Used by each `__main__`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import uvloop
from aiohttp import web

from .logs import JsonAccessLogger, set_pseudonym_key, setup_logging
from .settings import CommonSettings, SettingsError, load_settings

SettingsT = TypeVar("SettingsT", bound=CommonSettings)
log = logging.getLogger("rtc.service")


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Once everything is imported and built: move those objects out of the collector's reach.

    Otherwise the first full collection under load walks every module, model and client made at
    start-up, a pause of tens of milliseconds in the middle of traffic (gunicorn advises the same
    for preloaded apps).
    """
    gc.collect()
    gc.freeze()


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
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)
    asyncio.set_event_loop(loop)
    task = loop.create_task(_serve(app, settings.host, settings.port, shutdown_timeout))
    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
        loop.run_until_complete(task)  # until SIGTERM or SIGINT; the graceful stop follows
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)  # the runner's cleanup: every cleanup context
    if not task.cancelled():
        task.result()  # a failure of the start or of the stop exits non-zero, with its traceback
    # The stop is complete. The loop is not closed: uvloop's close waits for every libuv request
    # still in flight (a DNS lookup the Redis client already gave up on), which once held a
    # stopping replica until it was killed; nothing is left to release.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def _serve(app: web.Application, host: str, port: int, shutdown_timeout: float) -> None:
    """aiohttp's run_app without its final loop teardown: serve until a signal, then clean up."""
    runner = web.AppRunner(
        app,
        handle_signals=True,  # SIGTERM/SIGINT raise GracefulExit out of the loop
        access_log_class=JsonAccessLogger,
        access_log=logging.getLogger("rtc.access"),
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
