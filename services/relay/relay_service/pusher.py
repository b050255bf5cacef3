"""The online push of stored relay messages (relay:message), published in the background.

A push is best effort: the message is in the store before the 202, and a recipient that misses
the push gets it from its next pull. So the answer does not wait for the publish. A push goes
only to the signal-service instances holding the recipient's sockets (rtc_common.bus: one
script reads presence and publishes); the pushes queued during one event-loop turn go to Redis
as one pipeline (one redis-py call costs far more client CPU than a command in a pipeline;
docs/benchmarks.md). One flush runs at a time, so pushes leave in the order they were queued: a
sender's next message, sent after this one's 202, is pushed after it (concurrent requests have
no order between them).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from redis.asyncio import Redis
from rtc_common.bus import AddressedBus, emit_message

from .metrics import PUSH_FAILURES, PUSHED

log = logging.getLogger("relay.pusher")

# Pushes waiting past this many are dropped (counted as failures; the pull delivers them).
MAX_PENDING = 10_000

_Push = tuple[str, tuple[bytes, bytes]]


class RelayPusher:
    def __init__(self, redis: Redis, channel: str, max_pending: int = MAX_PENDING) -> None:
        self._bus = AddressedBus(redis, channel)
        # python-socketio's listener ignores messages carrying its own host id, never ours.
        self._host_id = uuid.uuid4().hex
        self._max_pending = max_pending
        self._pending: list[_Push] = []
        self._flusher: asyncio.Task[None] | None = None

    def push(self, wallet: str, event: str, data: Any) -> None:
        """Queue `event` for the sockets of `wallet` (its `user:` room)."""
        if len(self._pending) >= self._max_pending:
            PUSH_FAILURES.inc()
            return
        message = emit_message(event, data, namespace="/", host_id=self._host_id)
        self._pending.append((wallet, message))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # one turn, so that the requests of this turn join the batch
        while self._pending:
            batch, self._pending = self._pending, []
            # Started in queue order within one turn: the bus's batcher sends them as one
            # pipeline, in that order.
            results = await asyncio.gather(
                *(self._bus.fan_out([w], [f"user:{w}"], m) for w, m in batch),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                PUSH_FAILURES.inc(len(failed))
                log.warning(
                    "relay push failed",
                    extra={"error": type(failed[0]).__name__, "count": len(failed)},
                )
            PUSHED.inc(len(batch) - len(failed))

    async def drain(self) -> None:
        """Let the pushes already queued leave (at a graceful stop; bound it with a timeout)."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
