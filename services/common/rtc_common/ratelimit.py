"""Atomic GCRA rate limiting in Redis, with a per-process fallback for when Redis is down.

GCRA (generic cell rate algorithm) admits `limit` requests per `period` with no clock-aligned
window, so no boundary lets 2x through. One EVALSHA per decision; the script reads Redis's own
clock, so every process shares one time source and one counter.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .batching import KeyedScriptBatch, batcher_for
from .errors import ApiError, unavailable
from .metrics import RATE_LIMIT_DEGRADED, RATE_LIMIT_FALLBACK, RATE_LIMITED

log = logging.getLogger("rtc.ratelimit")

# gcra(bucket, interval µs, burst µs = interval * limit) -> {allowed, remaining, reset_after_us,
# retry_after_us}. A Lua function so that another script can decide its own work and the limit in
# one round trip (the relay's enqueue, rtc_common.relay_store).
GCRA_FUNCTION = """
local function gcra(bucket, interval, burst)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tat = tonumber(redis.call('GET', bucket) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst
  if now < allow_at then
    return {0, 0, tat - now, allow_at - now}
  end
  redis.call('SET', bucket, new_tat, 'PX', math.ceil((new_tat - now) / 1000))
  return {1, math.floor((burst - (new_tat - now)) / interval), new_tat - now, 0}
end
"""
# KEYS: the buckets of one loop turn's hits, in order (a key may repeat). ARGV[1]: emission
# interval (µs). ARGV[2]: burst (µs). One gcra() answer per key.
_GCRA_LUA = (
    GCRA_FUNCTION
    + """
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i, bucket in ipairs(KEYS) do
  out[i] = gcra(bucket, interval, burst)
end
return out
"""
)

_MICRO = 1_000_000
_FALLBACK_MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_after)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers

    def raise_if_limited(self) -> None:
        if not self.allowed:
            raise ApiError(
                "rate_limited",
                f"rate limit exceeded, retry in {max(1, math.ceil(self.retry_after))} s",
                headers=self.headers(),
            )


class _LocalGcra:
    """The same algorithm in process memory, bounded in keys (oldest evicted)."""

    def __init__(self) -> None:
        self._tats: OrderedDict[str, int] = OrderedDict()

    def hit(self, key: str, interval: int, burst: int) -> tuple[bool, int, int, int]:
        now = int(time.monotonic() * _MICRO)
        tat = max(self._tats.get(key, now), now)
        new_tat = tat + interval
        allow_at = new_tat - burst
        if now < allow_at:
            return False, 0, tat - now, allow_at - now
        self._tats[key] = new_tat
        self._tats.move_to_end(key)
        while len(self._tats) > _FALLBACK_MAX_KEYS:
            self._tats.popitem(last=False)
        return True, (burst - (new_tat - now)) // interval, new_tat - now, 0


class RateLimiter:
    """`limit` requests per `period` seconds per key, shared by every process using the Redis."""

    def __init__(
        self,
        redis: Redis,
        *,
        scope: str,
        limit: int,
        period: float = 60.0,
        fallback: bool = True,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.scope = scope
        self.limit = limit
        # At least 1 µs: a limit above a million a second must not divide by zero in the script.
        self._interval = max(1, int(period * _MICRO) // limit)
        self._burst = self._interval * limit
        # A limiter's hits of one loop turn go to Redis as one script call (batching.py).
        self._hits = KeyedScriptBatch(
            batcher_for(redis), redis.register_script(_GCRA_LUA), [self._interval, self._burst]
        )
        self._fallback = _LocalGcra() if fallback else None
        self._degraded = False
        # The scope's series exist from the start (a rate() needs a first sample at 0).
        RATE_LIMITED.labels(scope)
        if fallback:
            RATE_LIMIT_FALLBACK.labels(scope)
            RATE_LIMIT_DEGRADED.labels(scope).set(0)

    def script_arguments(self, key: str) -> tuple[str, int, int]:
        """The bucket, interval and burst of `key`, for a script that calls gcra() itself."""
        return f"rl:{self.scope}:{key}", self._interval, self._burst

    async def hit(self, key: str) -> RateLimitResult:
        bucket, interval, burst = self.script_arguments(key)
        try:
            raw = await self._hits.run(bucket)
            allowed, remaining, reset_us, retry_us = (int(v) for v in raw)
            if self._degraded:
                self._degraded = False
                RATE_LIMIT_DEGRADED.labels(self.scope).set(0)
                log.warning("rate limiter back on redis", extra={"scope": self.scope})
        except RedisError as exc:
            if self._fallback is None:
                raise unavailable("rate limiter unavailable") from exc
            if not self._degraded:
                self._degraded = True
                RATE_LIMIT_DEGRADED.labels(self.scope).set(1)
                log.warning(
                    "redis unreachable, rate limiting per process",
                    extra={"scope": self.scope, "error": type(exc).__name__},
                )
            RATE_LIMIT_FALLBACK.labels(self.scope).inc()
            ok, remaining, reset_us, retry_us = self._fallback.hit(key, interval, burst)
            allowed = int(ok)
        return self.verdict(allowed, remaining, reset_us, retry_us)

    def verdict(
        self, allowed: int, remaining: int, reset_us: int, retry_us: int
    ) -> RateLimitResult:
        """gcra()'s answer as a result (counted when refused)."""
        if not allowed:
            RATE_LIMITED.labels(self.scope).inc()
        return RateLimitResult(
            allowed=bool(allowed),
            limit=self.limit,
            remaining=max(0, remaining),
            reset_after=reset_us / _MICRO,
            retry_after=retry_us / _MICRO,
        )
