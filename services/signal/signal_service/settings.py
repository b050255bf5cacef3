"""signal-service settings: the common base plus signaling and presence variables."""

from __future__ import annotations

import os
import secrets
import socket

from pydantic import Field
from rtc_common.settings import RelayStoreSettings


def _default_instance_id() -> str:
    # Unique per start, not only per host: a restarted container has the same hostname and,
    # under its init, the same pid, and an id reused by the new process made presence records
    # the old one left point at it (signals acked there, with no such socket, until reconciled).
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


class SignalSettings(RelayStoreSettings):
    # RELAY_REDIS_URL: the relay queue, for the `relay:ack` socket event.
    service_name: str = "signal-service"
    port: int = Field(default=8201, ge=1, le=65535)

    rtc_signal_legacy_enabled: bool = True
    presence_legacy_enabled: bool = True
    signal_rate_per_sec: int = Field(default=50, ge=1)
    # Sockets one wallet may hold at once, all instances together (connect_error
    # too_many_connections beyond).
    signal_max_sockets_per_wallet: int = Field(default=10, ge=1, le=1000)
    signal_max_sdp_bytes: int = Field(default=65536, ge=256, le=1_048_576)
    # permessage-deflate on the websockets: off, as in Node's socket.io
    # (rtc_common.middlewares.refuse_websocket_compression says why).
    signal_ws_compression: bool = False

    # Presence liveness: each instance refreshes a heartbeat every PRESENCE_HEARTBEAT_SECONDS; an
    # instance whose heartbeat is older than PRESENCE_INSTANCE_TTL_SECONDS is dead and its wallets
    # go offline. Worst case after a kill -9: TTL + one heartbeat period (default 15 + 5 = 20 s).
    presence_heartbeat_seconds: float = Field(default=5.0, gt=0, le=60)
    presence_instance_ttl_seconds: float = Field(default=15.0, gt=0, le=300)
    # A wallet's presence transitions within this many seconds of the last one announced are
    # coalesced (a flapping client does not fan out on every flap); the final state always goes.
    presence_debounce_seconds: float = Field(default=2.0, ge=0, le=60)
    instance_id: str = Field(
        default_factory=_default_instance_id, pattern=r"^[A-Za-z0-9._-]{1,64}$"
    )
    socketio_channel: str = "rtc-socketio"
