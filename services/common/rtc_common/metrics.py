"""Prometheus metrics shared by the services (one process runs one service)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

HTTP_REQUESTS = Counter(
    "rtc_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "rtc_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RATE_LIMIT_FALLBACK = Counter(
    "rtc_ratelimit_fallback_total",
    "Rate-limit decisions taken by the per-process fallback limiter because Redis was unreachable",
    ["scope"],
)
RATE_LIMIT_DEGRADED = Gauge(
    "rtc_ratelimit_degraded",
    "1 while this scope limits per process because Redis is unreachable",
    ["scope"],
)
REVOKED_WALLETS = Gauge(
    "rtc_revoked_wallets", "Wallets whose access is revoked now, as this instance holds them"
)
RATE_LIMITED = Counter(
    "rtc_ratelimit_rejected_total", "Requests refused by a rate limit", ["scope"]
)
DIRECTORY_ERRORS = Counter(
    "rtc_directory_errors_total", "Directory lookups that failed", ["backend"]
)
FLAG_STALE_SERVED = Counter(
    "rtc_flag_stale_served_total",
    "Feature-flag answers served from the last known value because the directory failed",
)

# Sampled in the background once /metrics has been scraped (rtc_common.web): what /readyz
# would answer, so that "no instance ready" is a query over the scraped series.
READY = Gauge("rtc_ready", "1 when every readiness check of this process passes (as /readyz)")
READY_CHECK = Gauge("rtc_ready_check", "1 when this readiness check passes", ["check"])


def render_metrics() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, remembered: the hot paths call it per request, and the label
    values are few (routes, statuses, providers), never a wallet or a credential."""
    key = (id(metric), values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child
