"""The contract's client flow for native and bot clients (aiortc): `RtcClient` composes

- `HttpApi` (http_api.py): ICE, relay enqueue / pull / ack and telemetry over HTTP with a Bearer
  token;
- `Signaling` (signaling.py): the Socket.IO client and the end of the session;
- `Peers` (peers.py): the aiortc peer connections, their data channel and the ICE refresh.

Every outgoing message goes into the outbox first (outbox.py: SQLite, a file in `outbox_dir`
survives restarts), then sender.py sends each conversation's messages in order: the data
channel (`rtc_tries` tries of at most `ack_window` each, covering the connection set-up and the
ACK), then relay-service with `force: true`, retried with backoff until accepted or refused for
good. `send()` waits for that; `enqueue()` returns once the message is stored. Messages
arrive from data-channel frames, `relay:message` pushes and `pull` (on every connect), deduped by
sender + messageId across both transports, then acked. Each message's transport goes to the app
(`Delivery` from `send()`, `IncomingMessage` on `incoming` / `on_message`) and to
`POST /api/v1/rtc/telemetry` with the selected candidate type.

With a `token_provider`, a 401 anywhere and `session:end {reason: "token_expired"}` ask it for a
fresh token and carry on. Otherwise, and for every other reason (`revoked`, `abuse`, ...), a
session the server ends or refuses is not retried: the socket closes, `state` becomes "ended",
`session_end_reason` holds the reason, `session_ended` is set and `on_session_end(reason)` runs.
The relay over HTTP keeps working with the token. Tokens and ICE credentials are never logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections import OrderedDict
from typing import Any, Generic, TypeVar, cast, overload

import aiohttp
from aiortc import RTCPeerConnection

from rtc_client.clock import Clock, LoopClock
from rtc_client.errors import RtcClientError
from rtc_client.http_api import HttpApi
from rtc_client.ice import IceConfig
from rtc_client.links import selected_pair
from rtc_client.model import (
    Delivery,
    IncomingMessage,
    Transport,
    conv_id,
    new_id,
    normalize_wallet,
)
from rtc_client.options import (
    ClientOptions,
    DeliveryCallback,
    IcePolicy,
    MessageCallback,
    SessionEndCallback,
)
from rtc_client.outbox import RETRY_STATUS, OutboxStore, OutgoingMessage
from rtc_client.peers import Peers
from rtc_client.sender import Failed, Outcome, Retry, Sender, Sent
from rtc_client.signaling import Signaling, State
from rtc_client.tasks import Tasks

__all__ = [
    "ClientOptions",
    "Delivery",
    "IncomingMessage",
    "OutgoingMessage",
    "RtcClient",
    "conv_id",
    "normalize_wallet",
    "selected_pair",
]

log = logging.getLogger("rtc_client")

T = TypeVar("T")


class _Option(Generic[T]):
    """A field of the client's options, read and set as an attribute of the client."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, client: None, owner: type) -> _Option[T]: ...
    @overload
    def __get__(self, client: RtcClient, owner: type) -> T: ...
    def __get__(self, client: RtcClient | None, owner: type) -> T | _Option[T]:
        if client is None:
            return self
        return cast(T, getattr(client.options, self._name))

    def __set__(self, client: RtcClient, value: T) -> None:
        setattr(client.options, self._name, value)


class RtcClient:
    """One signed-in user: `await client.start()`, `await client.send(to, payload)`,
    messages arrive on `client.incoming` (and `on_message`), `await client.close()`.

    Options come as a `ClientOptions`; keyword arguments named like its fields are accepted too
    and override it (`RtcClient(url, token, wallet, rtc=False)`)."""

    ice_transport_policy = _Option[IcePolicy]()
    ack_window = _Option[float]()
    rtc_tries = _Option[int]()
    rtc = _Option[bool]()
    refresh_ratio = _Option[float]()
    negotiation_timeout = _Option[float]()
    signal_timeout = _Option[float]()
    telemetry = _Option[bool]()
    on_message = _Option[MessageCallback | None]()
    on_delivery = _Option[DeliveryCallback | None]()
    on_session_end = _Option[SessionEndCallback | None]()
    reconnection_delay = _Option[float]()
    reconnection_delay_max = _Option[float]()

    def __init__(
        self,
        base_url: str,
        token: str,
        wallet: str,
        options: ClientOptions | None = None,
        **overrides: Any,
    ) -> None:
        # A copy: the caller's instance may serve other clients. replace() validates again and
        # refuses unknown names.
        self.options = dataclasses.replace(options or ClientOptions(), **overrides)
        self.base_url = base_url.rstrip("/")
        self.signal_url = (self.options.signal_url or self.base_url).rstrip("/")
        self.wallet = normalize_wallet(wallet)
        self.clock: Clock = self.options.clock or LoopClock()
        self.incoming: asyncio.Queue[IncomingMessage] = asyncio.Queue()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._pull_lock = asyncio.Lock()
        self._closed = False
        self._tasks = Tasks()
        self._http = HttpApi(
            self.base_url,
            token,
            self.wallet,
            session=self.options.http_session,
            local_addr=self.options.local_addr,
        )
        if self.options.token_provider is not None:
            self._http.renew = self._fresh_token
        self.outbox = OutboxStore(self.options.outbox_dir, self.wallet)
        self._sender = Sender(self.outbox, self.options, self._attempt)
        self._peers = Peers(
            self.wallet,
            self.options,
            self.clock,
            self._http,
            self._tasks,
            signal=self._signal_call,
            deliver=self._deliver,
        )
        self._signaling = Signaling(
            self.signal_url,
            self.options,
            self._tasks,
            auth=lambda: {"token": self._http.token, "rtc": self.options.rtc},
            on_connect=self._on_connect,
            on_end=self._peers.stop,
            renew=self._http.renew_token if self.options.token_provider is not None else None,
        )
        self._signaling.on("rtc:offer", self._peers.on_offer)
        self._signaling.on("rtc:answer", self._peers.on_answer)
        self._signaling.on("rtc:candidate", self._peers.on_candidate)
        self._signaling.on("relay:message", self._on_relay_message)
        self._signaling.on("presence:update", self._peers.on_presence)
        self._signaling.on("rtc:error", self._on_rtc_error)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch ICE, connect the signaling socket, pull what the relay holds, and send what the
        outbox kept from earlier runs."""
        self._http.open()
        self._sender.start()
        if self.options.rtc:
            await self._peers.start()
        await self._signaling.connect(self._http.session)

    async def close(self) -> None:
        """Queued messages stay in the outbox (on disk with `outbox_dir`) for the next start."""
        self._closed = True
        # Events arriving while the rest closes are ignored.
        self._signaling.closed = True
        await self._sender.close()
        await self._peers.close()
        await self._signaling.close()
        # Telemetry, acks and closing connections: given a few seconds to finish.
        await self._tasks.close()
        await self._http.close()
        self.outbox.close()

    async def __aenter__(self) -> RtcClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def set_token(self, token: str) -> None:
        """A new token for the next HTTP calls and socket (re)connections."""
        self._http.token = token

    async def _fresh_token(self) -> str:
        provider = self.options.token_provider
        assert provider is not None
        token = provider()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token:
            raise RtcClientError("token_provider", "the token provider gave no token")
        return token

    @property
    def connected(self) -> bool:
        return self._signaling.connected

    @property
    def state(self) -> State:
        """The signaling session: "connecting" also covers the reconnect loop after a drop;
        "ended" is final (see `session_end_reason`)."""
        return self._signaling.state

    @property
    def session_end_reason(self) -> str | None:
        """None while the session lives; the server's reason (or refusal code) once it ended."""
        return self._signaling.end_reason

    @property
    def session_ended(self) -> asyncio.Event:
        return self._signaling.ended

    # -- ICE and peer connections ---------------------------------------------------------------

    @property
    def ice(self) -> IceConfig | None:
        return self._peers.ice_source.current

    @property
    def ice_fetches(self) -> int:
        return self._peers.ice_source.fetches

    async def refresh_ice(self) -> IceConfig:
        """Fetch ICE now (also what the refresh timer calls)."""
        return await self._peers.ice_source.refresh()

    def set_peer_path_blocked(self, blocked: bool) -> None:
        """Simulate a failed peer path: close every peer connection, answer no offer, and drop
        every data-channel frame either way. Messages then go through the relay."""
        self._peers.set_blocked(blocked)

    def selected_pair(self, peer: str) -> tuple[str, str] | None:
        session = self._peers.active(peer)
        return selected_pair(session.pc) if session is not None and session.open else None

    def peer_connection(self, peer: str) -> RTCPeerConnection | None:
        """The open peer connection towards `peer` (None when there is none)."""
        session = self._peers.active(peer)
        return session.pc if session is not None else None

    def sessions_made(self, peer: str) -> int:
        """How many peer connections were built towards `peer` (rebuilds included)."""
        return self._peers.sessions_made(peer)

    def active_ice(self, peer: str) -> IceConfig | None:
        """The ICE configuration the open connection towards `peer` was built with."""
        session = self._peers.active(peer)
        return session.ice if session is not None else None

    async def connect_peer(self, peer: str, within: float = 10.0) -> tuple[str, str] | None:
        """Open the data channel towards `peer` now; returns the selected candidate pair."""
        return await self._peers.connect(peer, within)

    # -- HTTP -----------------------------------------------------------------------------------

    @property
    def telemetry_sent(self) -> list[dict[str, Any]]:
        """The telemetry bodies the server accepted."""
        return self._http.telemetry_sent

    async def post_telemetry(
        self, transport: Transport, candidate_type: str | None, forced: bool
    ) -> None:
        await self._http.post_telemetry(transport, candidate_type, forced)

    async def relay_enqueue(
        self, to: str, message_id: str, payload: str, force: bool
    ) -> dict[str, Any]:
        """POST /api/v1/relay/enqueue (idempotent by messageId), retried on 429/5xx/network."""
        return await self._http.relay_enqueue(to, message_id, payload, force)

    async def pull(self) -> int:
        """Pull the relay queue until it is empty; returns how many new messages were delivered."""
        delivered = 0
        async with self._pull_lock:
            while True:
                messages, more = await self._http.relay_pull()
                ids = []
                for message in messages:
                    if await self._accept_relay(message):
                        delivered += 1
                    if isinstance(message.get("id"), str):
                        ids.append(message["id"])
                if ids:
                    await self._http.relay_ack(ids)
                if not more or not messages:
                    return delivered

    # -- messages -------------------------------------------------------------------------------

    async def enqueue(
        self, to: str, payload: str, *, message_id: str | None = None
    ) -> OutgoingMessage:
        """Store the message in the outbox and return at once (state `queued`); it is sent in
        order after this conversation's earlier messages. Watch it with `on_message_state` or
        `messages()`. A messageId already in the outbox is not queued twice."""
        to = normalize_wallet(to)
        message = self.outbox.add(to, conv_id(self.wallet, to), message_id or new_id("m"), payload)
        if message.state == "queued":
            await self._sender.notify(message)
            self._sender.wake(message.conv_id)
        return message

    async def send(self, to: str, payload: str, *, message_id: str | None = None) -> Delivery:
        """`enqueue()`, then wait until the message is accepted: over the data channel (ACK
        window x tries), else by relay-service with force, retried through outages. Raises
        RtcClientError(code) when it is refused for good (400, 403, 413, ...)."""
        if self._closed:
            raise RtcClientError("closed", "the client was closed")
        message_id = message_id or new_id("m")
        # Registered before the message is stored: it cannot settle unseen.
        settled = self._sender.waiter(message_id)
        message = await self.enqueue(to, payload, message_id=message_id)
        message = self.outbox.get(message_id) or message  # it may have settled meanwhile
        if message.state != "queued":
            self._sender.forget(message_id, settled)
            if message.state == "failed":
                raise RtcClientError(message.error or "failed", "refused earlier")
            transport = message.transport or "relay"
            return Delivery(message.to, message.message_id, transport, False, 0, duplicate=True)
        outcome = await settled
        if isinstance(outcome, Sent):
            return outcome.delivery
        assert isinstance(outcome, Failed)
        raise RtcClientError(outcome.code, "relay enqueue refused", outcome.status)

    def messages(self) -> list[OutgoingMessage]:
        """The outbox: queued messages and the last settled ones, in send order."""
        return self.outbox.messages()

    async def _attempt(self, message: OutgoingMessage) -> Outcome:
        """One try of one message: the data channel, then the relay (sender.py's table)."""
        tries = 0
        if self.options.rtc and not self._closed and self.session_end_reason is None:
            tries, delivery = await self._peers.send(
                message.to, message.message_id, message.payload
            )
            if delivery is not None:
                await self._report(delivery)
                return Sent(delivery)
        forced = tries > 0
        status, answer, retry_after = await self._http.relay_enqueue_once(
            message.to, message.message_id, message.payload, forced
        )
        if status in (200, 202) and isinstance(answer, dict):
            delivery = Delivery(
                message.to,
                message.message_id,
                "relay",
                bool(answer.get("forced", forced)),
                tries,
                relay_id=str(answer.get("id")),
                duplicate=bool(answer.get("duplicate", False)),
            )
            await self._report(delivery)
            return Sent(delivery)
        code = answer.get("error") if isinstance(answer, dict) else None
        code = str(code or (f"http_{status}" if status else "network"))
        if status == 401 and self.options.token_provider is not None:
            return Retry(code)  # the provider was asked; its next token is tried after a pause
        if status in RETRY_STATUS:
            return Retry(code, retry_after)
        return Failed(code, status)

    async def _report(self, delivery: Delivery) -> None:
        if self.options.telemetry:
            pair = delivery.candidate_pair
            self._tasks.spawn(
                self.post_telemetry(delivery.transport, pair[0] if pair else None, delivery.forced)
            )
        callback = self.options.on_delivery
        if callback is not None:
            result = callback(delivery)
            if inspect.isawaitable(result):
                await result

    async def _signal_call(self, event: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._signaling.call(event, body)

    def _on_connect(self) -> None:
        # Every (re)connect: what the relay kept while we were away, and what we could not send.
        self._tasks.spawn(self._pull_quietly())
        self._sender.kick()

    async def _pull_quietly(self) -> None:
        try:
            await self.pull()
        except (RtcClientError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("relay pull failed", extra={"error": str(exc)})

    async def _on_rtc_error(self, data: Any) -> None:
        log.warning("rtc:error", extra={"event": data})

    async def _on_relay_message(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        await self._accept_relay(data)
        if isinstance(data.get("id"), str):
            try:
                await self._http.relay_ack([data["id"]])
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
        while len(self._seen) > self.options.dedup_size:
            self._seen.popitem(last=False)
        self.incoming.put_nowait(message)
        callback = self.options.on_message
        if callback is not None:
            result = callback(message)
            if inspect.isawaitable(result):
                await result
        return True
