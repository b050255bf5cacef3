"""Per-socket guards: the event rate, refused-event accounting (abuse, aggregated logs).

Every structure here has a fixed size per socket, whatever the client sends.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from rtc_common.logs import wallet_hash

log = logging.getLogger("signal.guard")

# Refused events are counted over this sliding window (in one-second buckets) ...
ABUSE_WINDOW_SECONDS = 5
# ... and more than this many times SIGNAL_RATE_PER_SEC of them ends the session.
ABUSE_FACTOR = 5
# One log line per socket per this many seconds sums up its refused events.
REFUSAL_LOG_SECONDS = 10.0
# Outcomes that are the server's fault, not the client's: never counted as abuse.
NOT_ABUSE = frozenset({"ok", "duplicate", "unavailable"})


class TokenBucket:
    """Per-socket rate: `rate` events per second, bursts up to `rate`."""

    __slots__ = ("rate", "tokens", "updated")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class Refusals:
    """A socket's refused events: the abuse window and the aggregated log line.

    `limit`: how many refusals within ABUSE_WINDOW_SECONDS are tolerated.
    """

    limit: int
    # (second, count) per one-second bucket of the sliding window
    buckets: list[list[int]] = field(
        default_factory=lambda: [[-1, 0] for _ in range(ABUSE_WINDOW_SECONDS)]
    )
    # code -> count since `since`, logged as one line every REFUSAL_LOG_SECONDS
    pending: Counter[str] = field(default_factory=Counter)
    since: float = field(default_factory=time.monotonic)

    def record(self, code: str, wallet: str) -> bool:
        """Count one refusal; True when the socket went over the abuse limit."""
        now = time.monotonic()
        self.pending[code] += 1
        if now - self.since >= REFUSAL_LOG_SECONDS:
            self.flush(wallet, now)
        if code in NOT_ABUSE:
            return False
        second = int(now)
        bucket = self.buckets[second % ABUSE_WINDOW_SECONDS]
        if bucket[0] != second:
            bucket[0], bucket[1] = second, 0
        bucket[1] += 1
        recent = sum(n for s, n in self.buckets if second - s < ABUSE_WINDOW_SECONDS)
        return recent > self.limit

    def flush(self, wallet: str, now: float | None = None) -> None:
        """Write the pending counts as one line (nothing when there are none)."""
        now = time.monotonic() if now is None else now
        if self.pending:
            log.info(
                "events refused",
                extra={
                    "walletHash": wallet_hash(wallet),
                    "refused": dict(self.pending),
                    "windowSeconds": round(now - self.since, 1),
                },
            )
            self.pending.clear()
        self.since = now
