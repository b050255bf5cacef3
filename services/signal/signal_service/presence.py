"""Presence across instances, in Redis.

Keys (all under `presence:`):
- `conn:<wallet>`      hash sid -> "<instance>|<rtc 0/1>": the wallet's live sockets, all instances;
- `inst:<id>:sockets`  hash sid -> wallet: what one instance holds, for cleaning up after it;
- `inst:<id>:alive`    a key with a TTL, refreshed by the instance's heartbeat;
- `instances`          the set of instance ids that may hold sockets.

A wallet is online while `conn:<wallet>` is not empty. An instance that dies without cleaning up
(kill -9) stops refreshing `alive`; any other instance's reaper then removes its sockets and
reports which wallets went offline. Every change is one Lua script, so two instances never both
announce the same transition.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from rtc_common.bus import PRESENCE_PREFIX, conn_key
from rtc_common.clients import as_text

PREFIX = PRESENCE_PREFIX
INSTANCES_KEY = PREFIX + "instances"

# ARGV[5]: the most sockets a wallet may hold across instances (0: no limit). Returns -1 when a
# new socket would go over it (nothing written), else the wallet's sockets.
_REGISTER = """
local limit = tonumber(ARGV[5])
if limit > 0 and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
    and redis.call('HLEN', KEYS[1]) >= limit then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return redis.call('HLEN', KEYS[1])
"""

_UNREGISTER = """
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return -1 end
return redis.call('HLEN', KEYS[1])
"""

# Claims a dead instance (only one reaper wins the SREM) and returns the wallets left offline.
_REAP = """
local prefix = ARGV[1]
local instance = ARGV[2]
if redis.call('EXISTS', prefix .. 'inst:' .. instance .. ':alive') == 1 then return {} end
if redis.call('SREM', prefix .. 'instances', instance) == 0 then return {} end
local sockets_key = prefix .. 'inst:' .. instance .. ':sockets'
local entries = redis.call('HGETALL', sockets_key)
local offline = {}
for i = 1, #entries, 2 do
  local conn = prefix .. 'conn:' .. entries[i + 1]
  if redis.call('HDEL', conn, entries[i]) == 1 and redis.call('HLEN', conn) == 0 then
    table.insert(offline, entries[i + 1])
  end
end
redis.call('DEL', sockets_key)
return offline
"""

_HEARTBEAT = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return redis.call('HLEN', KEYS[3])
"""


class TooManySockets(Exception):
    """The wallet already holds as many sockets as allowed (SIGNAL_MAX_SOCKETS_PER_WALLET)."""


@dataclass(frozen=True, slots=True)
class LocalSocket:
    sid: str
    wallet: str
    rtc: bool


class Presence:
    def __init__(self, redis: Redis, instance_id: str, instance_ttl: float) -> None:
        self._redis = redis
        self.instance_id = instance_id
        self._ttl_ms = int(instance_ttl * 1000)
        self._register = redis.register_script(_REGISTER)
        self._unregister = redis.register_script(_UNREGISTER)
        self._reap = redis.register_script(_REAP)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._sockets_key = f"{PREFIX}inst:{instance_id}:sockets"
        self._alive_key = f"{PREFIX}inst:{instance_id}:alive"

    async def register(self, sock: LocalSocket, *, limit: int = 0) -> bool:
        """Record a socket; True when it is the wallet's first (the wallet just came online).

        `limit` > 0: raise TooManySockets instead when the wallet holds that many already
        (atomically: concurrent handshakes on several instances never go over it).
        """
        count = int(
            await self._register(
                keys=[conn_key(sock.wallet), self._sockets_key, INSTANCES_KEY],
                args=[
                    sock.sid,
                    f"{self.instance_id}|{int(sock.rtc)}",
                    sock.wallet,
                    self.instance_id,
                    limit,
                ],
            )
        )
        if count < 0:
            raise TooManySockets(sock.wallet)
        return count == 1

    async def unregister(self, sid: str, wallet: str) -> bool:
        """Forget a socket; True when it was the wallet's last (the wallet just went offline)."""
        remaining = await self._unregister(keys=[conn_key(wallet), self._sockets_key], args=[sid])
        return int(remaining) == 0

    async def heartbeat(self) -> int:
        """Refresh this instance's liveness; returns how many sockets Redis holds for it."""
        held = await self._heartbeat(
            keys=[self._alive_key, INSTANCES_KEY, self._sockets_key],
            args=[self._ttl_ms, self.instance_id],
        )
        return int(held)

    async def reconcile(
        self, local_sockets: Callable[[], Awaitable[list[LocalSocket]]]
    ) -> tuple[list[str], list[str]]:
        """Make Redis hold exactly this instance's live sockets.

        Returns the wallets that came online (registered again) and went offline (stale
        sockets removed), for the caller to announce. Redis is read before the local sockets:
        a socket that connects or leaves in between is then at worst announced twice, never
        dropped while it is live.
        """
        raw = await self._redis.hgetall(self._sockets_key)
        held = {as_text(k): as_text(v) for k, v in raw.items()}
        local = await local_sockets()
        live = {sock.sid for sock in local}
        came = [sock.wallet for sock in local if sock.sid not in held and await self.register(sock)]
        went = [
            wallet
            for sid, wallet in held.items()
            if sid not in live and await self.unregister(sid, wallet)
        ]
        return came, went

    async def reap_dead_instances(self) -> list[str]:
        """Remove the sockets of instances whose heartbeat expired; returns wallets now offline."""
        offline: list[str] = []
        for raw in await self._redis.smembers(INSTANCES_KEY):
            instance = as_text(raw)
            if instance == self.instance_id:
                continue
            offline.extend(as_text(w) for w in await self._reap(args=[PREFIX, instance]))
        return offline

    async def online(self, wallets: list[str]) -> list[str]:
        if not wallets:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for wallet in wallets:
            pipe.exists(conn_key(wallet))
        found = await pipe.execute()
        return [wallet for wallet, exists in zip(wallets, found, strict=True) if exists]

    async def rtc_owners(self, wallet: str) -> set[str]:
        """The instances holding the wallet's RTC-capable sockets."""
        values = await self._redis.hvals(conn_key(wallet))
        return {text.rsplit("|", 1)[0] for text in map(as_text, values) if text.endswith("|1")}

    async def leave(self) -> None:
        """Graceful shutdown: drop the liveness key so the reaper cleans up at once."""
        await self._redis.delete(self._alive_key)
