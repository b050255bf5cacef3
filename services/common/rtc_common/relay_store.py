"""The relay queue: one Redis stream per recipient, written only through atomic scripts.

Used by relay-service (enqueue, pull, ack over HTTP) and signal-service (`relay:ack` socket
event). Why streams: entries are ordered by an id Redis assigns from its own clock (oldest first
across senders, and the id gives `queuedAt`), a recipient reads a range without consuming it
(at-least-once until acked), acks are `XDEL` of the recipient's own stream only (someone else's
ids cannot touch it), and `XTRIM MINID` drops expired entries in one step.

Durability: a 2xx means the script's reply came back, and the store's Redis must run with
`appendonly yes` and `appendfsync always` so that what Redis acknowledged survives a kill -9.
Idempotency: `relay:idem:<sender>:<messageId>` holds the first id while the message is queued
(at most its TTL) and RELAY_IDEMPOTENCY_SECONDS after its ack; a repeat after that is stored
again (the SDKs drop a messageId they already delivered).
Bounds: per recipient RELAY_MAX_QUEUE messages and RELAY_MAX_QUEUE_BYTES payload bytes, and per
sender within one recipient's queue RELAY_MAX_SENDER_SHARE of each (`relay:acct:<recipient>`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .batching import batcher_for
from .clients import as_text
from .ratelimit import GCRA_FUNCTION, RateLimiter, RateLimitResult

QUEUE_PREFIX = "relay:q:"
IDEM_PREFIX = "relay:idem:"
ACCOUNT_PREFIX = "relay:acct:"
# ASCII digits only (\d also matches other scripts' digits), no trailing newline ($ allows one).
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_U64_MAX = 2**64 - 1


def _is_stream_id(value: str) -> bool:
    """A well-formed stream id (Redis fails the whole XDEL on a part over 2^64-1)."""
    if not _STREAM_ID.fullmatch(value):
        return False
    ms, seq = value.split("-")
    return int(ms) <= _U64_MAX and int(seq) <= _U64_MAX


# Per-recipient accounting, `relay:acct:<recipient>` (a hash): `bytes`, the payload bytes queued;
# `n:<sender>` and `b:<sender>`, what one sender holds in that queue. Counted at enqueue,
# released on ack and on expiry, so one sender cannot fill anyone's queue.
_RELEASE = """
local function release(acct, sender, size)
  local left = redis.call('HINCRBY', acct, 'bytes', -size)
  if left <= 0 then redis.call('HDEL', acct, 'bytes') end
  if redis.call('HINCRBY', acct, 'n:' .. sender, -1) <= 0 then
    redis.call('HDEL', acct, 'n:' .. sender)
  end
  if redis.call('HINCRBY', acct, 'b:' .. sender, -size) <= 0 then
    redis.call('HDEL', acct, 'b:' .. sender)
  end
end
local function entry_fields(flat)
  local fields = {}
  for j = 1, #flat, 2 do fields[flat[j]] = flat[j + 1] end
  return fields
end
-- Trims the entries past their TTL and releases what they held; returns how many went.
local function expire(queue, acct, ttl_ms)
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local cutoff = now_ms - ttl_ms
  if cutoff <= 0 then return 0, now_ms end
  local old = redis.call('XRANGE', queue, '-', tostring(cutoff - 1))
  for _, e in ipairs(old) do
    local f = entry_fields(e[2])
    release(acct, f['from'], string.len(f['payload']))
  end
  if #old > 0 then redis.call('XTRIM', queue, 'MINID', tostring(cutoff)) end
  return #old, now_ms
end
"""

# KEYS: idem, queue, acct[, the sender's contacts, the recipient's contacts][, the sender's
# rate-limit bucket]. ARGV: max_queue, ttl_ms, from, convId, messageId, payload, forced,
# max_bytes, sender_max_n, sender_max_bytes, to, check_contacts ("1": with the contact keys, a
# Redis directory in this Redis)[, rate interval, rate burst (µs; with the bucket key)].
# Returns {status, id, forced, expired[, allowed, remaining, reset_us, retry_us]}: status 0 =
# stored, 1 = duplicate, 2 = queue full, 3 = the sender's share of the queue is full, 4 = not
# mutual contacts, 5 = rate limited (nothing else looked at); expired = entries past their TTL
# trimmed now; the last four are gcra()'s answer when the rate limit was asked for.
_ENQUEUE = (
    _RELEASE
    + GCRA_FUNCTION
    + """
local function enqueue()
  if ARGV[12] == '1' and (redis.call('SISMEMBER', KEYS[4], ARGV[11]) == 0
                          or redis.call('SISMEMBER', KEYS[5], ARGV[3]) == 0) then
    return {4, '', '', 0}
  end
  local existing = redis.call('GET', KEYS[1])
  if existing then
    local sep = string.find(existing, '|', 1, true)
    return {1, string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1), 0}
  end
  local ttl_ms = tonumber(ARGV[2])
  local expired = expire(KEYS[2], KEYS[3], ttl_ms)
  local size = string.len(ARGV[6])
  local held = redis.call('HMGET', KEYS[3], 'bytes', 'n:' .. ARGV[3], 'b:' .. ARGV[3])
  local queued_bytes = tonumber(held[1] or '0')
  if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[1])
      or queued_bytes + size > tonumber(ARGV[8]) then
    return {2, '', '', expired}
  end
  local sender_n = tonumber(held[2] or '0')
  local sender_b = tonumber(held[3] or '0')
  if sender_n + 1 > tonumber(ARGV[9]) or sender_b + size > tonumber(ARGV[10]) then
    return {3, '', '', expired}
  end
  local id = redis.call('XADD', KEYS[2], '*', 'from', ARGV[3], 'convId', ARGV[4],
                        'messageId', ARGV[5], 'payload', ARGV[6], 'forced', ARGV[7])
  redis.call('HINCRBY', KEYS[3], 'bytes', size)
  redis.call('HINCRBY', KEYS[3], 'n:' .. ARGV[3], 1)
  redis.call('HINCRBY', KEYS[3], 'b:' .. ARGV[3], size)
  redis.call('SET', KEYS[1], id .. '|' .. ARGV[7], 'PX', ttl_ms)
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
  redis.call('PEXPIRE', KEYS[3], ttl_ms)
  return {0, id, ARGV[7], expired}
end
if not ARGV[13] then return enqueue() end
local verdict = gcra(KEYS[#KEYS], tonumber(ARGV[13]), tonumber(ARGV[14]))
if verdict[1] == 0 then return {5, '', '', 0, unpack(verdict)} end
local result = enqueue()
for _, v in ipairs(verdict) do table.insert(result, v) end
return result
"""
)

# KEYS: queue, acct. ARGV: ttl_ms, count. Trims expired entries, then reads the oldest `count`.
# Returns {expired, entries}.
_PULL = (
    _RELEASE
    + """
local expired = expire(KEYS[1], KEYS[2], tonumber(ARGV[1]))
return {expired, redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[2])}
"""
)

# KEYS: queue, acct. ARGV: idempotency_ms, idem_prefix, ids... Deletes the recipient's own
# entries, releases what they held, and shortens each message's idempotency key to
# RELAY_IDEMPOTENCY_SECONDS from now. Returns how many entries were there.
_ACK = (
    _RELEASE
    + """
local acked = 0
local keep_ms = tonumber(ARGV[1])
for i = 3, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found > 0 then
    local f = entry_fields(found[1][2])
    redis.call('XDEL', KEYS[1], ARGV[i])
    acked = acked + 1
    release(KEYS[2], f['from'], string.len(f['payload']))
    local idem = ARGV[2] .. f['from'] .. ':' .. f['messageId']
    local left = redis.call('PTTL', idem)
    if left == -1 or left > keep_ms then redis.call('PEXPIRE', idem, keep_ms) end
  end
end
return acked
"""
)

# The store Redis's clock in ms (stream ids, and so queuedAt, come from it).
_NOW = """
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


def sender_rate_key(sender: str) -> str:
    """The key a sender's enqueues are rate-limited under."""
    return f"wallet:{sender}"


ENQUEUE_STATUSES = {
    0: "stored", 1: "duplicate", 2: "queue_full", 3: "sender_share_full", 4: "not_contacts",
    5: "rate_limited",
}  # fmt: skip


def queued_at_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class Enqueued:
    # "stored" | "duplicate" | "queue_full" | "sender_share_full" | "not_contacts" | "rate_limited"
    status: str
    id: str
    forced: bool
    expired: int = 0  # entries of the recipient's queue dropped for their TTL on the way
    rate: RateLimitResult | None = None  # the sender's rate limit, when the store decides it


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


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """What one recipient's queue may hold, and one sender's share of it."""

    max_queue: int = 10_000
    max_bytes: int = 32 * 1024 * 1024
    sender_share: float = 0.25

    @property
    def sender_max_messages(self) -> int:
        return max(1, math.floor(self.sender_share * self.max_queue))

    @property
    def sender_max_bytes(self) -> int:
        return math.floor(self.sender_share * self.max_bytes)


class RelayStore:
    def __init__(
        self,
        redis: Redis,
        *,
        limits: QueueLimits | None = None,
        ttl_seconds: int = 604800,
        idempotency_seconds: int = 86400,
        contacts_prefix: str | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        """`contacts_prefix`: the Redis directory's contact sets live in this Redis under it;
        enqueue then checks mutual contacts in its own script (one round trip, no cache).
        `limiter`: its buckets live in this Redis; enqueue then decides the sender's rate limit
        in the same script (one round trip and one fsync wait for both)."""
        self._redis = redis
        self.contacts_prefix = contacts_prefix
        self.limiter = limiter
        self.limits = limits or QueueLimits()
        self._ttl_ms = ttl_seconds * 1000
        self._idempotency_ms = idempotency_seconds * 1000
        self._enqueue = redis.register_script(_ENQUEUE)
        self._pull = redis.register_script(_PULL)
        self._ack = redis.register_script(_ACK)
        self._now = redis.register_script(_NOW)
        self._batcher = batcher_for(redis)

    async def enqueue(
        self,
        *,
        sender: str,
        to: str,
        conv_id: str,
        message_id: str,
        payload: str,
        forced: bool,
        rate_limit: bool = True,
    ) -> Enqueued:
        """`rate_limit`: decide the sender's limit too (with a `limiter`; False when the caller
        already did)."""
        limiter = self.limiter if rate_limit else None
        limits = self.limits
        keys = [f"{IDEM_PREFIX}{sender}:{message_id}", QUEUE_PREFIX + to, ACCOUNT_PREFIX + to]
        args: list[str | int] = [
            limits.max_queue,
            self._ttl_ms,
            sender,
            conv_id,
            message_id,
            payload,
            int(forced),
            limits.max_bytes,
            limits.sender_max_messages,
            limits.sender_max_bytes,
            to,
            int(self.contacts_prefix is not None),
        ]
        if self.contacts_prefix is not None:
            keys += [self.contacts_prefix + sender, self.contacts_prefix + to]
        if limiter is not None:
            bucket, interval, burst = limiter.script_arguments(sender_rate_key(sender))
            keys.append(bucket)
            args += [interval, burst]
        raw = await self._batcher.run(self._enqueue, keys, args)
        status, stream_id, stored_forced, expired = raw[:4]
        rate = None
        if limiter is not None:
            rate = limiter.verdict(*(int(v) for v in raw[4:8]))
        return Enqueued(
            ENQUEUE_STATUSES[int(status)],
            as_text(stream_id),
            as_text(stored_forced) == "1",
            int(expired),
            rate,
        )

    async def pull(self, wallet: str, limit: int) -> Pulled:
        """The oldest `limit` messages of the wallet's queue, and whether more are waiting."""
        expired, raw = await self._pull(
            keys=[QUEUE_PREFIX + wallet, ACCOUNT_PREFIX + wallet], args=[self._ttl_ms, limit + 1]
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
        return int(
            await self._ack(
                keys=[QUEUE_PREFIX + wallet, ACCOUNT_PREFIX + wallet],
                args=[self._idempotency_ms, IDEM_PREFIX, *valid],
            )
        )

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
