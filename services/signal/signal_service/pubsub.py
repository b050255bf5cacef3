"""python-socketio's Redis manager, made observable and quick to recover.

A known failure of Redis-backed Socket.IO is a listener that silently stops receiving: the
instance keeps accepting sockets but never sees the other instances' emits. `probe()` publishes a
message on the channel and waits until this instance's own listener receives it, which proves the
whole path (publish, subscription, listener task). The stock retry loop backs off up to 60 s;
here it is capped at `MAX_RETRY_SECONDS` so that cross-instance delivery returns quickly once
Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import socketio
from rtc_common.rooms import IndexedRooms

from .metrics import PUBLISH_FAILURES

log = logging.getLogger("signal.pubsub")

MAX_RETRY_SECONDS = 1.0
_PROBE_METHOD = "rtc_probe"
# Every connection of an instance's manager is named `<prefix><instance id>`, so that Redis can
# tell which instances' listeners are subscribed right now (CLIENT LIST TYPE pubsub).
CLIENT_NAME_PREFIX = "rtc-signal:"


def instance_channel(channel: str, instance_id: str) -> str:
    """The channel only `instance_id`'s listener subscribes to (nothing is published on it)."""
    return f"{channel}#{instance_id}"


# Set (in the emitting task's context) when the stock _publish() gave up: the emit reached this
# instance's own sockets only.
PUBLISH_FAILED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "publish_failed", default=False
)


class ObservedRedisManager(IndexedRooms, socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(self, url: str, channel: str, instance_id: str | None = None) -> None:
        options: dict[str, Any] = {
            "socket_connect_timeout": 1.0,
            "socket_keepalive": True,
            "health_check_interval": 10,
        }
        if instance_id is not None:
            options["client_name"] = CLIENT_NAME_PREFIX + instance_id
        super().__init__(url, channel=channel, redis_options=options)
        self._marker = [instance_channel(channel, instance_id)] if instance_id is not None else []
        self._probes: dict[str, asyncio.Future[None]] = {}
        self.subscribed = False

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        retry = 0.1
        while True:
            try:
                if getattr(self, "redis", None) is None:
                    self._redis_connect()
                else:
                    # Reuse the client (and its pool); only the subscription is made anew.
                    self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                # One SUBSCRIBE for both: the instance's own channel has a subscriber exactly
                # while this listener is subscribed to the shared one (see `listening`).
                await self.pubsub.subscribe(self.channel, *self._marker)
                self.subscribed = True
                retry = 0.1
                async for message in self.pubsub.listen():
                    yield message
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any Redis/network failure: resubscribe after a pause
                if self.subscribed:
                    log.warning("pub/sub listener lost redis", extra={"error": type(exc).__name__})
                self.subscribed = False
                # redis-py may already have reconnected this pubsub (and resubscribed it) before
                # raising; close it, or it stays subscribed with nobody reading it, piling up
                # the channel's traffic in Redis beside the fresh subscription made next.
                with contextlib.suppress(Exception):
                    await self.pubsub.aclose()
                await asyncio.sleep(retry)
                retry = min(retry * 2, MAX_RETRY_SECONDS)

    async def _publish(self, data: Any) -> Any:
        # The stock method logs and returns None when Redis refused the message twice.
        result = await super()._publish(data)
        if result is None:
            PUBLISH_FAILED.set(True)
            PUBLISH_FAILURES.inc()
        return result

    async def listening(self, instances: set[str]) -> bool:
        """Are the listeners of these instances subscribed now (so a publish reaches them)?

        After Redis restarts, each listener subscribes again within `MAX_RETRY_SECONDS`; a
        message published before that is lost for that instance (pub/sub keeps nothing). Each
        listener also subscribes its instance's own channel in the same command, so that
        channel's subscriber count says whether that very instance listens (a count of the shared
        channel's subscribers does not: the registry of instances is rebuilt after a restart).
        """
        if getattr(self, "redis", None) is None:
            return False
        if not instances:
            return True
        counts = await self.redis.pubsub_numsub(
            *(instance_channel(self.channel, i) for i in instances)
        )
        return all(int(count) > 0 for _, count in counts)

    async def _listen(self) -> AsyncIterator[Any]:
        async for data in super()._listen():
            if b'"' + _PROBE_METHOD.encode() + b'"' in data:
                with contextlib.suppress(ValueError, AttributeError):
                    message = json.loads(data)
                    if message.get("method") == _PROBE_METHOD:
                        waiter = self._probes.get(str(message.get("id")))
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)
                        continue
            yield data

    async def probe(self, wait: float = 1.0) -> None:
        """Raise unless a message published now comes back through this instance's listener."""
        if not self.subscribed:
            raise ConnectionError("pub/sub listener is not subscribed")
        probe_id = uuid.uuid4().hex
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[probe_id] = waiter
        try:
            # Published directly: the stock _publish() swallows errors, a probe must not.
            await self.redis.publish(
                self.channel,
                json.dumps({"method": _PROBE_METHOD, "id": probe_id, "host_id": self.host_id}),
            )
            await asyncio.wait_for(waiter, wait)
        finally:
            self._probes.pop(probe_id, None)

    async def resubscribe(self) -> None:
        """Drop the pub/sub connection so the listener loop reconnects from scratch."""
        log.warning("pub/sub listener did not receive its own probe; resubscribing")
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
