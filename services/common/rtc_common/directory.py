"""The directory: feature flags, contacts and the per-user RTC switch. MongoDB in production,
Redis embedded.

The backend is chosen by the scheme of DIRECTORY_URL. Flag reads on the hot path go through
`FlagCache`, which keeps answers for FLAG_CACHE_SECONDS and, when the directory fails, serves the
last known value for up to FLAG_STALE_MAX_SECONDS before answering 503 `unavailable`; contact and
RTC-switch answers go through `AccessCache` (cached for FLAG_CACHE_SECONDS, never an allow on
failure).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from .clients import as_text, make_redis
from .errors import unavailable
from .keys import add_dependency
from .metrics import DIRECTORY_ERRORS, FLAG_STALE_SERVED
from .settings import CommonSettings

log = logging.getLogger("rtc.directory")

REDIS_FLAGS_KEY = "rtc:flags"
REDIS_CONTACTS_PREFIX = "rtc:contacts:"
REDIS_RTC_DISABLED_KEY = "rtc:rtc_disabled"
DIRECTORY_TIMEOUT_MS = 1000


class Directory(Protocol):
    backend: str

    async def get_flag(self, key: str) -> bool | None: ...
    async def set_flag(self, key: str, enabled: bool) -> None: ...
    async def list_flags(self) -> dict[str, bool]: ...
    async def are_mutual_contacts(self, wallet_a: str, wallet_b: str) -> bool: ...
    async def mutual_contacts(self, wallet: str) -> list[str]: ...
    async def add_contact(self, owner: str, contact: str) -> None: ...
    async def remove_contact(self, owner: str, contact: str) -> None: ...
    async def is_rtc_enabled(self, wallet: str) -> bool: ...
    async def set_rtc_enabled(self, wallet: str, enabled: bool) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class RedisDirectory:
    """Flags in one hash (field = flag key, value "1"/"0"); contacts as one set per owner
    (`rtc:contacts:<wallet>`, one direction each); the RTC switch as the set of wallets whose
    RTC is disabled (`rtc:rtc_disabled`, absent = enabled)."""

    backend = "redis"

    def __init__(self, client: Redis) -> None:
        self._redis = client

    async def get_flag(self, key: str) -> bool | None:
        value = await self._redis.hget(REDIS_FLAGS_KEY, key)
        return None if value is None else value in (b"1", "1")

    async def set_flag(self, key: str, enabled: bool) -> None:
        await self._redis.hset(REDIS_FLAGS_KEY, key, "1" if enabled else "0")

    async def list_flags(self) -> dict[str, bool]:
        raw = await self._redis.hgetall(REDIS_FLAGS_KEY)
        return {as_text(k): v in (b"1", "1") for k, v in raw.items()}

    async def are_mutual_contacts(self, wallet_a: str, wallet_b: str) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        pipe.sismember(REDIS_CONTACTS_PREFIX + wallet_a, wallet_b)
        pipe.sismember(REDIS_CONTACTS_PREFIX + wallet_b, wallet_a)
        a_lists_b, b_lists_a = await pipe.execute()
        return bool(a_lists_b) and bool(b_lists_a)

    async def mutual_contacts(self, wallet: str) -> list[str]:
        listed = sorted(
            as_text(v) for v in await self._redis.smembers(REDIS_CONTACTS_PREFIX + wallet)
        )
        if not listed:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for contact in listed:
            pipe.sismember(REDIS_CONTACTS_PREFIX + contact, wallet)
        back = await pipe.execute()
        return [contact for contact, mutual in zip(listed, back, strict=True) if mutual]

    async def add_contact(self, owner: str, contact: str) -> None:
        await self._redis.sadd(REDIS_CONTACTS_PREFIX + owner, contact)

    async def remove_contact(self, owner: str, contact: str) -> None:
        await self._redis.srem(REDIS_CONTACTS_PREFIX + owner, contact)

    async def is_rtc_enabled(self, wallet: str) -> bool:
        return not await self._redis.sismember(REDIS_RTC_DISABLED_KEY, wallet)

    async def set_rtc_enabled(self, wallet: str, enabled: bool) -> None:
        if enabled:
            await self._redis.srem(REDIS_RTC_DISABLED_KEY, wallet)
        else:
            await self._redis.sadd(REDIS_RTC_DISABLED_KEY, wallet)

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


class MongoDirectory:
    """Flags are documents `{key, enabled}` in MONGO_FLAGS_COLLECTION of MONGO_DB; contacts are
    `{wallet, contact}` (one document per direction) in MONGO_CONTACTS_COLLECTION; the RTC switch
    is `{wallet, rtcEnabled}` in MONGO_USERS_COLLECTION (no document or no field = enabled)."""

    backend = "mongodb"

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], settings: CommonSettings) -> None:
        self._client = client
        self._db = client[settings.mongo_db]
        self._flags = self._db[settings.mongo_flags_collection]
        self._contacts = self._db[settings.mongo_contacts_collection]
        self._users = self._db[settings.mongo_users_collection]

    async def get_flag(self, key: str) -> bool | None:
        doc = await self._flags.find_one({"key": key}, projection={"_id": 0, "enabled": 1})
        return None if doc is None else doc.get("enabled") is True

    async def set_flag(self, key: str, enabled: bool) -> None:
        await self._flags.update_one({"key": key}, {"$set": {"enabled": enabled}}, upsert=True)

    async def list_flags(self) -> dict[str, bool]:
        cursor = self._flags.find({}, projection={"_id": 0, "key": 1, "enabled": 1})
        return {str(doc["key"]): doc.get("enabled") is True async for doc in cursor if "key" in doc}

    async def are_mutual_contacts(self, wallet_a: str, wallet_b: str) -> bool:
        # Each direction on its own: a count over both would take a duplicated document of one
        # direction for the missing other one.
        for owner, contact in ((wallet_a, wallet_b), (wallet_b, wallet_a)):
            found = await self._contacts.find_one(
                {"wallet": owner, "contact": contact}, projection={"_id": 1}
            )
            if found is None:
                return False
        return True

    async def mutual_contacts(self, wallet: str) -> list[str]:
        listed = [
            str(doc["contact"])
            async for doc in self._contacts.find(
                {"wallet": wallet}, projection={"_id": 0, "contact": 1}
            )
            if "contact" in doc
        ]
        if not listed:
            return []
        back = self._contacts.find(
            {"wallet": {"$in": listed}, "contact": wallet}, projection={"_id": 0, "wallet": 1}
        )
        return sorted({str(doc["wallet"]) async for doc in back if "wallet" in doc})

    async def add_contact(self, owner: str, contact: str) -> None:
        await self._contacts.update_one(
            {"wallet": owner, "contact": contact},
            {"$setOnInsert": {"wallet": owner, "contact": contact}},
            upsert=True,
        )

    async def remove_contact(self, owner: str, contact: str) -> None:
        await self._contacts.delete_many({"wallet": owner, "contact": contact})

    async def is_rtc_enabled(self, wallet: str) -> bool:
        doc = await self._users.find_one({"wallet": wallet}, projection={"_id": 0, "rtcEnabled": 1})
        return doc is None or doc.get("rtcEnabled") is not False

    async def set_rtc_enabled(self, wallet: str, enabled: bool) -> None:
        await self._users.update_one(
            {"wallet": wallet}, {"$set": {"rtcEnabled": enabled}}, upsert=True
        )

    async def ping(self) -> None:
        await self._db.command("ping")

    async def close(self) -> None:
        await self._client.close()


def open_directory(settings: CommonSettings) -> Directory:
    """Build the backend named by DIRECTORY_URL. No I/O happens until the first call."""
    url = settings.effective_directory_url
    if url.startswith("mongodb"):
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url,
            serverSelectionTimeoutMS=DIRECTORY_TIMEOUT_MS,
            connectTimeoutMS=DIRECTORY_TIMEOUT_MS,
            socketTimeoutMS=2 * DIRECTORY_TIMEOUT_MS,
            appname=settings.service_name,
        )
        return MongoDirectory(client, settings)
    return RedisDirectory(make_redis(url))


@dataclass(slots=True)
class _Entry:
    value: bool
    fetched_at: float  # last successful read
    checked_at: float  # last attempt, successful or not


class FlagCache:
    """In-process flag cache with single-flight refresh and bounded staleness on failure."""

    def __init__(
        self,
        directory: Directory,
        *,
        ttl: float,
        stale_max: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = directory
        self._ttl = ttl
        self._stale_max = stale_max
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[bool]] = {}

    async def is_enabled(self, key: str) -> bool:
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry.checked_at < self._ttl:
            return self._usable(entry, now)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh(key))
            self._inflight[key] = task
            task.add_done_callback(self._refresh_done(key))
        if (
            entry is not None
            and entry.checked_at != entry.fetched_at
            and now - entry.fetched_at <= self._stale_max
        ):
            # The directory failed last time: answer from the last known value now rather than
            # make every request wait out another failing read (the refresh goes on behind).
            return self._usable(entry, now)
        # Shielded: a caller that goes away must not cancel the read others wait on.
        return await asyncio.shield(task)

    def _refresh_done(self, key: str) -> Callable[[asyncio.Task[bool]], None]:
        def done(task: asyncio.Task[bool]) -> None:
            self._inflight.pop(key, None)
            if not task.cancelled():
                task.exception()  # retrieved: a background refresh's failure is already logged

        return done

    def _usable(self, entry: _Entry, now: float) -> bool:
        if now - entry.fetched_at > self._ttl:
            # The directory failed at the last attempt: this is a last known value.
            if now - entry.fetched_at > self._stale_max:
                raise unavailable("directory unavailable")
            FLAG_STALE_SERVED.inc()
        return entry.value

    async def _refresh(self, key: str) -> bool:
        try:
            value = await self._directory.get_flag(key) is True
        except Exception as exc:  # any backend failure: redis, pymongo, network
            DIRECTORY_ERRORS.labels(self._directory.backend).inc()
            log.warning(
                "directory read failed",
                extra={
                    "flag": key,
                    "backend": self._directory.backend,
                    "error": type(exc).__name__,
                },
            )
            now = self._clock()
            entry = self._entries.get(key)
            if entry is None:
                raise unavailable("directory unavailable") from None
            entry.checked_at = now
            return self._usable(entry, now)
        now = self._clock()
        self._entries[key] = _Entry(value=value, fetched_at=now, checked_at=now)
        return value


DIRECTORY_KEY = web.AppKey("rtc_directory", Directory)
FLAGS_KEY = web.AppKey("rtc_flags", FlagCache)


def directory_context(settings: CommonSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        directory = open_directory(settings)
        app[DIRECTORY_KEY] = directory
        app[FLAGS_KEY] = FlagCache(
            directory, ttl=settings.flag_cache_seconds, stale_max=settings.flag_stale_max_seconds
        )
        # Not required: without it a request is answered 503 `unavailable` (flags from their
        # cache until FLAG_STALE_MAX_SECONDS), and every instance shares the same directory.
        add_dependency(app, "directory", directory.ping, required=False)
        yield
        await directory.close()

    return context


class AccessCache:
    """Short-lived answers to contacts and RTC-switch questions (signaling's hot path).

    Unlike flags there is no stale serving: a question the directory cannot answer now is
    `unavailable`, never an allow. Answers live `ttl` seconds, so a removed contact or a disabled
    user takes effect within that time on every instance.
    """

    MAX_ENTRIES = 100_000

    def __init__(
        self, directory: Directory, *, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._directory = directory
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str, ...], tuple[float, Any]] = OrderedDict()

    async def _cached(self, key: tuple[str, ...], load: Callable[[], Awaitable[Any]]) -> Any:
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            value = await load()
        except Exception as exc:  # any backend failure: never an allow
            DIRECTORY_ERRORS.labels(self._directory.backend).inc()
            log.warning(
                "directory read failed",
                extra={
                    "question": key[0],
                    "backend": self._directory.backend,
                    "error": type(exc).__name__,
                },
            )
            raise unavailable("directory unavailable") from None
        self._entries[key] = (now, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.MAX_ENTRIES:
            self._entries.popitem(last=False)
        return value

    def known_mutual_contacts(self, wallet_a: str, wallet_b: str) -> bool | None:
        """The cached answer of are_mutual_contacts(), or None when asking needs the directory."""
        first, second = sorted((wallet_a, wallet_b))
        hit = self._entries.get(("mutual", first, second))
        if hit is None or self._clock() - hit[0] >= self._ttl:
            return None
        return bool(hit[1])

    async def are_mutual_contacts(self, wallet_a: str, wallet_b: str) -> bool:
        first, second = sorted((wallet_a, wallet_b))
        return bool(
            await self._cached(
                ("mutual", first, second),
                lambda: self._directory.are_mutual_contacts(first, second),
            )
        )

    async def mutual_contacts(self, wallet: str) -> list[str]:
        contacts: list[str] = await self._cached(
            ("contacts", wallet), lambda: self._directory.mutual_contacts(wallet)
        )
        return contacts

    async def is_rtc_enabled(self, wallet: str) -> bool:
        return bool(
            await self._cached(("rtc", wallet), lambda: self._directory.is_rtc_enabled(wallet))
        )
