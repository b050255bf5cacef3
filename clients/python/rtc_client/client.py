"""The contract's client flow for native and bot clients (aiortc).

- ICE from ice-service with a Bearer token, re-fetched at `refresh_ratio` (70 %) of `ttl`; after
  a refresh every open peer connection is rebuilt with the fresh credentials (aiortc has no
  `restartIce`): a new offer, and the old connection is closed once the new channel is open.
- Signaling over Socket.IO (`rtc:offer` / `rtc:answer` / `rtc:candidate`, each with an ack).
  aiortc gathers before it writes the SDP, so the SDP carries the candidates; they are also sent
  as `rtc:candidate` (browsers trickle), and candidates received that way are added.
- A data channel labelled `rtc` (ordered) with the contract's JSON frames. `send()` waits an ACK
  window per try (`ack_window`, default 3 s, covering the connection set-up and the ACK), makes
  `rtc_tries` tries (default 2), then enqueues on relay-service with `force: true`.
- Receiving: data-channel frames, `relay:message` pushes and `pull` (on every connect), deduped
  by sender + messageId across both transports, then acked.
- Each message's transport goes to the app (`Delivery` from `send()`, `IncomingMessage` on
  `incoming` / `on_message`) and to `POST /api/v1/rtc/telemetry` with the selected candidate type.
- A session the server ends (`session:end {reason}`: token_expired, abuse, ...) or refuses at a
  (re)connect (`connect_error` unauthorized, too_many_connections, ...) is not retried: the socket
  closes, `state` becomes "ended", `session_end_reason` holds the reason, `session_ended` is set
  and `on_session_end(reason)` runs. The relay over HTTP keeps working with the token.

Glare (both sides offer at once): the offer of the lexicographically smaller wallet wins.
Tokens and ICE credentials are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import socketio
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

from rtc_client import frames
from rtc_client.clock import Clock, LoopClock
from rtc_client.errors import RtcClientError
from rtc_client.ice import IceConfig

log = logging.getLogger("rtc_client")

Transport = Literal["rtc", "relay"]
IcePolicy = Literal["all", "relay"]
State = Literal["new", "connecting", "connected", "disconnected", "ended", "closed"]
_HEX_WALLET = re.compile(r"^0x[0-9a-fA-F]+$")
_RETRYABLE_STATUS = {429, 502, 503, 504}


def normalize_wallet(wallet: str) -> str:
    """As the server does: 0x-hex wallets compare lowercase, others are kept as given."""
    wallet = wallet.strip()
    return wallet.lower() if _HEX_WALLET.match(wallet) else wallet


def conv_id(a: str, b: str) -> str:
    return ":".join(sorted((normalize_wallet(a), normalize_wallet(b))))


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Delivery:
    """What happened to one sent message."""

    to: str
    message_id: str
    transport: Transport
    forced: bool
    rtc_tries: int
    candidate_pair: tuple[str, str] | None = None  # (local, remote) type when transport is rtc
    relay_id: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class IncomingMessage:
    sender: str
    conv_id: str
    message_id: str
    payload: str
    transport: Transport
    forced: bool = False
    sent_at: str | None = None
    relay_id: str | None = None


def selected_pair(pc: RTCPeerConnection) -> tuple[str, str] | None:
    """The (local, remote) candidate types of the nominated ICE pair, or None before one is.

    aiortc's getStats() has no candidate-pair entries, so this reads the ICE transport's
    nominated pair (aioice) directly."""
    sctp = pc.sctp
    if sctp is None:
        return None
    connection = getattr(sctp.transport.transport, "_connection", None)
    nominated = getattr(connection, "_nominated", None)
    if not isinstance(nominated, dict) or not nominated:
        return None
    pair = nominated.get(1) or next(iter(nominated.values()))
    try:
        return str(pair.local_candidate.type), str(pair.remote_candidate.type)
    except AttributeError:
        return None


class _Session:
    """One RTCPeerConnection towards a peer (a link has at most one open and one negotiating)."""

    def __init__(self, pc: RTCPeerConnection, initiator: bool, ice: IceConfig) -> None:
        self.pc = pc
        self.initiator = initiator
        self.ice = ice
        self.id = uuid.uuid4().hex[:8]
        self.channel: RTCDataChannel | None = None
        self.remote_set = False
        self.early_candidates: list[RTCIceCandidate | None] = []
        self.closed = False

    @property
    def open(self) -> bool:
        return not self.closed and self.channel is not None and self.channel.readyState == "open"


@dataclass
class _Link:
    remote: str
    active: _Session | None = None
    negotiating: _Session | None = None
    failure: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    negotiation_task: asyncio.Task[None] | None = None
    sessions_made: int = 0

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


MessageCallback = Callable[[IncomingMessage], Awaitable[None] | None]
DeliveryCallback = Callable[[Delivery], Awaitable[None] | None]
SessionEndCallback = Callable[[str], Awaitable[None] | None]


class RtcClient:
    """One signed-in user: `await client.start()`, `await client.send(to, payload)`,
    messages arrive on `client.incoming` (and `on_message`), `await client.close()`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        wallet: str,
        *,
        ice_transport_policy: IcePolicy = "all",
        ack_window: float = 3.0,
        rtc_tries: int = 2,
        rtc: bool = True,
        refresh_ratio: float = 0.7,
        clock: Clock | None = None,
        signal_url: str | None = None,
        http_session: aiohttp.ClientSession | None = None,
        local_addr: str | None = None,
        on_message: MessageCallback | None = None,
        on_delivery: DeliveryCallback | None = None,
        on_session_end: SessionEndCallback | None = None,
        negotiation_timeout: float = 10.0,
        signal_timeout: float = 5.0,
        telemetry: bool = True,
        dedup_size: int = 10_000,
        reconnection_delay: float = 1.0,
        reconnection_delay_max: float = 5.0,
    ) -> None:
        if rtc_tries < 0 or ack_window <= 0 or not 0 < refresh_ratio < 1:
            raise ValueError("rtc_tries >= 0, ack_window > 0 and 0 < refresh_ratio < 1")
        self.base_url = base_url.rstrip("/")
        self.signal_url = (signal_url or self.base_url).rstrip("/")
        self.wallet = normalize_wallet(wallet)
        self._token = token
        self.ice_transport_policy = ice_transport_policy
        self.ack_window = ack_window
        self.rtc_tries = rtc_tries
        self.rtc = rtc
        self.refresh_ratio = refresh_ratio
        self.clock: Clock = clock or LoopClock()
        self.negotiation_timeout = negotiation_timeout
        self.signal_timeout = signal_timeout
        self.telemetry = telemetry
        self.on_message = on_message
        self.on_delivery = on_delivery
        self.on_session_end = on_session_end
        self.reconnection_delay = reconnection_delay
        self.reconnection_delay_max = reconnection_delay_max
        # None while the session lives; the server's reason (or refusal code) once it ended.
        self.session_end_reason: str | None = None
        self.session_ended = asyncio.Event()
        self.incoming: asyncio.Queue[IncomingMessage] = asyncio.Queue()
        self.ice: IceConfig | None = None
        self.ice_fetches = 0
        self.telemetry_sent: list[dict[str, Any]] = []
        self._own_session = http_session is None
        self._local_addr = local_addr
        self._http = http_session
        self._sio: Any = None
        self._links: dict[str, _Link] = {}
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._dedup_size = dedup_size
        self._ice_lock = asyncio.Lock()
        self._pull_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.Task[Any]] = set()
        self._refresh_task: asyncio.Task[None] | None = None
        self._blocked = False
        self._closed = False
        self._connecting = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch ICE, connect the signaling socket, pull what the relay holds."""
        if self._http is None:
            connector = (
                aiohttp.TCPConnector(local_addr=(self._local_addr, 0))
                if self._local_addr
                else aiohttp.TCPConnector()
            )
            self._http = aiohttp.ClientSession(connector=connector)
        if self.rtc:
            await self.refresh_ice()
            self._refresh_task = asyncio.create_task(self._refresh_loop())
        await self._connect_socket()

    async def close(self) -> None:
        self._closed = True
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        for link in list(self._links.values()):
            await self._close_link(link, "closed")
        if self._sio is not None:
            with contextlib.suppress(Exception):
                # shutdown, not disconnect: it also stops a reconnect loop that is under way.
                await asyncio.wait_for(self._sio.shutdown(), 5)
        for task in list(self._timers):
            task.cancel()
        if self._tasks:
            # Telemetry, acks and closing connections: given a few seconds to finish.
            await asyncio.wait(list(self._tasks), timeout=5)
        for task in list(self._tasks):
            task.cancel()
        if self._own_session and self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> RtcClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def set_token(self, token: str) -> None:
        """A new token for the next HTTP calls and socket (re)connections."""
        self._token = token

    @property
    def connected(self) -> bool:
        return bool(self._sio is not None and self._sio.connected)

    @property
    def state(self) -> State:
        """The signaling session: "connecting" also covers the reconnect loop after a drop;
        "ended" is final (see `session_end_reason`)."""
        if self._closed:
            return "closed"
        if self.session_end_reason is not None:
            return "ended"
        if self._sio is None:
            return "new"
        if self._sio.connected:
            return "connected"
        if self._connecting or self._sio in socketio.base_client.reconnecting_clients:
            return "connecting"
        return "disconnected"

    def set_peer_path_blocked(self, blocked: bool) -> None:
        """Simulate a failed peer path: close every peer connection, answer no offer, and drop
        every data-channel frame either way. Messages then go through the relay."""
        self._blocked = blocked
        if blocked:
            for link in list(self._links.values()):
                self._spawn(self._close_link(link, "blocked"))

    def selected_pair(self, peer: str) -> tuple[str, str] | None:
        link = self._links.get(normalize_wallet(peer))
        if link is None or link.active is None or not link.active.open:
            return None
        return selected_pair(link.active.pc)

    def peer_connection(self, peer: str) -> RTCPeerConnection | None:
        """The open peer connection towards `peer` (None when there is none)."""
        link = self._links.get(normalize_wallet(peer))
        return link.active.pc if link is not None and link.active is not None else None

    def sessions_made(self, peer: str) -> int:
        """How many peer connections were built towards `peer` (rebuilds included)."""
        link = self._links.get(normalize_wallet(peer))
        return link.sessions_made if link is not None else 0

    def active_ice(self, peer: str) -> IceConfig | None:
        """The ICE configuration the open connection towards `peer` was built with."""
        link = self._links.get(normalize_wallet(peer))
        return link.active.ice if link is not None and link.active is not None else None

    async def connect_peer(self, peer: str, within: float = 10.0) -> tuple[str, str] | None:
        """Open the data channel towards `peer` now; returns the selected candidate pair."""
        loop = asyncio.get_running_loop()
        session = await self._open_session(normalize_wallet(peer), loop.time() + within)
        if session is None:
            link = self._links.get(normalize_wallet(peer))
            raise RtcClientError((link.failure if link else None) or "timeout", "no data channel")
        return selected_pair(session.pc)

    # -- HTTP -----------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self._http is not None, "start() first"
        async with self._http.request(
            method,
            self.base_url + path,
            json=body,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            text = await response.text()
            try:
                data = await response.json(content_type=None) if text else None
            except ValueError:
                data = None
            return response.status, data

    @staticmethod
    def _error(status: int, data: Any, what: str) -> RtcClientError:
        code = data.get("error") if isinstance(data, dict) else None
        return RtcClientError(str(code or f"http_{status}"), f"{what} answered {status}", status)

    async def refresh_ice(self) -> IceConfig:
        """Fetch ICE now (also what the refresh timer calls)."""
        async with self._ice_lock:
            return await self._fetch_ice_locked()

    async def _fetch_ice_locked(self) -> IceConfig:
        status, data = await self._request("GET", "/api/v1/rtc/ice")
        if status != 200 or not isinstance(data, dict):
            raise self._error(status, data, "ICE")
        ice = IceConfig.from_response(
            data, fetched_at=self.clock.now(), refresh_ratio=self.refresh_ratio
        )
        self.ice = ice
        self.ice_fetches += 1
        log.info(
            "ICE fetched",
            extra={"provider": ice.provider, "ttl": ice.ttl, "expiresAt": ice.expires_at},
        )
        return ice

    async def _current_ice(self) -> IceConfig:
        """The ICE configuration for a new peer connection: fetched again when it is due."""
        async with self._ice_lock:
            ice = self.ice
            if ice is not None and self.clock.now() < ice.refresh_at:
                return ice
            try:
                return await self._fetch_ice_locked()
            except (RtcClientError, aiohttp.ClientError, TimeoutError) as exc:
                # Due but not expired yet: the current credentials still allocate.
                if ice is None or self.clock.now() >= ice.fetched_at + ice.ttl:
                    raise
                log.warning("ICE fetch failed; using the current one", extra={"error": str(exc)})
                return ice

    async def _refresh_loop(self) -> None:
        retry = 5.0
        while not self._closed:
            ice = self.ice
            if ice is None:
                return
            await self.clock.sleep_until(ice.refresh_at)
            if self.ice is not ice:
                # Fetched meanwhile (a new connection needed it): rebuild the others too.
                self._rebuild_links()
                continue
            try:
                await self.refresh_ice()
            except (RtcClientError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("ICE refresh failed; retrying", extra={"error": str(exc)})
                await self.clock.sleep_until(self.clock.now() + retry)
                retry = min(retry * 2, 60.0)
                continue
            retry = 5.0
            self._rebuild_links()

    def _rebuild_links(self) -> None:
        """Rebuild open peer connections that use older credentials (no restartIce in aiortc)."""
        for link in self._links.values():
            if link.active is not None and link.active.open and link.active.ice is not self.ice:
                self._start_negotiation(link, restart=True)

    async def post_telemetry(
        self, transport: Transport, candidate_type: str | None, forced: bool
    ) -> None:
        body: dict[str, Any] = {"transport": transport, "forced": forced}
        if candidate_type in ("host", "srflx", "prflx", "relay"):
            body["candidateType"] = candidate_type
        try:
            status, _ = await self._request("POST", "/api/v1/rtc/telemetry", body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("telemetry not sent", extra={"error": type(exc).__name__})
            return
        if status == 204:
            self.telemetry_sent.append(body)
        else:
            log.warning("telemetry refused", extra={"status": status})

    async def relay_enqueue(
        self, to: str, message_id: str, payload: str, force: bool
    ) -> dict[str, Any]:
        """POST /api/v1/relay/enqueue (idempotent by messageId), retried on 429/5xx/network."""
        to = normalize_wallet(to)
        body = {
            "to": to,
            "convId": conv_id(self.wallet, to),
            "messageId": message_id,
            "payload": payload,
            "force": force,
        }
        delay = 0.25
        for attempt in range(4):
            try:
                status, data = await self._request("POST", "/api/v1/relay/enqueue", body)
            except (aiohttp.ClientError, TimeoutError):
                if attempt == 3:
                    raise
                status, data = 0, None
            if status in (200, 202) and isinstance(data, dict):
                return data
            if status not in _RETRYABLE_STATUS and status != 0:
                raise self._error(status, data, "relay enqueue")
            if attempt == 3:
                raise self._error(status, data, "relay enqueue")
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def pull(self) -> int:
        """Pull the relay queue until it is empty; returns how many new messages were delivered."""
        delivered = 0
        async with self._pull_lock:
            while True:
                status, data = await self._request("GET", "/api/v1/relay/pull?limit=100")
                if status != 200 or not isinstance(data, dict):
                    raise self._error(status, data, "relay pull")
                messages = [m for m in data.get("messages", []) if isinstance(m, dict)]
                ids = []
                for message in messages:
                    if await self._accept_relay(message):
                        delivered += 1
                    if isinstance(message.get("id"), str):
                        ids.append(message["id"])
                if ids:
                    await self._relay_ack(ids)
                if not data.get("more") or not messages:
                    return delivered

    async def _relay_ack(self, ids: list[str]) -> None:
        status, data = await self._request("POST", "/api/v1/relay/ack", {"ids": ids})
        if status != 200:
            raise self._error(status, data, "relay ack")

    # -- Socket.IO --------------------------------------------------------------------------------

    async def _connect_socket(self) -> None:
        sio = socketio.AsyncClient(
            http_session=self._http,
            reconnection=True,
            reconnection_delay=self.reconnection_delay,
            reconnection_delay_max=self.reconnection_delay_max,
        )
        self._sio = sio
        sio.on("connect", self._on_connect)
        sio.on("connect_error", self._guard(self._on_connect_error))
        sio.on("session:end", self._guard(self._on_session_end))
        sio.on("rtc:offer", self._guard(self._on_offer))
        sio.on("rtc:answer", self._guard(self._on_answer))
        sio.on("rtc:candidate", self._guard(self._on_candidate))
        sio.on("relay:message", self._guard(self._on_relay_message))
        sio.on("presence:update", self._guard(self._on_presence))
        sio.on("rtc:error", self._guard(self._on_rtc_error))
        self._connecting = True
        try:
            await sio.connect(
                self.signal_url,
                auth=lambda: {"token": self._token, "rtc": self.rtc},
                transports=["websocket"],
                wait_timeout=self.signal_timeout,
            )
        except socketio.exceptions.ConnectionError as exc:
            # A refusal (unauthorized, too_many_connections) ended the session already.
            code = self.session_end_reason or "signal_connect_failed"
            raise RtcClientError(code, type(exc).__name__) from None
        finally:
            self._connecting = False

    def _guard(self, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def run(data: Any = None) -> None:
            if self._closed:
                return
            try:
                await handler(data)
            except Exception:
                log.exception("handler failed", extra={"handler": handler.__name__})

        return run

    async def _on_connect(self) -> None:
        # Every (re)connect: what the relay kept while we were away.
        self._spawn(self._pull_quietly())

    async def _on_connect_error(self, data: Any) -> None:
        # The server's refusal is `{message, data: {error, message}}` and the same token would be
        # refused at every retry; a network failure is a string, and python-socketio retries it.
        body = data.get("data") if isinstance(data, dict) else None
        code = body.get("error") if isinstance(body, dict) else None
        if isinstance(code, str) and code:
            await self._end_session(code)

    async def _on_session_end(self, data: Any) -> None:
        reason = data.get("reason") if isinstance(data, dict) else None
        await self._end_session(reason if isinstance(reason, str) and reason else "ended")

    async def _end_session(self, reason: str) -> None:
        """Final until a new client starts: the socket closes and the app is told once."""
        if self.session_end_reason is not None or self._closed:
            return
        self.session_end_reason = reason
        log.warning("session ended", extra={"reason": reason})
        if self._sio is not None:
            # python-socketio's reconnect loop reads this right after the attempt that failed
            # here, so it stops before another one (shutdown() below may come too late for that).
            self._sio.reconnection_attempts = 1
        # A task of its own: shutdown() waits for the reconnect loop, which may be running this.
        self._spawn(self._stop_session())
        self.session_ended.set()
        if self.on_session_end is not None:
            result = self.on_session_end(reason)
            if inspect.isawaitable(result):
                await result

    async def _stop_session(self) -> None:
        # No signaling any more: peer connections and the ICE refresh go too; HTTP stays usable.
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        for link in list(self._links.values()):
            await self._close_link(link, "session_ended")
        if self._sio is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sio.shutdown(), 5)

    async def _pull_quietly(self) -> None:
        try:
            await self.pull()
        except (RtcClientError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("relay pull failed", extra={"error": str(exc)})

    async def _signal(self, event: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            ack = await self._sio.call(event, body, timeout=self.signal_timeout)
        except (socketio.exceptions.TimeoutError, socketio.exceptions.SocketIOError) as exc:
            return {"ok": False, "error": "signal_" + type(exc).__name__}
        return ack if isinstance(ack, dict) else {"ok": False, "error": "bad_ack"}

    async def _on_rtc_error(self, data: Any) -> None:
        log.warning("rtc:error", extra={"event": data})

    async def _on_presence(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("online") is not False:
            return
        link = self._links.get(normalize_wallet(str(data.get("wallet", ""))))
        if link is not None:
            await self._close_link(link, "peer_offline")

    # -- peer connections -------------------------------------------------------------------------

    def _link(self, remote: str) -> _Link:
        link = self._links.get(remote)
        if link is None:
            link = self._links[remote] = _Link(remote)
        return link

    def _new_session(self, link: _Link, ice: IceConfig, initiator: bool) -> _Session:
        policy = (
            RTCIceTransportPolicy.RELAY
            if self.ice_transport_policy == "relay"
            else RTCIceTransportPolicy.ALL
        )
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=list(ice.ice_servers), iceTransportPolicy=policy)
        )
        session = _Session(pc, initiator, ice)
        link.sessions_made += 1

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == frames.CHANNEL_LABEL:
                self._wire_channel(link, session, channel)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._session_down(link, session, f"connection_{pc.connectionState}")

        return session

    def _wire_channel(self, link: _Link, session: _Session, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(data: str | bytes) -> None:
            if not self._blocked and not session.closed:
                self._spawn(self._on_frame(link, session, data))

        @channel.on("close")
        def on_close() -> None:
            self._session_down(link, session, "channel_closed")

        def on_open() -> None:
            session.channel = channel
            if session.closed:
                return
            if link.negotiating is session or link.active is None:
                old = link.active
                link.active = session
                if link.negotiating is session:
                    link.negotiating = None
                link.failure = None
                if old is not None and old is not session:
                    self._spawn(self._close_session(old))
                link.notify()
                log.info(
                    "data channel open",
                    extra={"peer": link.remote, "pair": selected_pair(session.pc)},
                )

        session.channel = channel
        if channel.readyState == "open":
            on_open()
        else:
            channel.on("open", on_open)

    def _session_down(self, link: _Link, session: _Session, reason: str) -> None:
        if link.active is session:
            link.active = None
            link.notify()
        if link.negotiating is session:
            link.negotiating = None
            link.failure = reason
            link.notify()
        self._spawn(self._close_session(session))

    async def _close_session(self, session: _Session) -> None:
        if session.closed:
            return
        session.closed = True
        with contextlib.suppress(Exception):
            await session.pc.close()

    async def _close_link(self, link: _Link, reason: str) -> None:
        sessions = [s for s in (link.active, link.negotiating) if s is not None]
        link.active = link.negotiating = None
        link.failure = reason
        if link.negotiation_task is not None and not link.negotiation_task.done():
            link.negotiation_task.cancel()
        link.notify()
        for session in sessions:
            await self._close_session(session)

    def _start_negotiation(self, link: _Link, restart: bool = False) -> None:
        if link.negotiation_task is not None and not link.negotiation_task.done():
            return
        link.failure = None
        link.negotiation_task = asyncio.create_task(self._negotiate(link, restart))

    async def _negotiate(self, link: _Link, restart: bool) -> None:
        """Offer a new peer connection to `link.remote` and wait for its channel."""
        session: _Session | None = None
        try:
            ice = await self._current_ice()
            session = self._new_session(link, ice, initiator=True)
            previous = link.negotiating
            link.negotiating = session
            if previous is not None:
                await self._close_session(previous)
            channel = session.pc.createDataChannel(frames.CHANNEL_LABEL, ordered=True)
            self._wire_channel(link, session, channel)
            await session.pc.setLocalDescription(await session.pc.createOffer())
            local = session.pc.localDescription
            assert local is not None
            ack = await self._signal(
                "rtc:offer",
                {
                    "convId": conv_id(self.wallet, link.remote),
                    "to": link.remote,
                    "sdp": {"type": local.type, "sdp": local.sdp},
                    "signalId": _new_id("offer"),
                },
            )
            if not ack.get("ok"):
                raise RtcClientError(str(ack.get("error") or "refused"), "offer refused")
            await self._send_candidates(link, session)
            deadline = asyncio.get_running_loop().time() + self.negotiation_timeout
            while not session.open and not session.closed:
                changed = link.changed
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise RtcClientError("negotiation_timeout", "no data channel in time")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        except RtcClientError as exc:
            log.info(
                "negotiation failed",
                extra={"peer": link.remote, "error": exc.code, "rebuild": restart},
            )
            if session is not None:
                self._fail_negotiation(link, session, exc.code)
            else:
                link.failure = exc.code
                link.notify()
        except Exception as exc:
            log.warning("negotiation error", extra={"peer": link.remote, "error": repr(exc)})
            if session is not None:
                self._fail_negotiation(link, session, "negotiation_error")
            else:
                link.failure = "negotiation_error"
                link.notify()

    def _fail_negotiation(self, link: _Link, session: _Session, code: str) -> None:
        if link.negotiating is session:
            link.negotiating = None
        if link.active is not session:
            link.failure = code
            link.notify()
            self._spawn(self._close_session(session))

    async def _send_candidates(self, link: _Link, session: _Session) -> None:
        sctp = session.pc.sctp
        if sctp is None:
            return
        gatherer = sctp.transport.transport.iceGatherer
        ufrag = gatherer.getLocalParameters().usernameFragment
        for candidate in gatherer.getLocalCandidates():
            ack = await self._signal(
                "rtc:candidate",
                {
                    "convId": conv_id(self.wallet, link.remote),
                    "to": link.remote,
                    "candidate": {
                        "candidate": "candidate:" + candidate_to_sdp(candidate),
                        "sdpMid": "0",
                        "sdpMLineIndex": 0,
                        "usernameFragment": ufrag,
                    },
                    "signalId": _new_id("cand"),
                },
            )
            if not ack.get("ok"):
                log.info("candidate refused", extra={"error": ack.get("error")})

    async def _on_offer(self, data: Any) -> None:
        if self._blocked or not self.rtc or not isinstance(data, dict):
            return
        remote = normalize_wallet(str(data.get("from", "")))
        sdp = data.get("sdp")
        if not remote or not isinstance(sdp, dict) or not isinstance(sdp.get("sdp"), str):
            return
        link = self._link(remote)
        pending = link.negotiating
        if pending is not None and pending.initiator and not pending.remote_set:
            if self.wallet < remote:
                return  # glare: our offer wins, they answer it
            if link.negotiation_task is not None:
                link.negotiation_task.cancel()
            await self._close_session(pending)
        ice = await self._current_ice()
        session = self._new_session(link, ice, initiator=False)
        previous = link.negotiating
        link.negotiating = session
        if previous is not None and previous is not session:
            await self._close_session(previous)
        await session.pc.setRemoteDescription(RTCSessionDescription(sdp["sdp"], "offer"))
        await self._flush_candidates(session)
        await session.pc.setLocalDescription(await session.pc.createAnswer())
        local = session.pc.localDescription
        assert local is not None
        ack = await self._signal(
            "rtc:answer",
            {
                "convId": conv_id(self.wallet, remote),
                "to": remote,
                "sdp": {"type": local.type, "sdp": local.sdp},
                "signalId": _new_id("answer"),
            },
        )
        if not ack.get("ok"):
            self._fail_negotiation(link, session, str(ack.get("error") or "refused"))
            return
        await self._send_candidates(link, session)

        async def expire() -> None:
            await asyncio.sleep(self.negotiation_timeout)
            if link.negotiating is session and not session.open:
                self._fail_negotiation(link, session, "negotiation_timeout")

        timer = asyncio.create_task(expire())
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    async def _on_answer(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        link = self._links.get(normalize_wallet(str(data.get("from", ""))))
        sdp = data.get("sdp")
        if link is None or not isinstance(sdp, dict) or not isinstance(sdp.get("sdp"), str):
            return
        session = link.negotiating
        if session is None or not session.initiator or session.remote_set:
            return
        if session.pc.signalingState != "have-local-offer":
            return
        session.remote_set = True
        await session.pc.setRemoteDescription(RTCSessionDescription(sdp["sdp"], "answer"))
        await self._flush_candidates(session)

    async def _on_candidate(self, data: Any) -> None:
        if self._blocked or not isinstance(data, dict):
            return
        link = self._links.get(normalize_wallet(str(data.get("from", ""))))
        body = data.get("candidate")
        if link is None or not isinstance(body, dict):
            return
        text = body.get("candidate")
        if not isinstance(text, str):
            return
        candidate: RTCIceCandidate | None = None
        if text.strip():
            try:
                candidate = candidate_from_sdp(text.split(":", 1)[1] if ":" in text else text)
            except (AssertionError, ValueError, IndexError):
                log.info("unparsable candidate ignored")
                return
            mid, index = body.get("sdpMid"), body.get("sdpMLineIndex")
            candidate.sdpMid = mid if isinstance(mid, str) else None
            candidate.sdpMLineIndex = index if isinstance(index, int) else None
            if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
                candidate.sdpMLineIndex = 0
        session = link.negotiating or link.active
        if session is None:
            return
        if not session.remote_set:
            session.early_candidates.append(candidate)
            return
        await self._add_candidate(session, candidate)

    async def _flush_candidates(self, session: _Session) -> None:
        session.remote_set = True
        queued, session.early_candidates = session.early_candidates, []
        for candidate in queued:
            await self._add_candidate(session, candidate)

    @staticmethod
    async def _add_candidate(session: _Session, candidate: RTCIceCandidate | None) -> None:
        try:
            await session.pc.addIceCandidate(candidate)
        except (ValueError, RuntimeError) as exc:
            log.info("candidate not added", extra={"error": type(exc).__name__})

    async def _open_session(self, remote: str, deadline: float) -> _Session | None:
        """An open session towards `remote` by `deadline` (loop time), negotiating if needed."""
        link = self._link(remote)
        loop = asyncio.get_running_loop()
        if link.active is not None and link.active.open:
            return link.active
        if link.negotiating is None:
            self._start_negotiation(link)
        while True:
            if link.active is not None and link.active.open:
                return link.active
            if link.failure is not None and link.negotiating is None:
                return None
            changed = link.changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return None

    # -- messages ---------------------------------------------------------------------------------

    async def send(self, to: str, payload: str, *, message_id: str | None = None) -> Delivery:
        """Over the data channel (ACK window x tries), else through the relay with force."""
        to = normalize_wallet(to)
        message_id = message_id or _new_id("m")
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()
        self._acks[message_id] = acked
        tries = 0
        try:
            if self.rtc and not self._closed and self.session_end_reason is None:
                frame = frames.encode_msg(message_id, payload)
                for _ in range(self.rtc_tries):
                    tries += 1
                    deadline = loop.time() + self.ack_window
                    session = await self._open_session(to, deadline)
                    if session is None or session.channel is None:
                        continue
                    if not self._blocked:
                        try:
                            session.channel.send(frame)
                        except Exception as exc:  # InvalidStateError: the channel closed
                            log.info("data channel send failed", extra={"error": repr(exc)})
                            continue
                    try:
                        await asyncio.wait_for(
                            asyncio.shield(acked), max(0.0, deadline - loop.time())
                        )
                    except TimeoutError:
                        continue
                    pair = selected_pair(session.pc)
                    delivery = Delivery(to, message_id, "rtc", False, tries, candidate_pair=pair)
                    await self._report(delivery)
                    return delivery
        finally:
            self._acks.pop(message_id, None)
        forced = tries > 0
        answer = await self.relay_enqueue(to, message_id, payload, force=forced)
        delivery = Delivery(
            to,
            message_id,
            "relay",
            bool(answer.get("forced", forced)),
            tries,
            relay_id=str(answer.get("id")),
            duplicate=bool(answer.get("duplicate", False)),
        )
        await self._report(delivery)
        return delivery

    async def _report(self, delivery: Delivery) -> None:
        if self.telemetry:
            pair = delivery.candidate_pair
            self._spawn(
                self.post_telemetry(delivery.transport, pair[0] if pair else None, delivery.forced)
            )
        if self.on_delivery is not None:
            result = self.on_delivery(delivery)
            if inspect.isawaitable(result):
                await result

    async def _on_frame(self, link: _Link, session: _Session, data: str | bytes) -> None:
        frame = frames.decode(data)
        if isinstance(frame, frames.AckFrame):
            future = self._acks.get(frame.message_id)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if frame is None:
            return
        await self._deliver(
            IncomingMessage(
                sender=link.remote,
                conv_id=conv_id(self.wallet, link.remote),
                message_id=frame.message_id,
                payload=frame.payload,
                transport="rtc",
                sent_at=frame.sent_at,
            )
        )
        ack = frames.encode_ack(frame.message_id)
        for candidate in (session, link.active):
            if candidate is not None and candidate.open and candidate.channel is not None:
                with contextlib.suppress(Exception):
                    candidate.channel.send(ack)
                    return

    async def _on_relay_message(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        await self._accept_relay(data)
        if isinstance(data.get("id"), str):
            try:
                await self._relay_ack([data["id"]])
            except (RtcClientError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("relay ack failed", extra={"error": str(exc)})

    async def _accept_relay(self, data: dict[str, Any]) -> bool:
        sender, message_id, payload = data.get("from"), data.get("messageId"), data.get("payload")
        if not (
            isinstance(sender, str) and isinstance(message_id, str) and isinstance(payload, str)
        ):
            return False
        return await self._deliver(
            IncomingMessage(
                sender=normalize_wallet(sender),
                conv_id=str(data.get("convId") or conv_id(self.wallet, sender)),
                message_id=message_id,
                payload=payload,
                transport="relay",
                forced=bool(data.get("forced", False)),
                sent_at=data.get("queuedAt") if isinstance(data.get("queuedAt"), str) else None,
                relay_id=data.get("id") if isinstance(data.get("id"), str) else None,
            )
        )

    async def _deliver(self, message: IncomingMessage) -> bool:
        """To the app once per sender + messageId, whichever transport brought it first."""
        key = (message.sender, message.message_id)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        while len(self._seen) > self._dedup_size:
            self._seen.popitem(last=False)
        self.incoming.put_nowait(message)
        if self.on_message is not None:
            result = self.on_message(message)
            if inspect.isawaitable(result):
                await result
        return True

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background task failed", extra={"error": repr(task.exception())})
