"""ice-service metrics (names prefixed `rtc_ice_`; telemetry feeds the relay-ratio alert)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ISSUED = Counter("rtc_ice_issued_total", "ICE credentials issued", ["provider"])
FAILED = Counter("rtc_ice_unavailable_total", "ICE requests answered 503 ice_unavailable")
UPSTREAM_CALLS = Counter(
    "rtc_ice_upstream_calls_total", "Calls to a hosted TURN provider's API", ["provider", "outcome"]
)
UPSTREAM_WAITING = Gauge(
    "rtc_ice_upstream_waiting", "Requests waiting on the shared in-flight provider call"
)
FALLBACK_USED = Counter(
    "rtc_ice_fallback_total", "ICE answers given by the fallback provider", ["provider"]
)
TRANSPORT = Counter(
    "rtc_transport_messages_total",
    "Messages reported by clients, by transport and selected candidate type",
    ["transport", "candidate_type", "forced"],
)
