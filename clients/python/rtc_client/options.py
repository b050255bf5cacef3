"""The client's options: everything but the base URL, the token and the wallet."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import aiohttp

from rtc_client.clock import Clock
from rtc_client.model import Delivery, IncomingMessage
from rtc_client.outbox import OutgoingMessage

IcePolicy = Literal["all", "relay"]
MessageCallback = Callable[[IncomingMessage], Awaitable[None] | None]
DeliveryCallback = Callable[[Delivery], Awaitable[None] | None]
SessionEndCallback = Callable[[str], Awaitable[None] | None]
MessageStateCallback = Callable[[OutgoingMessage], Awaitable[None] | None]
# The app's source of fresh tokens (plain or async), asked on a 401 and at `token_expired`.
TokenProvider = Callable[[], Awaitable[str] | str]


@dataclass
class ClientOptions:
    """`RtcClient(base_url, token, wallet, ClientOptions(...))`. The client works on its own copy,
    so one instance can serve several clients."""

    ice_transport_policy: IcePolicy = "all"
    # Per try: covers the connection set-up and the ACK.
    ack_window: float = 3.0
    rtc_tries: int = 2
    # False: relay only (no ICE fetch, no peer connection, `rtc: false` at the handshake).
    rtc: bool = True
    # When to fetch ICE again, as a share of its ttl.
    refresh_ratio: float = 0.7
    # Drives the ICE refresh timer only (default: the event loop's); ManualClock lets a test
    # move time.
    clock: Clock | None = None
    signal_url: str | None = None  # default: the base URL
    # The caller's session is used as is and not closed; default: one of the client's own.
    http_session: aiohttp.ClientSession | None = None
    # Source address of the client's own HTTP and websocket connections.
    local_addr: str | None = None
    on_message: MessageCallback | None = None
    on_delivery: DeliveryCallback | None = None
    on_session_end: SessionEndCallback | None = None
    negotiation_timeout: float = 10.0
    signal_timeout: float = 5.0
    telemetry: bool = True
    dedup_size: int = 10_000
    reconnection_delay: float = 1.0
    reconnection_delay_max: float = 5.0
    # Where the outbox keeps queued messages across restarts (a SQLite file per wallet in this
    # directory); None: in memory, for this process only.
    outbox_dir: str | None = None
    # Backoff of the outbox's relay retries: doubling from the first, capped, with jitter.
    retry_delay: float = 0.5
    retry_delay_max: float = 10.0
    on_message_state: MessageStateCallback | None = None
    token_provider: TokenProvider | None = None

    def __post_init__(self) -> None:
        if self.rtc_tries < 0 or self.ack_window <= 0 or not 0 < self.refresh_ratio < 1:
            raise ValueError("rtc_tries >= 0, ack_window > 0 and 0 < refresh_ratio < 1")
        if not 0 < self.retry_delay <= self.retry_delay_max:
            raise ValueError("0 < retry_delay <= retry_delay_max")
