"""Revoked wallets: an operator ends a user's access at once (ice-service's admin route writes,
every service enforces).

Every instance holds the whole set in memory: loaded at start, kept current through one Redis
pub/sub channel, reloaded after a reconnect and every RELOAD_SECONDS. A check is a dict lookup
(no Redis call per request), and it keeps working while Redis is down.

Redis: the hash `rtc:revoked` (wallet -> {"at": epoch s, "until": epoch s or null}) is the record;
the channel `rtc:revoked:changes` carries each change ({"wallet", "at", "until"} or
{"wallet", "lifted": true}).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .clients import as_text
from .errors import ApiError
from .keys import add_dependency
from .metrics import REVOKED_WALLETS
from .tasks import stop_task

log = logging.getLogger("rtc.revocation")

REVOKED_HASH = "rtc:revoked"
REVOKED_CHANNEL = "rtc:revoked:changes"
# At most this many wallets revoked at once (what every instance holds in memory: ~200 B each).
REVOKED_MAX = 100_000
# The longest timed revocation; longer ones are revocations until lifted.
REVOKE_MAX_SECONDS = 366 * 86400
# A full reload this often, in case a change was published while this instance was not listening.
RELOAD_SECONDS = 30.0
RETRY_SECONDS = 1.0


def revoked_error() -> ApiError:
    return ApiError("revoked", "access revoked for this user")


@dataclass(frozen=True, slots=True)
class Revocation:
    at: float
    until: float | None  # None: until lifted

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def as_json(self, wallet: str) -> dict[str, Any]:
        return {"wallet": wallet, "at": self.at, "until": self.until}


# Called with (wallet, revocation) when a wallet becomes revoked, (wallet, None) when lifted.
Listener = Callable[[str, Revocation | None], None]


class Revocations:
    """The in-memory set and its listener task. Built without I/O; `run` keeps it current."""

    def __init__(self) -> None:
        self._entries: dict[str, Revocation] = {}
        self._listeners: list[Listener] = []
        self.loaded = asyncio.Event()

    def is_revoked(self, wallet: str) -> bool:
        entry = self._entries.get(wallet)
        if entry is None:
            return False
        if entry.active(time.time()):
            return True
        del self._entries[wallet]  # a timed revocation that ran out
        REVOKED_WALLETS.set(len(self._entries))
        return False

    def items(self) -> list[tuple[str, Revocation]]:
        now = time.time()
        return [(w, e) for w, e in self._entries.items() if e.active(now)]

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _set(self, wallet: str, entry: Revocation | None) -> None:
        before = self._entries.get(wallet)
        if entry is None or not entry.active(time.time()):
            if self._entries.pop(wallet, None) is None:
                return
            entry = None
        elif before == entry:
            return
        else:
            self._entries[wallet] = entry
        REVOKED_WALLETS.set(len(self._entries))
        for listener in self._listeners:
            try:
                listener(wallet, entry)
            except Exception:
                log.exception("revocation listener failed")

    def apply(self, raw: bytes | str) -> None:
        """One change as published on REVOKED_CHANNEL; anything malformed is ignored."""
        try:
            change = orjson.loads(raw)
            wallet = change["wallet"]
            entry = None if change.get("lifted") else _entry(change)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("malformed revocation change ignored")
            return
        if isinstance(wallet, str):
            self._set(wallet, entry)

    def replace(self, record: Mapping[bytes | str, bytes | str]) -> None:
        """The whole hash as read from Redis: entries gone from it are lifted here too."""
        fresh: dict[str, Revocation] = {}
        for key, value in record.items():
            try:
                fresh[as_text(key)] = _entry(orjson.loads(value))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        for wallet in [w for w in self._entries if w not in fresh]:
            self._set(wallet, None)
        for wallet, entry in fresh.items():
            self._set(wallet, entry)

    async def run(self, redis: Redis) -> None:
        """Subscribe, then load the record (so no change falls between the two), then follow."""
        while True:
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(REVOKED_CHANNEL)
                self.replace(await redis.hgetall(REVOKED_HASH))
                self.loaded.set()
                reload_at = time.monotonic() + RELOAD_SECONDS
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self.apply(message["data"])
                    if time.monotonic() >= reload_at:
                        self.replace(await redis.hgetall(REVOKED_HASH))
                        reload_at = time.monotonic() + RELOAD_SECONDS
            except (RedisError, OSError) as exc:
                # What is held stays enforced; a reload follows the reconnect.
                log.warning("revocation listener interrupted", extra={"error": type(exc).__name__})
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(RETRY_SECONDS)

    async def revoke(self, redis: Redis, wallet: str, seconds: int | None) -> Revocation:
        """Record and publish a revocation (applied here at once, elsewhere within a round trip)."""
        now = time.time()
        entry = Revocation(at=now, until=now + seconds if seconds else None)
        if wallet not in self._entries and await redis.hlen(REVOKED_HASH) >= REVOKED_MAX:
            await self._prune(redis)
            if await redis.hlen(REVOKED_HASH) >= REVOKED_MAX:
                raise ApiError(
                    "queue_full", f"at most {REVOKED_MAX} wallets can be revoked at once"
                )
        change = orjson.dumps(entry.as_json(wallet))
        stored = orjson.dumps({"at": entry.at, "until": entry.until})
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(REVOKED_HASH, wallet, stored)
            pipe.publish(REVOKED_CHANNEL, change)
            await pipe.execute()
        self._set(wallet, entry)
        return entry

    async def lift(self, redis: Redis, wallet: str) -> bool:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hdel(REVOKED_HASH, wallet)
            pipe.publish(REVOKED_CHANNEL, orjson.dumps({"wallet": wallet, "lifted": True}))
            removed, _ = await pipe.execute()
        self._set(wallet, None)
        return bool(removed)

    async def _prune(self, redis: Redis) -> None:
        now = time.time()
        expired = []
        async for key, value in redis.hscan_iter(REVOKED_HASH, count=1000):
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                if not _entry(orjson.loads(value)).active(now):
                    expired.append(key)
        for start in range(0, len(expired), 1000):
            await redis.hdel(REVOKED_HASH, *expired[start : start + 1000])


def _entry(data: Any) -> Revocation:
    at = data["at"]
    until = data.get("until")
    if not isinstance(at, int | float) or not (until is None or isinstance(until, int | float)):
        raise ValueError("malformed revocation")
    return Revocation(at=float(at), until=None if until is None else float(until))


REVOCATIONS_KEY = web.AppKey("rtc_revocations", Revocations)


def revocations_context(
    redis_key: web.AppKey[Redis],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Keep `app[REVOCATIONS_KEY]` current from the Redis at `redis_key` (appended after that
    Redis's own context). Not ready until the set was loaded once: an instance that never read
    it would let every revoked user in."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        revocations = app[REVOCATIONS_KEY]
        task = asyncio.create_task(revocations.run(app[redis_key]), name="revocations")

        async def loaded() -> None:
            await revocations.loaded.wait()  # bounded by the readiness timeout

        add_dependency(app, "revocations", loaded, required=True)
        yield
        await stop_task(task)

    return context
