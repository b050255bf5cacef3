"""The directory: feature flags now, contacts later. MongoDB in production, Redis embedded.

The backend is chosen by the scheme of DIRECTORY_URL. Reads on the hot path go through
`FlagCache`, which keeps answers for FLAG_CACHE_SECONDS and, when the directory fails, serves the
last known value for up to FLAG_STALE_MAX_SECONDS before answering 503 `unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from .clients import make_redis
from .errors import unavailable
from .metrics import DIRECTORY_ERRORS, FLAG_STALE_SERVED
from .settings import CommonSettings
from .web import READINESS_KEY

log = logging.getLogger("rtc.directory")

REDIS_FLAGS_KEY = "rtc:flags"
DIRECTORY_TIMEOUT_MS = 1000


class Directory(Protocol):
    backend: str

    async def get_flag(self, key: str) -> bool | None: ...
    async def set_flag(self, key: str, enabled: bool) -> None: ...
    async def list_flags(self) -> dict[str, bool]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class RedisDirectory:
    """Flags in one hash: field = flag key, value "1"/"0"."""

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
        return {_text(k): v in (b"1", "1") for k, v in raw.items()}

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


class MongoDirectory:
    """Flags are documents `{key, enabled}` in MONGO_FLAGS_COLLECTION of MONGO_DB."""

    backend = "mongodb"

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], settings: CommonSettings) -> None:
        self._client = client
        self._db = client[settings.mongo_db]
        self._flags = self._db[settings.mongo_flags_collection]

    async def get_flag(self, key: str) -> bool | None:
        doc = await self._flags.find_one({"key": key}, projection={"_id": 0, "enabled": 1})
        return None if doc is None else doc.get("enabled") is True

    async def set_flag(self, key: str, enabled: bool) -> None:
        await self._flags.update_one({"key": key}, {"$set": {"enabled": enabled}}, upsert=True)

    async def list_flags(self) -> dict[str, bool]:
        cursor = self._flags.find({}, projection={"_id": 0, "key": 1, "enabled": 1})
        return {str(doc["key"]): doc.get("enabled") is True async for doc in cursor if "key" in doc}

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shielded: a caller that goes away must not cancel the read others wait on.
        return await asyncio.shield(task)

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
        app[READINESS_KEY]["directory"] = directory.ping
        yield
        await directory.close()

    return context
