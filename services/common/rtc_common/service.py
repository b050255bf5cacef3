"""Running a service process: settings, logging, the aiohttp runner. Used by each `__main__`."""

from __future__ import annotations

import asyncio
import gc
import logging
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
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log_class=JsonAccessLogger,
        access_log=logging.getLogger("rtc.access"),
        print=None,
        shutdown_timeout=shutdown_timeout,
        loop=loop,
    )
