"""signal-service metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SIGNALS = Counter(
    "rtc_signal_events_total",
    "Signaling events handled, by outcome (ok or an error code)",
    ["event", "outcome"],
)
SOCKETS = Gauge("rtc_signal_sockets", "Sockets connected to this instance")
PRESENCE_CHANGES = Counter(
    "rtc_presence_changes_total", "Wallets that came online or went offline", ["change"]
)
LEGACY_USED = Counter("rtc_legacy_events_total", "Deprecated events used or emitted", ["event"])
PUBSUB_PROBE_FAILURES = Counter(
    "rtc_pubsub_probe_failures_total", "Pub/sub self-probes that did not come back"
)
REAPED = Counter("rtc_presence_reaped_instances_total", "Dead instances whose sockets were reaped")
