"""relay-service metrics: what the relay-ratio and loss alerts are built on.

The queue gauges are sampled over the store (`RelayStore.stats`, bounded) every few seconds once
/metrics is scraped; several relay replicas report the same store, so dashboards take `max`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ENQUEUED = Counter("rtc_relay_enqueued_total", "Relay enqueues answered 2xx", ["result", "forced"])
ENQUEUE_REFUSED = Counter(
    "rtc_relay_enqueue_refused_total",
    "Relay enqueues not stored: queue_full (507) or unavailable (503, the store failed)",
    ["reason"],
)
PUSHED = Counter(
    "rtc_relay_pushed_total", "Stored messages published for online push (relay:message)"
)
PULLED = Counter("rtc_relay_pulled_total", "Messages handed out by pull")
ACKED = Counter("rtc_relay_acked_total", "Messages acknowledged (deleted) by their recipient")
EXPIRED = Counter(
    "rtc_relay_expired_total",
    "Messages dropped undelivered because their TTL passed (trimmed on enqueue and pull)",
)
PUSH_FAILURES = Counter(
    "rtc_relay_push_failures_total", "Online pushes that could not be published"
)
QUEUE_DEPTH = Gauge("rtc_relay_queue_depth", "Messages waiting in the relay queues (sampled)")
QUEUES = Gauge("rtc_relay_queues", "Recipients with messages waiting (sampled)")
OLDEST_AGE = Gauge(
    "rtc_relay_oldest_message_age_seconds",
    "Age of the oldest undelivered, unexpired relay message (sampled; 0 when none)",
)
TTL = Gauge("rtc_relay_ttl_seconds", "RELAY_TTL_SECONDS: an undelivered message's life")
SAMPLE_TRUNCATED = Gauge(
    "rtc_relay_queue_sample_truncated",
    "1 when the queue sample stopped at its bound (the gauges cover part of the queues)",
)
STORE_MEMORY = Gauge(
    "rtc_relay_store_memory_bytes", "used_memory of the relay store Redis (sampled)"
)
STORE_MEMORY_MAX = Gauge(
    "rtc_relay_store_memory_max_bytes",
    "maxmemory of the relay store Redis (sampled; 0 when it has no limit)",
)
