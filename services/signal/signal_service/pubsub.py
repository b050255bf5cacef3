"""python-socketio's Redis manager: addressed delivery, observable, quick to recover.

Emits to wallets' rooms go only to the instances holding those wallets (rtc_common.bus); emits to
a socket of this instance are not published at all; everything else (true broadcasts, and the
fallback when Redis failed mid-signal) keeps the stock shared channel.

A known failure of Redis-backed Socket.IO is a listener that silently stops receiving: the
instance keeps accepting sockets but never sees the other instances' emits. `probe()` publishes a
message on this instance's own channel and waits until its listener receives it, which proves
the whole path (publish, subscription, listener task). The stock retry loop backs off up to 60 s;
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
from rtc_common.bus import (
    ADDRESSED_SUFFIX,
    AddressedBus,
    Codec,
    emit_message,
    instance_channel,
    wallet_of_room,
)
from rtc_common.clients import CONNECT_TIMEOUT_SECONDS
from rtc_common.redis_address import remembering_options
from rtc_common.rooms import IndexedRooms

from .metrics import BUS_MESSAGES, PUBLISH_FAILURES

log = logging.getLogger("signal.pubsub")

MAX_RETRY_SECONDS = 1.0
_PROBE_METHOD = "rtc_probe"
# Every connection of an instance's manager is named `<prefix><instance id>`, so that Redis can
# tell which instances' listeners are subscribed right now (CLIENT LIST TYPE pubsub).
CLIENT_NAME_PREFIX = "rtc-signal:"


# Set (in the emitting task's context) when the stock _publish() gave up: the emit reached this
# instance's own sockets only.
PUBLISH_FAILED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "publish_failed", default=False
)


class ObservedRedisManager(IndexedRooms, socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(self, url: str, channel: str, instance_id: str | None = None) -> None:
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "socket_keepalive": True,
            "health_check_interval": 10,
            **remembering_options(url),
        }
        if instance_id is not None:
            options["client_name"] = CLIENT_NAME_PREFIX + instance_id
        super().__init__(url, channel=channel, redis_options=options, json=Codec)
        self.own_channel = instance_channel(channel, instance_id) if instance_id else None
        # Set once the app's Redis client exists (signal-service's cleanup context).
        self.bus: AddressedBus | None = None
        self.draining = False
        self._probes: dict[str, asyncio.Future[None]] = {}
        self.subscribed = False

    def set_server(self, server: Any) -> None:
        super().set_server(server)
        self.json = Codec  # the stock set_server() puts the packets' JSON module back

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
                own = [self.own_channel] if self.own_channel and not self.draining else []
                await self.pubsub.subscribe(self.channel, *own)
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

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        namespace = namespace or "/"
        stock = kwargs.get("ignore_queue") or callback is not None or room is None
        if not stock and isinstance(room, str) and self.is_connected(room, namespace):
            # A socket of this instance: no other instance holds it.
            stock, kwargs = True, {**kwargs, "ignore_queue": True}
        rooms = [room] if isinstance(room, str) else list(room or ())
        wallets = [wallet_of_room(r) for r in rooms]
        if stock or self.bus is None or not rooms or None in wallets:
            await super().emit(
                event, data, namespace, room, skip_sid=skip_sid, callback=callback, **kwargs
            )
            return
        await super().emit(event, data, namespace, room, skip_sid=skip_sid, ignore_queue=True)
        message = emit_message(
            event, data, namespace=namespace, host_id=self.host_id, skip_sid=skip_sid
        )
        try:
            await self.bus.fan_out([w for w in wallets if w is not None], rooms, message)
        except Exception as exc:  # as the stock _publish(): this instance's sockets got it
            PUBLISH_FAILED.set(True)
            PUBLISH_FAILURES.inc()
            log.warning("addressed publish failed", extra={"error": type(exc).__name__})

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
        # The stock _listen() reads the shared channel only.
        shared = self.channel.encode()
        probe_mark = b'"' + _PROBE_METHOD.encode() + b'"'
        async for message in self._redis_listen_with_retries():
            if message.get("type") != "message" or "data" not in message:
                continue
            data = message["data"]
            if probe_mark in data:
                with contextlib.suppress(ValueError, AttributeError):
                    decoded = json.loads(data)
                    if decoded.get("method") == _PROBE_METHOD:
                        waiter = self._probes.get(str(decoded.get("id")))
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)
                        continue
            if message.get("channel") == shared:
                if data.endswith(ADDRESSED_SUFFIX):
                    # An addressed message's fallback copy, for instances older than addressed
                    # delivery: this instance receives its own copies on its own channel.
                    BUS_MESSAGES.labels("shared_skipped").inc()
                    continue
                BUS_MESSAGES.labels("shared").inc()
            else:
                BUS_MESSAGES.labels("own").inc()
            yield data

    async def probe(self, wait: float = 1.0, *, shared: bool = False) -> None:
        """Raise unless a message published now comes back through this instance's listener
        (on its own channel, or on the shared one)."""
        if not self.subscribed:
            raise ConnectionError("pub/sub listener is not subscribed")
        probe_id = uuid.uuid4().hex
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[probe_id] = waiter
        try:
            # Published directly: the stock _publish() swallows errors, a probe must not.
            await self.redis.publish(
                self.channel if shared or self.draining else (self.own_channel or self.channel),
                json.dumps({"method": _PROBE_METHOD, "id": probe_id, "host_id": self.host_id}),
            )
            await asyncio.wait_for(waiter, wait)
        finally:
            self._probes.pop(probe_id, None)

    async def drain(self, wait: float = 2.0) -> None:
        """At a graceful stop, before the sockets close: take no more addressed messages, and
        return once those already sent here went out to the sockets.

        Unsubscribed from its own channel, the instance looks to route scripts like one whose
        listener is down: signals to its sockets are refused `unavailable` (retried by the
        client once it reconnects elsewhere) instead of being acked while the socket closes.
        A probe on the shared channel, published once Redis has dropped the subscription,
        comes back after every message sent here before it (one connection, in order).
        """
        if not self.own_channel or not self.subscribed:
            return
        self.draining = True
        async with asyncio.timeout(wait):
            await self.pubsub.unsubscribe(self.own_channel)
            for _ in range(int(wait * 100)):  # Redis has it within a round trip or two
                if (await self.redis.pubsub_numsub(self.own_channel))[0][1] == 0:
                    break
                await asyncio.sleep(0.01)
            await self.probe(wait, shared=True)

    async def resubscribe(self) -> None:
        """Drop the pub/sub connection so the listener loop reconnects from scratch."""
        log.warning("pub/sub listener did not receive its own probe; resubscribing")
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
