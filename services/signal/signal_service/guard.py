"""Per-socket guards: the event rate, refused-event accounting (abuse, aggregated logs).

Every structure here has a fixed size per socket, whatever the client sends.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

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


class Refusals:
    """A socket's refused events: the abuse window and the aggregated log line.

    `limit`: how many refusals within ABUSE_WINDOW_SECONDS are tolerated. The window and the
    counts are made at the first refusal: most sockets never have one, and every idle socket
    would otherwise carry them.
    """

    __slots__ = ("_buckets", "_pending", "limit", "since")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # second, count of each one-second bucket of the sliding window, flattened
        self._buckets: list[int] | None = None
        # code -> count since `since`, logged as one line every REFUSAL_LOG_SECONDS
        self._pending: Counter[str] | None = None
        self.since = time.monotonic()

    @property
    def pending(self) -> Counter[str]:
        return self._pending if self._pending is not None else Counter()

    def record(self, code: str, wallet: str) -> bool:
        """Count one refusal; True when the socket went over the abuse limit."""
        now = time.monotonic()
        if self._pending is None:
            self._pending = Counter()
        self._pending[code] += 1
        if now - self.since >= REFUSAL_LOG_SECONDS:
            self.flush(wallet, now)
        if code in NOT_ABUSE:
            return False
        if self._buckets is None:
            self._buckets = [-1, 0] * ABUSE_WINDOW_SECONDS
        buckets = self._buckets
        second = int(now)
        at = 2 * (second % ABUSE_WINDOW_SECONDS)
        if buckets[at] != second:
            buckets[at], buckets[at + 1] = second, 0
        buckets[at + 1] += 1
        recent = sum(
            buckets[i + 1]
            for i in range(0, len(buckets), 2)
            if second - buckets[i] < ABUSE_WINDOW_SECONDS
        )
        return recent > self.limit

    def flush(self, wallet: str, now: float | None = None) -> None:
        """Write the pending counts as one line (nothing when there are none)."""
        now = time.monotonic() if now is None else now
        if self._pending:
            log.info(
                "events refused",
                extra={
                    "walletHash": wallet_hash(wallet),
                    "refused": dict(self._pending),
                    "windowSeconds": round(now - self.since, 1),
                },
            )
            self._pending.clear()
        self.since = now
