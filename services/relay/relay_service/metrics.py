"""relay-service metrics: what the relay-ratio and loss alerts are built on."""

from __future__ import annotations

from prometheus_client import Counter

ENQUEUED = Counter("rtc_relay_enqueued_total", "Relay enqueues answered 2xx", ["result", "forced"])
PULLED = Counter("rtc_relay_pulled_total", "Messages handed out by pull")
ACKED = Counter("rtc_relay_acked_total", "Messages acknowledged (deleted) by their recipient")
PUSH_FAILURES = Counter(
    "rtc_relay_push_failures_total", "Online pushes that could not be published"
)
