"""Typed keys of the state the shared app keeps (aiohttp `AppKey`/`RequestKey`), and the small
accessors of per-request state. Imported by the app skeleton, the middlewares, logging and the
clients' cleanup contexts; it imports none of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from .sampling import MetricsSampling
from .settings import CommonSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadinessCheck = Callable[[], Awaitable[None]]

REQUEST_ID_KEY = web.RequestKey("rtc_request_id", str)
# perf_counter() when the request reached the app (uvloop's loop clock has 1 ms resolution).
STARTED_KEY = web.RequestKey("rtc_started", float)
# Headers a handler wants on its answer whatever the outcome (e.g. RateLimit-* on a 403).
EXTRA_HEADERS_KEY = web.RequestKey("rtc_extra_headers", CIMultiDict[str])
SETTINGS_KEY = web.AppKey("rtc_settings", CommonSettings)
# The dependencies a service cannot answer without (/readyz), and every dependency
# (/healthz/deps): filled by add_dependency().
READINESS_KEY = web.AppKey("rtc_readiness", dict[str, ReadinessCheck])
DEPENDENCIES_KEY = web.AppKey("rtc_dependencies", dict[str, ReadinessCheck])
SAMPLING_KEY = web.AppKey("rtc_metrics_sampling", MetricsSampling)


def add_dependency(
    app: web.Application, name: str, check: ReadinessCheck, *, required: bool
) -> None:
    """A dependency shown in /healthz/deps; `required`: the service is not ready while it fails
    (rtc_common.health says which are)."""
    app[DEPENDENCIES_KEY][name] = check
    if required:
        app[READINESS_KEY][name] = check


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
