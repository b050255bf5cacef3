"""The aiohttp scaffolding every service shares: middlewares, health routes, the app skeleton."""

from __future__ import annotations

import asyncio
import faulthandler
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources

from aiohttp import web

from .auth import Authenticator, auth_middleware, public
from .health import add_health_routes, readiness_sampler
from .keys import DEPENDENCIES_KEY, READINESS_KEY, SAMPLING_KEY, SETTINGS_KEY
from .metrics import render_metrics
from .middlewares import cors_middleware, request_context_middleware
from .revocation import REVOCATIONS_KEY
from .sampling import MetricsSampling
from .settings import CommonSettings

log = logging.getLogger("rtc.web")


def client_ip(
    request: web.Request, trusted: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str:
    """The client's address; X-Forwarded-For is believed only when the peer is a trusted proxy."""
    networks = tuple(trusted)
    peer = request.remote or "unknown"

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    if not is_trusted(peer):
        return peer
    forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",")]
    forwarded = [part for part in forwarded if part]
    # Walk from the nearest hop outwards: the first untrusted address is the real client.
    for address in reversed(forwarded):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return peer
        if not is_trusted(address):
            return address
    return forwarded[0] if forwarded else peer


async def _stop_sampling(app: web.Application) -> None:
    await app[SAMPLING_KEY].stop()


async def _metrics(request: web.Request) -> web.Response:
    await request.app[SAMPLING_KEY].ensure_started()
    body, content_type = render_metrics()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def serve_openapi(app: web.Application, package: str, path: str) -> None:
    """Serve `package`'s openapi.json (read once, compacted) at `path`, without credentials."""
    document = json.loads(resources.files(package).joinpath("openapi.json").read_text())
    body = json.dumps(document, separators=(",", ":")).encode()

    @public
    async def get_openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(path, get_openapi)


# A graceful stop still running after this long logs what it is waiting for.
SLOW_SHUTDOWN_SECONDS = 8.0
AppCallback = Callable[[web.Application], Awaitable[None]]


def slow_shutdown_report(
    seconds: float = SLOW_SHUTDOWN_SECONDS,
) -> tuple[AppCallback, AppCallback]:
    """Diagnostics for a stop that hangs (a container then gets killed): armed first thing at
    shutdown, disarmed after the cleanup contexts; if still armed after `seconds` it
    logs the pending tasks and where each waits, and a few seconds later (in case the loop itself
    is stuck) faulthandler writes every thread's stack."""
    armed: list[asyncio.TimerHandle] = []

    def report() -> None:
        waiting = []
        for task in asyncio.all_tasks():
            frames = task.get_stack()
            where = f"{frames[-1].f_code.co_filename}:{frames[-1].f_lineno}" if frames else "?"
            name = getattr(task.get_coro(), "__qualname__", task.get_name())
            waiting.append(f"{name} at {where}")
        log.warning(
            "graceful stop still running",
            extra={"seconds": seconds, "tasks": sorted(waiting)[:50]},
        )

    async def arm(app: web.Application) -> None:
        armed.append(asyncio.get_running_loop().call_later(seconds, report))
        faulthandler.dump_traceback_later(seconds + 4, exit=False)

    async def disarm(app: web.Application) -> None:
        # on_cleanup callbacks added after Application() run after every cleanup context.
        if armed:
            armed.pop().cancel()
            faulthandler.cancel_dump_traceback_later()

    return arm, disarm


def create_base_app(
    settings: CommonSettings,
    authenticator: Authenticator | None = None,
    *,
    client_max_size: int = 64 * 1024,
) -> web.Application:
    """An application with the shared middlewares and /healthz, /readyz, /healthz/deps, /metrics.

    Services add their routes, dependencies (`keys.add_dependency`, required or not: see
    rtc_common.health) and cleanup contexts, `revocations_context` among them (the
    authenticator's revoked set).
    """
    authenticator = authenticator or Authenticator(settings)
    app = web.Application(
        middlewares=[
            request_context_middleware,
            cors_middleware(settings.allowed_origins, settings.csrf_header_name),
            auth_middleware(authenticator),
        ],
        client_max_size=client_max_size,
    )
    app[SETTINGS_KEY] = settings
    app[REVOCATIONS_KEY] = authenticator.revocations
    app[READINESS_KEY] = {}
    app[DEPENDENCIES_KEY] = {}
    app[SAMPLING_KEY] = MetricsSampling(samplers=[readiness_sampler(app)])
    arm_report, disarm_report = slow_shutdown_report()
    app.on_shutdown.insert(0, arm_report)
    app.on_shutdown.append(_stop_sampling)
    app.on_cleanup.append(disarm_report)
    add_health_routes(app)
    app.router.add_get("/metrics", _metrics)
    return app
