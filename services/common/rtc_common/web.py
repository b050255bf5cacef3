"""The aiohttp scaffolding every service shares: middlewares, health routes, the app skeleton."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from .auth import Authenticator, auth_middleware, public
from .context import request_id_var
from .errors import ApiError, error_body, error_response
from .metrics import HTTP_LATENCY, HTTP_REQUESTS, READY, READY_CHECK, labelled, render_metrics
from .service import stop_task
from .settings import CommonSettings

log = logging.getLogger("rtc.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadinessCheck = Callable[[], Awaitable[None]]
# A gauge refresher run in the background (see `MetricsSampling`).
Sampler = Callable[[], Awaitable[None]]

REQUEST_ID_KEY = web.RequestKey("rtc_request_id", str)
# perf_counter() when the request reached the app (uvloop's loop clock has 1 ms resolution).
STARTED_KEY = web.RequestKey("rtc_started", float)
# Headers a handler wants on its answer whatever the outcome (e.g. RateLimit-* on a 403).
EXTRA_HEADERS_KEY = web.RequestKey("rtc_extra_headers", CIMultiDict[str])
SETTINGS_KEY = web.AppKey("rtc_settings", CommonSettings)
READINESS_KEY = web.AppKey("rtc_readiness", dict[str, ReadinessCheck])

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
READINESS_TIMEOUT = 2.0
# Background gauges (readiness, relay queue depth) are refreshed this often once scraped.
SAMPLE_SECONDS = 5.0

_CODE_BY_STATUS = {
    400: "invalid_payload",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
    503: "unavailable",
}


def extra_headers(request: web.Request) -> CIMultiDict[str]:
    headers = request.get(EXTRA_HEADERS_KEY)
    if headers is None:
        headers = CIMultiDict()
        request[EXTRA_HEADERS_KEY] = headers
    return headers


def route_label(request: web.Request) -> str:
    """The matched route's path template (a low-cardinality label), or `unmatched`."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, the error envelope and request metrics, outermost of all middlewares."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    token = request_id_var.set(request_id)
    started = request[STARTED_KEY] = time.perf_counter()
    try:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.code, exc.message, status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _CODE_BY_STATUS.get(
                exc.status, "invalid_payload" if exc.status < 500 else "internal"
            )
            response = error_response(code, exc.reason, status=exc.status)
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error")
            response = error_response("internal", "internal error", status=500)
        if not response.prepared:
            response.headers["X-Request-ID"] = request_id
            response.headers["X-Content-Type-Options"] = "nosniff"
            # JSON answers carry private data (credentials, messages): never kept by a cache.
            if response.content_type == "application/json":
                response.headers.setdefault("Cache-Control", "no-store")
            for name, value in request.get(EXTRA_HEADERS_KEY, {}).items():
                response.headers[name] = value
        route = route_label(request)
        labelled(HTTP_REQUESTS, request.method, route, str(response.status)).inc()
        labelled(HTTP_LATENCY, request.method, route).observe(time.perf_counter() - started)
        return response
    finally:
        request_id_var.reset(token)


@web.middleware
async def refuse_websocket_compression(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Handshakes without permessage-deflate, whatever the client offers.

    aiohttp accepts the extension when offered (socket.io-client offers it) and engine.io gives no
    way to refuse it; a deflate context per socket took about 90 KiB of the 123 KiB an idle
    python-socketio websocket costs (docs/benchmarks.md), and it costs CPU on every message.
    Node's socket.io has it off by default too. Without the offer, aiohttp answers uncompressed.
    """
    if "Sec-WebSocket-Extensions" in request.headers:
        headers = request.headers.copy()
        del headers["Sec-WebSocket-Extensions"]
        request = request.clone(headers=headers)
    return await handler(request)


def cors_middleware(allowed_origins: Iterable[str], csrf_header: str) -> Any:
    origins = frozenset(allowed_origins)
    allow_headers = f"Authorization, Content-Type, X-Request-ID, {csrf_header}"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and origin in origins
        preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if preflight:
            if not allowed:
                raise ApiError("forbidden", "origin not allowed")
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = allow_headers
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            try:
                response = await handler(request)
            except ApiError as exc:
                if allowed:
                    exc.headers.update(_cors_headers(origin or ""))
                raise
        if allowed and not response.prepared:
            vary = response.headers.get("Vary")
            response.headers.update(_cors_headers(origin or ""))
            if vary:
                response.headers["Vary"] = f"{vary}, Origin"
        return response

    return middleware


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


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


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def run_readiness(app: web.Application) -> dict[str, str]:
    """Every readiness check of the app, concurrently: name -> "ok" or "failed: <type>"."""
    checks = app[READINESS_KEY]

    async def run(check: ReadinessCheck) -> str:
        try:
            async with asyncio.timeout(READINESS_TIMEOUT):
                await check()
        except Exception as exc:  # readiness reports any failure, it must not raise
            return f"failed: {type(exc).__name__}"
        return "ok"

    names = list(checks)
    return dict(zip(names, await asyncio.gather(*(run(checks[n]) for n in names)), strict=True))


async def _readyz(request: web.Request) -> web.Response:
    results = await run_readiness(request.app)
    failing = [name for name, result in results.items() if result != "ok"]
    if failing:
        body = {**error_body("unavailable", "not ready: " + ", ".join(failing)), "checks": results}
        return web.json_response(body, status=503)
    return web.json_response({"status": "ready", "checks": results})


@dataclass
class MetricsSampling:
    """Gauges that need I/O (readiness, the relay queue), refreshed every `SAMPLE_SECONDS`.

    The loop starts at the first scrape of /metrics (a process nobody scrapes does no extra
    work), and that first scrape waits for one pass so it never reports a default 0. Samplers
    are added by the services (`app[SAMPLING_KEY].samplers.append(...)`); each pass is bounded
    by `READINESS_TIMEOUT` per sampler and a failing sampler only logs.
    """

    samplers: list[Sampler] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    first_pass: asyncio.Event = field(default_factory=asyncio.Event)

    async def sample(self) -> None:
        async def run(sampler: Sampler) -> None:
            try:
                async with asyncio.timeout(READINESS_TIMEOUT * 2):
                    await sampler()
            except Exception as exc:  # a gauge left stale must not stop the others
                log.warning("metrics sampler failed", extra={"error": type(exc).__name__})

        await asyncio.gather(*(run(s) for s in self.samplers))

    async def _loop(self) -> None:
        while True:
            await self.sample()
            self.first_pass.set()
            await asyncio.sleep(SAMPLE_SECONDS)

    async def ensure_started(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._loop())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.first_pass.wait(), READINESS_TIMEOUT * 2 + 1)

    async def stop(self) -> None:
        if self.task is not None:
            await stop_task(self.task)
            self.task = None


SAMPLING_KEY = web.AppKey("rtc_metrics_sampling", MetricsSampling)


def _readiness_sampler(app: web.Application) -> Sampler:
    async def sample() -> None:
        results = await run_readiness(app)
        for name, result in results.items():
            READY_CHECK.labels(name).set(1 if result == "ok" else 0)
        READY.set(1 if all(r == "ok" for r in results.values()) else 0)

    return sample


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
    """An application with the shared middlewares and /healthz, /readyz, /metrics.

    Services add their routes, readiness checks (`app[READINESS_KEY][name] = check`) and
    cleanup contexts.
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
    app[READINESS_KEY] = {}
    app[SAMPLING_KEY] = MetricsSampling(samplers=[_readiness_sampler(app)])
    arm_report, disarm_report = slow_shutdown_report()
    app.on_shutdown.insert(0, arm_report)
    app.on_shutdown.append(_stop_sampling)
    app.on_cleanup.append(disarm_report)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app
