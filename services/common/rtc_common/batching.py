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
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

MAX_BATCH = 256
PayloadT = TypeVar("PayloadT")


class _TurnBatch(Generic[PayloadT]):
    """Calls made in one loop turn, gathered and then sent by one task (`_call`); each caller
    gets the answer at its place, and a failed call reaches every caller of the batch."""

    def __init__(self) -> None:
        self._pending: list[tuple[PayloadT, asyncio.Future[Any]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def _join(self, payload: PayloadT) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((payload, future))
        if len(self._pending) == 1:
            # Runs after every callback already queued for this turn has made its call.
            loop.call_soon(self._flush)
        elif len(self._pending) >= MAX_BATCH:
            self._flush()
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[tuple[PayloadT, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._call([payload for payload, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (payload, future), result in zip(batch, results, strict=True):
            if not future.done():
                await self._settle(payload, future, result)

    async def _call(self, payloads: list[PayloadT]) -> list[Any]:
        raise NotImplementedError

    async def _settle(self, payload: PayloadT, future: asyncio.Future[Any], result: Any) -> None:
        future.set_result(result)


_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any]]


class ScriptBatcher(_TurnBatch[_Call]):
    def __init__(self, redis: Redis) -> None:
        super().__init__()
        self._redis = redis

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self._join((script, keys, args))

    async def _call(self, payloads: list[_Call]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args in payloads:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    async def _settle(self, payload: _Call, future: asyncio.Future[Any], result: Any) -> None:
        if isinstance(result, NoScriptError):
            # Redis restarted or its scripts were flushed: the script call loads it again.
            script, keys, args = payload
            try:
                future.set_result(await script(keys=keys, args=args))
            except Exception as exc:
                future.set_exception(exc)
        elif isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


class KeyedScriptBatch(_TurnBatch[Any]):
    """Calls of one script that differ only in their key, made in one loop turn, as ONE call.

    The script takes every key of the turn (KEYS) and the shared ARGV, and answers a list with
    one entry per key, in order. Cheaper than a pipeline of one call per key: one command to
    pack and parse, one script run in Redis. The call still goes through the ScriptBatcher, so
    it shares its round trip with the other scripts of the turn.
    """

    def __init__(self, batcher: ScriptBatcher, script: AsyncScript, args: Sequence[Any]) -> None:
        super().__init__()
        self._batcher = batcher
        self._script = script
        self._args = args

    async def run(self, key: Any) -> Any:
        return await self._join(key)

    async def _call(self, payloads: list[Any]) -> list[Any]:
        result: list[Any] = await self._batcher.run(self._script, payloads, self._args)
        return result


_BATCHERS: weakref.WeakKeyDictionary[Redis, ScriptBatcher] = weakref.WeakKeyDictionary()


def batcher_for(redis: Redis) -> ScriptBatcher:
    """The one batcher of a Redis client (batches are per connection pool)."""
    batcher = _BATCHERS.get(redis)
    if batcher is None:
        batcher = _BATCHERS[redis] = ScriptBatcher(redis)
    return batcher
