"""ICE configuration as ice-service answers it (`GET /api/v1/rtc/ice`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCIceServer

from rtc_client.errors import RtcClientError


@dataclass(frozen=True)
class IceConfig:
    """One answer of the ICE route. Its repr never shows credentials."""

    ice_servers: tuple[RTCIceServer, ...] = field(repr=False)
    ttl: float
    provider: str
    expires_at: str
    server_time: str
    fetched_at: float  # on the client's Clock
    refresh_ratio: float = 0.7

    @property
    def refresh_at(self) -> float:
        """When to fetch again, on the client's Clock: `refresh_ratio` of `ttl` after the fetch."""
        return self.fetched_at + self.ttl * self.refresh_ratio

    @property
    def turn_usernames(self) -> tuple[str, ...]:
        """The TURN usernames (`<expiry>:<wallet>` for coturn; not secret, unlike credentials)."""
        return tuple(s.username for s in self.ice_servers if s.username)

    @classmethod
    def from_response(
        cls, body: Mapping[str, Any], *, fetched_at: float, refresh_ratio: float = 0.7
    ) -> IceConfig:
        try:
            servers = []
            for entry in body["iceServers"]:
                urls = entry["urls"]
                if not isinstance(urls, str | list):
                    raise TypeError("urls")
                servers.append(
                    RTCIceServer(
                        urls=urls,
                        username=entry.get("username"),
                        credential=entry.get("credential"),
                    )
                )
            ttl = float(body["ttl"])
            if ttl <= 0:
                raise ValueError("ttl")
            return cls(
                ice_servers=tuple(servers),
                ttl=ttl,
                provider=str(body.get("provider", "")),
                expires_at=str(body.get("expiresAt", "")),
                server_time=str(body.get("serverTime", "")),
                fetched_at=fetched_at,
                refresh_ratio=refresh_ratio,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RtcClientError("invalid_response", f"malformed ICE answer ({exc})") from None
