"""ice-service metrics (names prefixed `rtc_ice_`; telemetry feeds the relay-ratio alert).

Labels stay low-cardinality: the route template, the provider name, the HTTP status, an outcome
word; never a wallet or a credential.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "rtc_ice_requests_total",
    "ICE credential requests answered, by route, answering provider (none) and HTTP status",
    ["route", "provider", "status"],
)
REQUEST_LATENCY = Histogram(
    "rtc_ice_request_duration_seconds",
    "Time to answer an ICE credential request, by answering provider (none)",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ISSUED = Counter("rtc_ice_issued_total", "ICE credentials issued", ["provider"])
FAILED = Counter("rtc_ice_unavailable_total", "ICE requests answered 503 ice_unavailable")
UPSTREAM_CALLS = Counter(
    "rtc_ice_upstream_calls_total", "Calls to a hosted TURN provider's API", ["provider", "outcome"]
)
UPSTREAM_LATENCY = Histogram(
    "rtc_ice_upstream_duration_seconds",
    "Duration of calls to a hosted TURN provider's API (failures included)",
    ["provider"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
)
UPSTREAM_WAITING = Gauge(
    "rtc_ice_upstream_waiting", "Requests waiting on the shared in-flight provider call"
)
CIRCUIT_OPEN = Gauge(
    "rtc_ice_circuit_open", "1 while the provider's circuit breaker is open", ["provider"]
)
FALLBACK_USED = Counter(
    "rtc_ice_fallback_total", "ICE answers given by the fallback provider", ["provider"]
)
TRANSPORT = Counter(
    "rtc_transport_messages_total",
    "Messages reported by clients, by transport and selected candidate type",
    ["transport", "candidate_type", "forced"],
)
ADMIN_REQUESTS = Counter(
    "rtc_admin_requests_total", "Admin route requests, by action and outcome", ["action", "outcome"]
)
TURN_SESSIONS_ENDED = Counter(
    "rtc_turn_revoked_sessions_ended_total",
    "TURN sessions of revoked wallets cancelled through coturn's admin CLI",
)
TURN_ADMIN_FAILURES = Counter(
    "rtc_turn_admin_failures_total", "Sweeps of revoked TURN sessions that coturn's CLI failed"
)
