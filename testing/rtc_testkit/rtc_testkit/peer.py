"""One Socket.IO test peer (python-socketio over websocket) for every test, the chaos run and the
compose check: it records what it receives in order and waits on conditions with deadlines.

    async with open_peers() as peers:
        alice = await peers.connect(stack.url, a)
        ack = await alice.call("rtc:offer", offer(a, b, "o-1"))
        got = await bob.wait_signal("rtc:offer", "o-1")
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import socketio

from .contract import make_token, new_wallet
from .processes import wait_for_async

SIGNAL_EVENTS = ("rtc:offer", "rtc:answer", "rtc:candidate", "signal")
TOKEN: Any = object()  # connect's default auth: {"token": <a valid JWT of the peer's wallet>}
_CLOSE_ERRORS = (TimeoutError, socketio.exceptions.SocketIOError, aiohttp.ClientError, OSError)


class Peer:
    """A wallet's socket. Options: `local_addr` (the source address: the gateway's affinity
    hashes it), `headers` (on the handshake and on every HTTP request of this peer),
    python-socketio's reconnection settings, and `follow_server_close`: after the server closed
    the session (a replica stopping), connect again with a new client as socket.io-client (JS)
    does, where python-socketio would stay disconnected."""

    def __init__(
        self,
        wallet: str,
        *,
        local_addr: str | None = None,
        headers: Mapping[str, str] | None = None,
        reconnection: bool = False,
        reconnection_delay: float = 1.0,
        reconnection_delay_max: float = 5.0,
        randomization_factor: float = 0.5,
        follow_server_close: bool = False,
    ) -> None:
        self.wallet = wallet
        self.local_addr = local_addr
        self.headers = dict(headers or {})
        self.options = {
            "reconnection": reconnection,
            "reconnection_delay": reconnection_delay,
            "reconnection_delay_max": reconnection_delay_max,
            "randomization_factor": randomization_factor,
        }
        self.follow_server_close = follow_server_close
        self.events: list[tuple[str, Any]] = []
        self.connect_errors: list[Any] = []
        self.outages: list[list[float | None]] = []  # [disconnected at, connected again at]
        self.connects = 0
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self._listeners: defaultdict[str, list[Callable[[Any], Any]]] = defaultdict(list)
        self._read: defaultdict[str, int] = defaultdict(int)  # next() position per event
        self._sessions: list[aiohttp.ClientSession] = []
        self._connect_args: dict[str, Any] = {}
        self._follow: asyncio.Task[None] | None = None
        self._closed = False
        self.sio = self._new_client()

    # -- the client ------------------------------------------------------------------------

    def _new_client(self) -> Any:
        kwargs: dict[str, Any] = dict(self.options)
        if self.local_addr is not None or self.headers:
            connector = (
                aiohttp.TCPConnector(local_addr=(self.local_addr, 0)) if self.local_addr else None
            )
            session = aiohttp.ClientSession(connector=connector, headers=self.headers)
            self._sessions.append(session)
            kwargs["http_session"] = session
        sio = socketio.AsyncClient(**kwargs)
        sio.on("*", self._record)
        sio.on("connect", self._on_connect)
        sio.on("connect_error", self._on_connect_error)
        sio.on("disconnect", self._on_disconnect)
        return sio

    async def _record(self, event: str, *args: Any) -> None:
        data = args[0] if args else None
        self.events.append((event, data))
        for listener in self._listeners.get(event, ()):
            result = listener(data)
            if inspect.isawaitable(result):
                await result

    async def _on_connect(self) -> None:
        self.connects += 1
        self.disconnected.clear()
        if self.outages and self.outages[-1][1] is None:
            self.outages[-1][1] = time.monotonic()

    async def _on_connect_error(self, data: Any = None) -> None:
        self.connect_errors.append(data)

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnects += 1
        self.outages.append([time.monotonic(), None])
        self.disconnected.set()
        server_closed = reason == socketio.AsyncClient.reason.SERVER_DISCONNECT
        if self.follow_server_close and server_closed and not self._closed:
            self._follow = asyncio.create_task(self._connect_again())

    async def _connect_again(self, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not self._closed:
            await asyncio.sleep(0.5)  # a retry's backoff
            self.sio = self._new_client()
            try:
                await self.sio.connect(**self._connect_args)
                return
            except (socketio.exceptions.ConnectionError, aiohttp.ClientError, OSError):
                continue

    def on(self, event: str, listener: Callable[[Any], Any]) -> None:
        """Also call `listener(data)` (a function or a coroutine function) for each `event`."""
        self._listeners[event].append(listener)

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected)

    async def connect(
        self,
        url: str,
        *,
        auth: Any = TOKEN,
        rtc: bool | None = None,
        headers: Mapping[str, str] | None = None,
        transports: list[str] | None = None,
        wait_timeout: float = 5,
    ) -> Peer:
        if auth is TOKEN:
            auth = {"token": make_token(self.wallet)}
            if rtc is not None:
                auth["rtc"] = rtc
        self._connect_args = {
            "url": url,
            "auth": auth,
            # A copy each time: python-engineio deletes the Cookie header from the dict it gets.
            "headers": {**self.headers, **(headers or {})},
            "transports": transports or ["websocket"],
            "wait_timeout": wait_timeout,
        }
        await asyncio.wait_for(
            self.sio.connect(
                **{**self._connect_args, "headers": dict(self._connect_args["headers"])}
            ),
            wait_timeout + 10,
        )
        return self

    async def try_connect(self, url: str, **kwargs: Any) -> str | None:
        """None when connected, else the refusal's error code (`refused` without one)."""
        try:
            await self.connect(url, **kwargs)
        except socketio.exceptions.ConnectionError:
            # python-socketio hands the whole CONNECT_ERROR payload: {message, data: {error}}.
            last = self.connect_errors[-1] if self.connect_errors else None
            if isinstance(last, dict) and isinstance(last.get("data"), dict):
                return str(last["data"]["error"])
            return "refused"
        return None

    async def refused(self, url: str, **kwargs: Any) -> Any:
        """Connect, expect a refusal, and return what the connect_error handler received."""
        try:
            await self.connect(url, **kwargs)
        except socketio.exceptions.ConnectionError:
            if not self.connect_errors:
                raise AssertionError("refused without a connect_error event") from None
            return self.connect_errors[-1]
        raise AssertionError(f"{self.wallet} connected; a refusal was expected")

    async def call(self, event: str, data: Any, timeout: float = 5.0) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    async def emit(self, event: str, data: Any) -> None:
        await self.sio.emit(event, data)

    # -- what arrived ----------------------------------------------------------------------

    def received(self, event: str | tuple[str, ...]) -> list[Any]:
        names = (event,) if isinstance(event, str) else event
        return [data for name, data in self.events if name in names]

    def signals(self) -> list[tuple[str, Any]]:
        """What was forwarded to this peer (signaling events only; presence is ignored)."""
        return [(name, data) for name, data in self.events if name in SIGNAL_EVENTS]

    async def wait_event(
        self,
        event: str,
        match: Callable[[Any], bool] = lambda _: True,
        timeout: float = 5.0,
        after: int = 0,
    ) -> Any:
        """The first `event` (from position `after` of `events` on) that `match`es."""
        found: list[Any] = []

        async def arrived() -> bool:
            found[:] = [d for name, d in self.events[after:] if name == event and match(d)]
            return bool(found)

        await wait_for_async(arrived, timeout, what=f"{event} at {self.wallet}")
        return found[0]

    async def wait_signal(self, event: str, signal_id: str, timeout: float = 5.0) -> Any:
        return await self.wait_event(
            event, lambda d: isinstance(d, dict) and d.get("signalId") == signal_id, timeout
        )

    def unread(self, event: str) -> list[Any]:
        """The `event`s `next` has not returned yet."""
        return self.received(event)[self._read[event] :]

    async def next(self, event: str, timeout: float = 5.0) -> Any:
        """The next `event` not returned by `next` before (waits for it up to `timeout`)."""

        async def arrived() -> bool:
            return bool(self.unread(event))

        await wait_for_async(arrived, timeout, what=f"the next {event} at {self.wallet}")
        data = self.unread(event)[0]
        self._read[event] += 1
        return data

    def was_down_at(self, at: float, in_flight: float = 1.0) -> bool:
        """Dropped within `in_flight` s after `at` (monotonic), or still reconnecting at `at`?"""
        for down, up in self.outages:
            if down is not None and down - in_flight <= at and (up is None or at <= up):
                return True
        return False

    async def close(self) -> None:
        # Bounded: a client whose server is gone must not hang the teardown.
        self._closed = True
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_CLOSE_ERRORS):
                await self._follow
        with contextlib.suppress(*_CLOSE_ERRORS):
            # shutdown: also ends a reconnection loop in progress.
            await asyncio.wait_for(self.sio.shutdown(), 5)
        for session in self._sessions:
            await session.close()


class Peers:
    """Makes peers (`peers(wallet, **options)`) and closes them all at the end."""

    def __init__(self) -> None:
        self.made: list[Peer] = []

    def __call__(self, wallet: str | None = None, **options: Any) -> Peer:
        peer = Peer(wallet or new_wallet(), **options)
        self.made.append(peer)
        return peer

    async def connect(self, url: str, wallet: str | None = None, **kwargs: Any) -> Peer:
        """A peer of `wallet` (a new one by default) connected to `url`; `kwargs` go to connect
        when connect takes them, else to the peer."""
        connect_names = set(inspect.signature(Peer.connect).parameters)
        connect_kwargs = {k: v for k, v in kwargs.items() if k in connect_names}
        options = {k: v for k, v in kwargs.items() if k not in connect_names}
        return await self(wallet, **options).connect(url, **connect_kwargs)

    async def close(self) -> None:
        await asyncio.gather(*(peer.close() for peer in self.made))


@contextlib.asynccontextmanager
async def open_peers() -> AsyncIterator[Peers]:
    peers = Peers()
    try:
        yield peers
    finally:
        await peers.close()
