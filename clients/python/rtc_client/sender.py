"""Draining the outbox: one worker per conversation sends its queued messages in order, each
retried with capped exponential backoff and jitter until it is accepted or refused for good.

What an attempt's answer means (the relay's HTTP answer; the data channel's ACK is `sent`):

| answer | next |
|---|---|
| 2xx from relay-service, or the peer's ACK | `sent` |
| 401 | a fresh token from the token provider, then again (`failed` `unauthorized` without one) |
| 429 (not before its Retry-After), 5xx, 507, no answer | again, after the backoff |
| 400, 403, 404, 413 and any other 4xx | `failed` with the server's code |
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rtc_client.errors import RtcClientError
from rtc_client.model import Delivery
from rtc_client.options import ClientOptions
from rtc_client.outbox import OutboxStore, OutgoingMessage, retry_delay

log = logging.getLogger("rtc_client")


@dataclass(frozen=True)
class Sent:
    delivery: Delivery


@dataclass(frozen=True)
class Failed:
    code: str
    status: int | None = None


@dataclass(frozen=True)
class Retry:
    reason: str
    retry_after: float | None = None


Outcome = Sent | Failed | Retry
Attempt = Callable[[OutgoingMessage], Awaitable[Outcome]]


class Sender:
    def __init__(self, store: OutboxStore, options: ClientOptions, attempt: Attempt) -> None:
        self.store = store
        self.options = options
        self._attempt = attempt
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._kicks: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, list[asyncio.Future[Outcome]]] = {}
        self._running = False

    def start(self) -> None:
        """Send what earlier runs left queued, and from now on what is added."""
        self._running = True
        for conv in dict.fromkeys(m.conv_id for m in self.store.queued()):
            self.wake(conv)

    def wake(self, conv_id: str) -> None:
        if not self._running:
            return
        if conv_id not in self._workers:
            self._kicks[conv_id] = asyncio.Event()
            self._workers[conv_id] = asyncio.ensure_future(self._drain(conv_id))

    def kick(self) -> None:
        """Retry now instead of at the end of the backoff (the connection came back); an attempt
        under way is followed by the next one at once."""
        for event in self._kicks.values():
            event.set()

    def waiter(self, message_id: str) -> asyncio.Future[Outcome]:
        """Resolved when `message_id` settles (register it before the message can settle)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(message_id, []).append(future)
        return future

    def forget(self, message_id: str, future: asyncio.Future[Outcome]) -> None:
        futures = self._waiters.get(message_id, [])
        if future in futures:
            futures.remove(future)
        if not futures:
            self._waiters.pop(message_id, None)

    async def close(self) -> None:
        self._running = False
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(RtcClientError("closed", "the client was closed"))

    async def _drain(self, conv_id: str) -> None:
        try:
            await self._send_all(conv_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store failed (disk full, locked): retried later
            log.warning("outbox worker failed", extra={"error": type(exc).__name__})
            self._workers.pop(conv_id, None)
            self._kicks.pop(conv_id, None)
            if self._running:
                await asyncio.sleep(self.options.retry_delay_max)
                self.wake(conv_id)

    async def _send_all(self, conv_id: str) -> None:
        attempts: dict[str, int] = {}
        kick = self._kicks[conv_id]
        while self._running:
            queued = self.store.queued(conv_id)
            if not queued:
                # Synchronously with the check: an add after it starts a new worker.
                del self._workers[conv_id]
                self._kicks.pop(conv_id, None)
                return
            message = queued[0]
            kick.clear()  # a kick during this attempt skips the backoff after it
            done = attempts.get(message.message_id, message.attempts)
            try:
                outcome = await self._attempt(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the token provider failed, say: the message stays queued
                log.warning("send attempt failed", extra={"error": type(exc).__name__})
                outcome = Retry(type(exc).__name__)
            done += 1
            attempts[message.message_id] = done
            if isinstance(outcome, Retry):
                # Still queued; the app may show the retries (the count is kept in memory only).
                retrying = dataclasses.replace(message, attempts=done, error=outcome.reason)
                await self.notify(retrying)
                await self._pause(conv_id, retry_delay(done - 1, *self._backoff(outcome)))
                continue
            if isinstance(outcome, Sent):
                settled = self.store.settle(
                    message.message_id,
                    "sent",
                    transport=outcome.delivery.transport,
                    attempts=done,
                )
            else:
                settled = self.store.settle(
                    message.message_id, "failed", error=outcome.code, attempts=done
                )
            await self.notify(settled)
            for future in self._waiters.pop(message.message_id, []):
                if not future.done():
                    future.set_result(outcome)

    def _backoff(self, outcome: Retry) -> tuple[float, float, float | None]:
        return self.options.retry_delay, self.options.retry_delay_max, outcome.retry_after

    async def _pause(self, conv_id: str, seconds: float) -> None:
        kick = self._kicks.get(conv_id)
        if kick is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(kick.wait(), seconds)

    async def notify(self, message: OutgoingMessage) -> None:
        callback = self.options.on_message_state
        if callback is None:
            return
        try:
            result = callback(message)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_message_state failed")
