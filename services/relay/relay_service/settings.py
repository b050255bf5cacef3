"""relay-service settings: the common base plus the relay limits and its store."""

from __future__ import annotations

from pydantic import Field
from rtc_common.settings import RelayStoreSettings


class RelaySettings(RelayStoreSettings):
    service_name: str = "relay-service"
    port: int = Field(default=8301, ge=1, le=65535)

    relay_max_payload_bytes: int = Field(default=65536, ge=1, le=4 * 1024 * 1024)
    relay_max_queue: int = Field(default=10000, ge=1)
    relay_max_queue_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    # One sender's share of a recipient's queue (messages and bytes), so that no single account
    # can fill anyone's queue.
    relay_max_sender_share: float = Field(default=0.25, gt=0, le=1)
    relay_ttl_seconds: int = Field(default=604800, ge=1)
    relay_rate_limit_per_min: int = Field(default=600, ge=1)
    # The Socket.IO channel signal-service listens on (online push of relay:message).
    socketio_channel: str = "rtc-socketio"
