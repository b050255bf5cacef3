"""ICE credential providers: coturn (HMAC, computed locally) and Twilio Network Traversal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from pydantic import BaseModel, ValidationError
from rtc_common.ice.settings import IceProviderSettings, Provider
from rtc_common.ice.turn import coturn_credentials
from rtc_common.tasks import stop_task

from .metrics import CIRCUIT_OPEN, UPSTREAM_CALLS, UPSTREAM_LATENCY, UPSTREAM_WAITING

log = logging.getLogger("ice.providers")

IceServer = dict[str, Any]
UPSTREAM_OUTCOMES = ("ok", "http_error", "timeout", "bad_response", "connection", "error")
# A reused Twilio token is served on upstream failure only while at least this much life remains.
MIN_SERVED_TTL = 60.0
# A token resource is about 1 KiB; a larger answer is an upstream fault, not read into memory.
TWILIO_MAX_BODY_BYTES = 64 * 1024


class ProviderError(Exception):
    """The provider could not issue credentials; the message is safe to log (no secrets)."""


class _OversizedBody(Exception):
    pass


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or `_OversizedBody` as soon as it exceeds `limit` (decoded bytes, so a
    compressed answer cannot expand past it either)."""
    if response.content_length is not None and response.content_length > limit:
        raise _OversizedBody
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise _OversizedBody
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class IceCredentials:
    ice_servers: list[IceServer]
    expires_at: float  # unix seconds
    provider: Provider


class IceProvider(Protocol):
    name: Provider

    async def issue(self, wallet: str) -> IceCredentials: ...


class UnconfiguredProvider:
    """Stands in for a provider whose variables are missing: every call fails (503)."""

    def __init__(self, name: Provider, missing: list[str]) -> None:
        self.name = name
        self.missing = missing

    async def issue(self, wallet: str) -> IceCredentials:
        raise ProviderError(
            f"{self.name} provider is not configured (missing {', '.join(self.missing)})"
        )


class CoturnProvider:
    name: Provider = "coturn"

    def __init__(
        self, settings: IceProviderSettings, clock: Callable[[], float] = time.time
    ) -> None:
        assert settings.turn_secret is not None
        self._secret = settings.turn_secret.get_secret_value()
        self._uris = list(settings.turn_uris)
        self._stun = list(settings.turn_stun_fallback)
        self._ttl = settings.turn_cred_ttl
        self._clock = clock

    async def issue(self, wallet: str) -> IceCredentials:
        expiry = int(self._clock()) + self._ttl
        username, credential = coturn_credentials(self._secret, wallet, expiry)
        servers: list[IceServer] = [{"urls": uri} for uri in self._stun]
        servers.append({"urls": list(self._uris), "username": username, "credential": credential})
        return IceCredentials(servers, float(expiry), "coturn")


class _TwilioIceServer(BaseModel):
    urls: str | list[str] | None = None
    url: str | None = None
    username: str | None = None
    credential: str | None = None


class _TwilioToken(BaseModel):
    ice_servers: list[_TwilioIceServer]
    ttl: int


@dataclass
class CircuitBreaker:
    """Opens after `threshold` consecutive failures; lets one trial through after `cooldown`."""

    threshold: int = 3
    cooldown: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = field(default=None)

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if self.clock() - self.opened_at >= self.cooldown:
            self.opened_at = self.clock()  # half-open: one trial per cooldown
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = self.clock()


class TwilioProvider:
    """Tokens from Twilio's REST API (`POST /2010-04-01/Accounts/{sid}/Tokens.json`).

    A Twilio token is not tied to a user, so one token serves every wallet while at least half
    of its life remains; concurrent misses share one upstream call.
    """

    name: Provider = "twilio"

    def __init__(
        self,
        settings: IceProviderSettings,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        sid, key, secret = (
            settings.twilio_account_sid,
            settings.twilio_api_key,
            settings.twilio_api_secret,
        )
        assert sid and key and secret, "checked by IceSettings.missing_for"
        self._session = session
        self._url = f"{settings.twilio_base_url}/2010-04-01/Accounts/{sid}/Tokens.json"
        self._headers = {"Authorization": aiohttp.encode_basic_auth(key, secret.get_secret_value())}
        self._ttl = settings.turn_cred_ttl
        self._timeout = aiohttp.ClientTimeout(total=settings.twilio_timeout_seconds)
        self._clock = clock
        self._cached: IceCredentials | None = None
        self._inflight: asyncio.Task[IceCredentials] | None = None
        self.breaker = CircuitBreaker()
        # Every series exists from the start: a rate() over a series born at 3 sees no increase.
        for outcome in UPSTREAM_OUTCOMES:
            UPSTREAM_CALLS.labels("twilio", outcome)
        CIRCUIT_OPEN.labels("twilio").set(0)

    @property
    def url(self) -> str:
        return self._url

    async def issue(self, wallet: str) -> IceCredentials:
        cached = self._cached
        if cached is not None and cached.expires_at - self._clock() >= self._ttl / 2:
            return cached
        if self._inflight is None:
            if not self.breaker.allow():
                raise ProviderError("twilio circuit open after repeated failures")
            self._inflight = asyncio.create_task(self._fetch())
            self._inflight.add_done_callback(self._clear_inflight)
        UPSTREAM_WAITING.inc()
        try:
            return await asyncio.shield(self._inflight)
        except ProviderError:
            # A token past its reuse threshold is still valid: better than no credentials.
            if cached is not None and cached.expires_at - self._clock() >= MIN_SERVED_TTL:
                log.warning(
                    "twilio failed, serving the previous token", extra={"provider": "twilio"}
                )
                return cached
            raise
        finally:
            UPSTREAM_WAITING.dec()

    async def close(self) -> None:
        """Cancel a call still in flight (app shutdown)."""
        if self._inflight is not None:
            with contextlib.suppress(ProviderError):
                await stop_task(self._inflight)

    def _clear_inflight(self, task: asyncio.Task[IceCredentials]) -> None:
        self._inflight = None
        if not task.cancelled() and task.exception() is None:
            self._cached = task.result()

    async def _fetch(self) -> IceCredentials:
        started = self._clock()
        timer = time.perf_counter()
        try:
            async with self._session.post(
                self._url,
                data={"Ttl": str(self._ttl)},
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                if response.status not in (200, 201):
                    raise ProviderError(f"twilio answered HTTP {response.status}")
                body = await _read_capped(response, TWILIO_MAX_BODY_BYTES)
            token = _TwilioToken.model_validate_json(body)
        except ProviderError:
            self._failed("http_error")
            raise
        except _OversizedBody:
            self._failed("bad_response")
            raise ProviderError("twilio answered with an oversized body") from None
        except TimeoutError:
            self._failed("timeout")
            raise ProviderError("twilio did not answer in time") from None
        except ValidationError:
            self._failed("bad_response")
            raise ProviderError("twilio answered with an unexpected body") from None
        except aiohttp.ClientError as exc:
            self._failed("connection")
            raise ProviderError(f"twilio unreachable ({type(exc).__name__})") from None
        except Exception as exc:  # anything else is still a provider failure: 503, breaker counts
            self._failed("error")
            raise ProviderError(f"twilio call failed ({type(exc).__name__})") from None
        finally:
            UPSTREAM_LATENCY.labels("twilio").observe(time.perf_counter() - timer)
        servers: list[IceServer] = []
        for server in token.ice_servers:
            urls = server.urls or server.url
            if not urls:
                continue
            entry: IceServer = {"urls": urls}
            if server.username is not None:
                entry["username"] = server.username
            if server.credential is not None:
                entry["credential"] = server.credential
            servers.append(entry)
        if not servers:
            self._failed("bad_response")
            raise ProviderError("twilio answered with no ICE servers")
        self.breaker.success()
        CIRCUIT_OPEN.labels("twilio").set(0)
        UPSTREAM_CALLS.labels("twilio", "ok").inc()
        return IceCredentials(servers, started + token.ttl, "twilio")

    def _failed(self, outcome: str) -> None:
        self.breaker.failure()
        CIRCUIT_OPEN.labels("twilio").set(int(self.breaker.opened_at is not None))
        UPSTREAM_CALLS.labels("twilio", outcome).inc()
        log.warning("twilio token request failed", extra={"outcome": outcome})


class IceIssuer:
    """The primary provider, then the fallback; `ProviderError` when both fail."""

    def __init__(self, primary: IceProvider, fallback: IceProvider | None = None) -> None:
        self.primary = primary
        self.fallback = fallback

    async def issue(self, wallet: str) -> IceCredentials:
        try:
            return await self.primary.issue(wallet)
        except ProviderError as exc:
            if self.fallback is None:
                raise
            log.warning(
                "primary provider failed, using fallback",
                extra={
                    "primary": self.primary.name,
                    "fallback": self.fallback.name,
                    "reason": str(exc),
                },
            )
            return await self.fallback.issue(wallet)
