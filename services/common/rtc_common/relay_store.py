"""The relay queue: one Redis stream per recipient, written only through atomic scripts.

Used by relay-service (enqueue, pull, ack over HTTP) and signal-service (`relay:ack` socket
event). Why streams: entries are ordered by an id Redis assigns from its own clock (oldest first
across senders, and the id gives `queuedAt`), a recipient reads a range without consuming it
(at-least-once until acked), acks are `XDEL` of the recipient's own stream only (someone else's
ids cannot touch it), and `XTRIM MINID` drops expired entries in one step.

Durability: a 2xx means the script's reply came back, and the store's Redis must run with
`appendonly yes` and `appendfsync always` so that what Redis acknowledged survives a kill -9.
Idempotency: `relay:idem:<sender>:<messageId>` holds the first id for the message's TTL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .batching import batcher_for
from .clients import as_text

QUEUE_PREFIX = "relay:q:"
IDEM_PREFIX = "relay:idem:"
# ASCII digits only (\d also matches other scripts' digits), no trailing newline ($ allows one).
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_U64_MAX = 2**64 - 1


def _is_stream_id(value: str) -> bool:
    """A well-formed stream id (Redis fails the whole XDEL on a part over 2^64-1)."""
    if not _STREAM_ID.fullmatch(value):
        return False
    ms, seq = value.split("-")
    return int(ms) <= _U64_MAX and int(seq) <= _U64_MAX


# KEYS: idem, queue. ARGV: max_queue, ttl_ms, from, convId, messageId, payload, forced.
# Returns {status, id, forced, expired}: status 0 = stored, 1 = duplicate, 2 = queue full;
# expired = entries past their TTL trimmed now.
_ENQUEUE = """
local existing = redis.call('GET', KEYS[1])
if existing then
  local sep = string.find(existing, '|', 1, true)
  return {1, string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1), 0}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl_ms = tonumber(ARGV[2])
local expired = redis.call('XTRIM', KEYS[2], 'MINID', tostring(now_ms - ttl_ms))
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[1]) then
  return {2, '', '', expired}
end
local id = redis.call('XADD', KEYS[2], '*', 'from', ARGV[3], 'convId', ARGV[4],
                      'messageId', ARGV[5], 'payload', ARGV[6], 'forced', ARGV[7])
redis.call('SET', KEYS[1], id .. '|' .. ARGV[7], 'PX', ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
return {0, id, ARGV[7], expired}
"""

# KEYS: queue. ARGV: ttl_ms, count. Trims expired entries, then reads the oldest `count`.
# Returns {expired, entries}.
_PULL = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('XTRIM', KEYS[1], 'MINID', tostring(now_ms - tonumber(ARGV[1])))
return {expired, redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[2])}
"""

# The store Redis's clock in ms (stream ids, and so queuedAt, come from it).
_NOW = """
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


def queued_at_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class Enqueued:
    status: str  # "stored" | "duplicate" | "queue_full"
    id: str
    forced: bool
    expired: int = 0  # entries of the recipient's queue dropped for their TTL on the way


@dataclass(frozen=True, slots=True)
class Pulled:
    messages: list[RelayMessage]
    more: bool  # more messages are waiting
    expired: int  # entries dropped for their TTL on the way


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A bounded sample over the relay queues (what the depth and age gauges show)."""

    queues: int  # non-empty queues seen
    depth: int  # messages in them (expired ones not trimmed yet included)
    oldest_age: float  # seconds since the oldest unexpired message was queued; 0 when none
    truncated: bool  # the scan stopped at its bound: the numbers cover part of the queues


@dataclass(frozen=True, slots=True)
class RelayMessage:
    id: str
    sender: str
    conv_id: str
    message_id: str
    payload: str
    forced: bool

    @property
    def queued_at_ms(self) -> int:
        return queued_at_ms(self.id)


class RelayStore:
    def __init__(self, redis: Redis, *, max_queue: int = 10000, ttl_seconds: int = 604800) -> None:
        self._redis = redis
        self._max_queue = max_queue
        self._ttl_ms = ttl_seconds * 1000
        self._enqueue = redis.register_script(_ENQUEUE)
        self._pull = redis.register_script(_PULL)
        self._now = redis.register_script(_NOW)
        self._batcher = batcher_for(redis)

    async def enqueue(
        self, *, sender: str, to: str, conv_id: str, message_id: str, payload: str, forced: bool
    ) -> Enqueued:
        status, stream_id, stored_forced, expired = await self._batcher.run(
            self._enqueue,
            [f"{IDEM_PREFIX}{sender}:{message_id}", QUEUE_PREFIX + to],
            [self._max_queue, self._ttl_ms, sender, conv_id, message_id, payload, int(forced)],
        )
        kind = {0: "stored", 1: "duplicate", 2: "queue_full"}[int(status)]
        return Enqueued(kind, as_text(stream_id), as_text(stored_forced) == "1", int(expired))

    async def pull(self, wallet: str, limit: int) -> Pulled:
        """The oldest `limit` messages of the wallet's queue, and whether more are waiting."""
        expired, raw = await self._pull(
            keys=[QUEUE_PREFIX + wallet], args=[self._ttl_ms, limit + 1]
        )
        messages = [self._message(entry) for entry in raw]
        return Pulled(messages[:limit], len(messages) > limit, int(expired))

    async def stats(self, max_queues: int = 10_000) -> QueueStats:
        """Depth and oldest unexpired message over at most `max_queues` queue keys (read-only).

        One SCAN pass in pages, and per page one pipeline of XLEN and the first entry at or
        after the TTL cutoff: Redis work grows with the number of queues, never with messages.
        """
        now_ms = int(await self._now())
        cutoff = now_ms - self._ttl_ms
        examined = queues = depth = 0
        oldest_ms: int | None = None
        truncated = False
        cursor = 0
        while True:
            cursor, keys = await self._redis.scan(cursor, match=QUEUE_PREFIX + "*", count=500)
            keys = keys[: max_queues - examined]
            examined += len(keys)
            if keys:
                pipe = self._redis.pipeline(transaction=False)
                for key in keys:
                    pipe.xlen(key)
                    pipe.xrange(key, min=f"{max(cutoff, 0)}-0", count=1)
                replies = await pipe.execute()
                for length, first in zip(replies[::2], replies[1::2], strict=True):
                    if int(length) == 0:
                        continue
                    queues += 1
                    depth += int(length)
                    if first:
                        queued = queued_at_ms(as_text(first[0][0]))
                        oldest_ms = queued if oldest_ms is None else min(oldest_ms, queued)
            if int(cursor) == 0:
                break
            if examined >= max_queues:
                truncated = True
                break
        age = max(0.0, (now_ms - oldest_ms) / 1000) if oldest_ms is not None else 0.0
        return QueueStats(queues, depth, age, truncated)

    async def ack(self, wallet: str, ids: list[str]) -> int:
        """Delete the given ids from the wallet's own queue; returns how many were there."""
        valid = [i for i in dict.fromkeys(ids) if _is_stream_id(i)]
        if not valid:
            return 0
        return int(await self._redis.xdel(QUEUE_PREFIX + wallet, *valid))

    async def depth(self, wallet: str) -> int:
        return int(await self._redis.xlen(QUEUE_PREFIX + wallet))

    @staticmethod
    def _message(entry: Any) -> RelayMessage:
        stream_id, raw_fields = entry
        if isinstance(raw_fields, dict):
            fields = {as_text(k): as_text(v) for k, v in raw_fields.items()}
        else:  # a flat [k, v, k, v] list (script replies)
            flat = [as_text(v) for v in raw_fields]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return RelayMessage(
            id=as_text(stream_id),
            sender=fields["from"],
            conv_id=fields["convId"],
            message_id=fields["messageId"],
            payload=fields["payload"],
            forced=fields.get("forced") == "1",
        )

    async def durability(self) -> dict[str, str]:
        """The store Redis's persistence settings (empty when CONFIG is not allowed)."""
        try:
            appendonly = await self._redis.config_get("appendonly")
            fsync = await self._redis.config_get("appendfsync")
        except Exception:
            return {}
        merged: dict[Any, Any] = {**appendonly, **fsync}
        return {
            as_text(k): as_text(v) for k, v in merged.items() if k is not None and v is not None
        }
