"""Lua scripts issued in the same event-loop turn go to Redis as one pipeline.

Each redis-py call costs far more CPU in the client than in Redis, and a command in a pipeline
far less than a call of its own (figures in docs/benchmarks.md). Under load many requests reach
the same await in one loop turn: their rate-limit checks and relay enqueues then share one round
trip. Alone, a call waits one loop turn more, nothing else.
Each caller gets its own result or exception; a connection failure reaches every caller of the
batch as the RedisError it is, so the callers' fallbacks (and 503s) work as before.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

MAX_BATCH = 256
_Entry = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[_Entry] = []
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future))
        if len(self._pending) == 1:
            # Runs after every callback already queued for this turn has made its call.
            loop.call_soon(self._flush)
        elif len(self._pending) >= MAX_BATCH:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Entry]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            results = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (script, keys, args, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, NoScriptError):
                # Redis restarted or its scripts were flushed: the script call loads it again.
                try:
                    future.set_result(await script(keys=keys, args=args))
                except Exception as exc:
                    future.set_exception(exc)
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


class KeyedScriptBatch:
    """Calls of one script that differ only in their key, made in one loop turn, as ONE call.

    The script takes every key of the turn (KEYS) and the shared ARGV, and answers a list with
    one entry per key, in order. Cheaper than a pipeline of one call per key: one command to
    pack and parse, one script run in Redis. The call still goes through the ScriptBatcher, so
    it shares its round trip with the other scripts of the turn.
    """

    def __init__(self, batcher: ScriptBatcher, script: AsyncScript, args: Sequence[Any]) -> None:
        self._batcher = batcher
        self._script = script
        self._args = args
        self._keys: list[Any] = []
        self._futures: list[asyncio.Future[Any]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, key: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._keys.append(key)
        self._futures.append(future)
        if len(self._keys) == 1:
            loop.call_soon(self._flush)
        elif len(self._keys) >= MAX_BATCH:
            self._flush()
        return await future

    def _flush(self) -> None:
        if not self._keys:
            return
        keys, futures = self._keys, self._futures
        self._keys, self._futures = [], []
        task = asyncio.get_running_loop().create_task(self._execute(keys, futures))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _execute(self, keys: list[Any], futures: list[asyncio.Future[Any]]) -> None:
        try:
            results = await self._batcher.run(self._script, keys, self._args)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)


_BATCHERS: weakref.WeakKeyDictionary[Redis, ScriptBatcher] = weakref.WeakKeyDictionary()


def batcher_for(redis: Redis) -> ScriptBatcher:
    """The one batcher of a Redis client (batches are per connection pool)."""
    batcher = _BATCHERS.get(redis)
    if batcher is None:
        batcher = _BATCHERS[redis] = ScriptBatcher(redis)
    return batcher
