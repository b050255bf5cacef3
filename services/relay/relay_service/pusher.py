"""The online push of stored relay messages (relay:message), published in the background.

A push is best effort: the message is in the store before the 202, and a recipient that misses
the push gets it from its next pull. So the answer does not wait for the publish, and the
publishes queued during one event-loop turn go to Redis as one pipeline (one redis-py call costs
far more client CPU than a command in a pipeline; docs/benchmarks.md). One flush runs at a time,
so pushes leave in the order they were queued: a sender's next message, sent after this one's
202, is pushed after it (concurrent requests have no order between them).

python-socketio's write-only `AsyncRedisManager` builds the message signal-service's manager
listens for; only its `_publish()` is replaced (it would make one call per message on a client of
its own, and log and drop a failure without raising), so the publishes go through the app's
Redis client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio
from redis.asyncio import Redis

from .metrics import PUSH_FAILURES, PUSHED

log = logging.getLogger("relay.pusher")

# Pushes waiting past this many are dropped (counted as failures; the pull delivers them).
MAX_PENDING = 10_000


class RelayPusher(socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(self, redis: Redis, channel: str, max_pending: int = MAX_PENDING) -> None:
        super().__init__(channel=channel, write_only=True)  # its own client is never made
        self._redis = redis
        self._max_pending = max_pending
        self._pending: list[str] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _publish(self, data: Any) -> None:
        if len(self._pending) >= self._max_pending:
            PUSH_FAILURES.inc()
            return
        self._pending.append(self.json.dumps(data))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # one turn, so that the requests of this turn join the batch
        while self._pending:
            batch, self._pending = self._pending, []
            pipe = self._redis.pipeline(transaction=False)
            for message in batch:
                pipe.publish(self.channel, message)
            try:
                await pipe.execute()
            except Exception as exc:
                PUSH_FAILURES.inc(len(batch))
                log.warning(
                    "relay push failed", extra={"error": type(exc).__name__, "count": len(batch)}
                )
            else:
                PUSHED.inc(len(batch))

    async def drain(self) -> None:
        """Let the pushes already queued leave (at a graceful stop; bound it with a timeout)."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
