"""relay-service settings: the common base plus the relay limits and its store."""

from __future__ import annotations

from pydantic import Field, field_validator
from rtc_common.settings import CommonSettings


class RelaySettings(CommonSettings):
    service_name: str = "relay-service"
    port: int = Field(default=8301, ge=1, le=65535)

    relay_redis_url: str | None = None
    relay_max_payload_bytes: int = Field(default=65536, ge=1, le=4 * 1024 * 1024)
    relay_max_queue: int = Field(default=10000, ge=1)
    relay_ttl_seconds: int = Field(default=604800, ge=1)
    relay_rate_limit_per_min: int = Field(default=600, ge=1)
    # The Socket.IO channel signal-service listens on (online push of relay:message).
    socketio_channel: str = "rtc-socketio"

    @field_validator("relay_redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @property
    def effective_relay_redis_url(self) -> str:
        return self.relay_redis_url or self.redis_url
