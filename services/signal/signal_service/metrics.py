"""signal-service metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SIGNALS = Counter(
    "rtc_signal_events_total",
    "Signaling events handled, by outcome (ok or an error code)",
    ["event", "outcome"],
)
EVENT_LATENCY = Histogram(
    "rtc_signal_event_duration_seconds",
    "Time to handle a client event (ack included), by event",
    ["event"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SOCKETS = Gauge("rtc_signal_sockets", "Sockets connected to this instance")
PRESENCE_CHANGES = Counter(
    "rtc_presence_changes_total", "Wallets that came online or went offline", ["change"]
)
LEGACY_USED = Counter("rtc_legacy_events_total", "Deprecated events used or emitted", ["event"])
PUBLISH_FAILURES = Counter(
    "rtc_signal_publish_failures_total",
    "Cross-instance publishes (Redis pub/sub) that failed: only this instance's sockets got them",
)
BUS_MESSAGES = Counter(
    "rtc_signal_bus_messages_total",
    "Pub/sub messages this instance's listener received, by channel: own (addressed to it),"
    " shared (broadcasts), shared_skipped (fallback copies of addressed messages)",
    ["channel"],
)
PUBSUB_LISTENER_UP = Gauge(
    "rtc_signal_pubsub_listener_up",
    "1 when the last pub/sub self-probe came back through this instance's own listener",
)
PUBSUB_PROBE_FAILURES = Counter(
    "rtc_pubsub_probe_failures_total", "Pub/sub self-probes that did not come back"
)
REAPED = Counter("rtc_presence_reaped_instances_total", "Dead instances whose sockets were reaped")
BINARY_REFUSED = Counter(
    "rtc_signal_binary_packets_refused_total",
    "Socket.IO packets announcing binary attachments (never used by this protocol): the socket"
    " was closed",
)
SESSIONS_ENDED = Counter(
    "rtc_signal_sessions_ended_total",
    "Sockets the server ended with session:end, by reason",
    ["reason"],
)
CONNECTIONS_REFUSED = Counter(
    "rtc_signal_connections_refused_total",
    "Handshakes refused after authentication, by reason",
    ["reason"],
)
