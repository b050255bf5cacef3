"""The Socket.IO client towards signal-service, and the end of the session.

A session the server ends (`session:end {reason}`) or refuses at a (re)connect (`connect_error`
with `data.error`) is not retried: the same token would only be refused again. With a token
provider (`renew`), `token_expired` and a refused token (`unauthorized`) are the exception: a
fresh token is asked for and the socket connects again with it (once per refusal in a row)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import aiohttp
import socketio

from rtc_client.errors import RtcClientError
from rtc_client.options import ClientOptions
from rtc_client.tasks import Tasks

log = logging.getLogger("rtc_client")

State = Literal["new", "connecting", "connected", "disconnected", "ended", "closed"]
# Refusals a fresh token can cure.
RENEWABLE = frozenset({"token_expired", "unauthorized"})
Handler = Callable[[Any], Awaitable[None]]


class Signaling:
    def __init__(
        self,
        url: str,
        options: ClientOptions,
        tasks: Tasks,
        *,
        auth: Callable[[], dict[str, Any]],
        on_connect: Callable[[], None],
        on_end: Callable[[], Awaitable[None]],
        renew: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        """`auth` is read at every (re)connect; `on_connect` runs at each of them; `on_end`
        stops what needs signaling (peer connections) when the session ends."""
        self.url = url
        self.options = options
        # None while the session lives; the server's reason (or refusal code) once it ended.
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        self.closed = False
        self._tasks = tasks
        self._auth = auth
        self._on_connect_hook = on_connect
        self._on_end_hook = on_end
        self._handlers: dict[str, Handler] = {}
        self._sio: Any = None
        self._connecting = False
        self._renew = renew
        self._renewed = False  # a fresh token was asked for since the last successful connect
        self._http_session: aiohttp.ClientSession | None = None

    def on(self, event: str, handler: Handler) -> None:
        """A server event's handler (registered before connect())."""
        self._handlers[event] = handler

    @property
    def connected(self) -> bool:
        return bool(self._sio is not None and self._sio.connected)

    @property
    def state(self) -> State:
        if self.closed:
            return "closed"
        if self.end_reason is not None:
            return "ended"
        if self._sio is None:
            return "new"
        if self._sio.connected:
            return "connected"
        if self._connecting or self._sio in socketio.base_client.reconnecting_clients:
            return "connecting"
        return "disconnected"

    async def connect(self, http_session: aiohttp.ClientSession) -> None:
        self._http_session = http_session
        try:
            await self._connect(http_session)
        except RtcClientError as exc:
            if not await self._renewal_for(exc.code):
                raise
            self.end_reason = None
            self.ended.clear()
            await self._connect(http_session)

    async def _connect(self, http_session: aiohttp.ClientSession) -> None:
        sio = socketio.AsyncClient(
            http_session=http_session,
            reconnection=True,
            reconnection_delay=self.options.reconnection_delay,
            reconnection_delay_max=self.options.reconnection_delay_max,
        )
        self._sio = sio
        sio.on("connect", self._on_connect)
        sio.on("connect_error", self._guard(self._on_connect_error))
        sio.on("session:end", self._guard(self._on_session_end))
        for event, handler in self._handlers.items():
            sio.on(event, self._guard(handler))
        self._connecting = True
        try:
            await sio.connect(
                self.url,
                auth=self._auth,
                transports=["websocket"],
                wait_timeout=self.options.signal_timeout,
            )
        except socketio.exceptions.ConnectionError as exc:
            # A refusal (unauthorized, too_many_connections) ended the session already.
            code = self.end_reason or "signal_connect_failed"
            raise RtcClientError(code, type(exc).__name__) from None
        finally:
            self._connecting = False

    async def close(self) -> None:
        self.closed = True
        await self._shutdown()

    async def call(self, event: str, body: dict[str, Any]) -> dict[str, Any]:
        """Emit with an ack; a transport failure comes back as a refusal (`ok: false`)."""
        try:
            ack = await self._sio.call(event, body, timeout=self.options.signal_timeout)
        except (socketio.exceptions.TimeoutError, socketio.exceptions.SocketIOError) as exc:
            return {"ok": False, "error": "signal_" + type(exc).__name__}
        return ack if isinstance(ack, dict) else {"ok": False, "error": "bad_ack"}

    def _guard(self, handler: Handler) -> Handler:
        async def run(data: Any = None) -> None:
            if self.closed:
                return
            try:
                await handler(data)
            except Exception:
                log.exception("handler failed", extra={"handler": handler.__name__})

        return run

    async def _on_connect(self) -> None:
        self._renewed = False
        self._on_connect_hook()

    async def _on_connect_error(self, data: Any) -> None:
        # The server's refusal is `{message, data: {error, message}}` and the same token would be
        # refused at every retry; a network failure is a string, and python-socketio retries it.
        body = data.get("data") if isinstance(data, dict) else None
        code = body.get("error") if isinstance(body, dict) else None
        if not (isinstance(code, str) and code):
            return
        if self._connecting and code in RENEWABLE and self._renew is not None and not self._renewed:
            # The first connect: connect() asks for a fresh token and tries once more.
            self.end_reason = code
            return
        if await self._renewal_for(code):
            return  # python-socketio's reconnect loop tries again, with the fresh token
        await self.end(code)

    async def _on_session_end(self, data: Any) -> None:
        reason = data.get("reason") if isinstance(data, dict) else None
        reason = reason if isinstance(reason, str) and reason else "ended"
        if await self._renewal_for(reason):
            # The server closes this socket: a new one, with the fresh token.
            self._tasks.spawn(self._reconnect())
            return
        await self.end(reason)

    async def _renewal_for(self, reason: str) -> bool:
        """Whether a fresh token was obtained for this refusal (at most once in a row)."""
        if reason not in RENEWABLE or self._renew is None or self._renewed or self.closed:
            return False
        self._renewed = True
        try:
            await self._renew()
        except Exception as exc:  # the app's provider failed: the session ends as it would
            log.warning("token provider failed", extra={"error": type(exc).__name__})
            return False
        return True

    async def _reconnect(self) -> None:
        old, self._sio = self._sio, None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.shutdown(), 5)
        delay = self.options.reconnection_delay
        while not self.closed and self._http_session is not None and self.end_reason is None:
            try:
                await self._connect(self._http_session)
                return
            except RtcClientError as exc:
                if exc.code != "signal_connect_failed":
                    await self.end(exc.code)  # refused (the fresh token too): final
                    return
            # Unreachable for now: tried again, with the reconnect loop's backoff.
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.options.reconnection_delay_max)

    async def end(self, reason: str) -> None:
        """Final until a new client starts: the socket closes and the app is told once."""
        if self.end_reason is not None or self.closed:
            return
        self.end_reason = reason
        log.warning("session ended", extra={"reason": reason})
        if self._sio is not None:
            # python-socketio's reconnect loop reads this right after the attempt that failed
            # here, so it stops before another one (shutdown() below may come too late for that).
            self._sio.reconnection_attempts = 1
        # A task of its own: shutdown() waits for the reconnect loop, which may be running this.
        self._tasks.spawn(self._stop())
        self.ended.set()
        callback = self.options.on_session_end
        if callback is not None:
            result = callback(reason)
            if inspect.isawaitable(result):
                await result

    async def _stop(self) -> None:
        await self._on_end_hook()
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._sio is not None:
            with contextlib.suppress(Exception):
                # shutdown, not disconnect: it also stops a reconnect loop that is under way.
                await asyncio.wait_for(self._sio.shutdown(), 5)
