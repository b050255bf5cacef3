"""The middlewares every service shares: request context and error envelope, CORS, and the
websocket handshake without compression."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .context import request_id_var
from .errors import ApiError, error_response
from .keys import EXTRA_HEADERS_KEY, REQUEST_ID_KEY, STARTED_KEY, Handler, route_label
from .metrics import HTTP_LATENCY, HTTP_REQUESTS, labelled

log = logging.getLogger("rtc.web")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
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


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, the error envelope and request metrics, outermost of all middlewares."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else secrets.token_hex(16)
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
    way to refuse it; a deflate context is most of what an idle websocket costs in memory
    (docs/benchmarks.md), and it costs CPU on every message.
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
