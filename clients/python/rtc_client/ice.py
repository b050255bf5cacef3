"""ICE configuration as ice-service answers it (`GET /api/v1/rtc/ice`), and its refresh."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import RTCIceServer

from rtc_client.clock import Clock
from rtc_client.errors import RtcClientError
from rtc_client.http_api import HttpApi
from rtc_client.options import ClientOptions

log = logging.getLogger("rtc_client")


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


class IceSource:
    """The client's ICE configuration: fetched at start, again at `refresh_at` (then
    `on_refresh` runs, to rebuild connections made with older credentials) and when a new
    connection needs it past `refresh_at`. The timer runs on `clock`."""

    def __init__(
        self,
        http: HttpApi,
        clock: Clock,
        options: ClientOptions,
        on_refresh: Callable[[], None],
    ) -> None:
        self.current: IceConfig | None = None
        self.fetches = 0
        self._http = http
        self._clock = clock
        self._options = options
        self._on_refresh = on_refresh
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> IceConfig:
        async with self._lock:
            return await self._fetch_locked()

    async def for_new_connection(self) -> IceConfig:
        """The current configuration, fetched again when it is due."""
        async with self._lock:
            ice = self.current
            if ice is not None and self._clock.now() < ice.refresh_at:
                return ice
            try:
                return await self._fetch_locked()
            except (RtcClientError, aiohttp.ClientError, TimeoutError) as exc:
                # Due but not expired yet: the current credentials still allocate.
                if ice is None or self._clock.now() >= ice.fetched_at + ice.ttl:
                    raise
                log.warning("ICE fetch failed; using the current one", extra={"error": str(exc)})
                return ice

    async def _fetch_locked(self) -> IceConfig:
        ice = IceConfig.from_response(
            await self._http.fetch_ice(),
            fetched_at=self._clock.now(),
            refresh_ratio=self._options.refresh_ratio,
        )
        self.current = ice
        self.fetches += 1
        log.info(
            "ICE fetched",
            extra={"provider": ice.provider, "ttl": ice.ttl, "expiresAt": ice.expires_at},
        )
        return ice

    async def _refresh_loop(self) -> None:
        retry = 5.0
        while not self._closed:
            ice = self.current
            if ice is None:
                return
            await self._clock.sleep_until(ice.refresh_at)
            if self.current is not ice:
                # Fetched meanwhile (a new connection needed it): rebuild the others too.
                self._on_refresh()
                continue
            try:
                await self.refresh()
            except (RtcClientError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("ICE refresh failed; retrying", extra={"error": str(exc)})
                await self._clock.sleep_until(self._clock.now() + retry)
                retry = min(retry * 2, 60.0)
                continue
            retry = 5.0
            self._on_refresh()
