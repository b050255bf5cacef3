"""ice-service: `create_app(settings)` and its handlers."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError
from rtc_common.auth import IDENTITY_KEY, allow_anonymous
from rtc_common.clients import REDIS_KEY, redis_context
from rtc_common.directory import FLAGS_KEY, directory_context
from rtc_common.errors import ApiError, invalid_payload, unauthorized
from rtc_common.jsonbody import error_fields, read_json
from rtc_common.keys import add_dependency, extra_headers, route_label
from rtc_common.metrics import labelled
from rtc_common.ratelimit import RateLimiter
from rtc_common.responses import json_response
from rtc_common.revocation import REVOCATIONS_KEY, revocations_context
from rtc_common.tasks import stop_task
from rtc_common.times import iso_ms
from rtc_common.web import client_ip, create_base_app, serve_openapi

from .admin import ADMIN_LIMITER_KEY, add_admin_routes
from .metrics import FAILED, FALLBACK_USED, ISSUED, REQUEST_LATENCY, REQUESTS, TRANSPORT
from .providers import (
    CoturnProvider,
    IceIssuer,
    IceProvider,
    ProviderError,
    TwilioProvider,
    UnconfiguredProvider,
)
from .settings import IceSettings, Provider
from .turn_revoke import CoturnCli, TurnRevoker

log = logging.getLogger("ice.app")

ICE_FLAG = "rtc.ice"
API_PREFIXES = ("/api/v1/rtc", "/api/rtc", "/api/rtc/v1")

ICE_SETTINGS_KEY = web.AppKey("ice_settings", IceSettings)
ISSUER_KEY = web.AppKey("ice_issuer", IceIssuer)
ICE_LIMITER_KEY = web.AppKey("ice_limiter", RateLimiter)
TELEMETRY_LIMITER_KEY = web.AppKey("ice_telemetry_limiter", RateLimiter)


class TelemetryEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    transport: Literal["rtc", "relay"]
    candidateType: Literal["host", "srflx", "prflx", "relay"] | None = None
    forced: bool = False


def _cache_headers(settings: IceSettings) -> dict[str, str]:
    cache = (
        f"private, max-age={settings.ice_cache_max_age}"
        if settings.ice_cache_max_age > 0
        else "private, no-store"
    )
    return {"Cache-Control": cache, "Vary": "Cookie, Authorization"}


@allow_anonymous
async def get_ice(request: web.Request) -> web.Response:
    """The ICE route, counted by route, answering provider and status, and timed."""
    started = time.perf_counter()
    provider, status = "none", 500
    try:
        response, provider = await _answer_ice(request)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's code for it)
        raise
    finally:
        labelled(REQUESTS, route_label(request), provider, str(status)).inc()
        labelled(REQUEST_LATENCY, provider).observe(time.perf_counter() - started)


async def _answer_ice(request: web.Request) -> tuple[web.Response, str]:
    app = request.app
    settings = app[ICE_SETTINGS_KEY]
    headers = extra_headers(request)
    headers.update(_cache_headers(settings))
    identity = request.get(IDENTITY_KEY)
    if identity is None:
        if not settings.ice_allow_anonymous:
            raise unauthorized()
        wallet, limit_key = "anon", f"ip:{client_ip(request, settings.trusted_proxies)}"
    else:
        wallet, limit_key = identity.wallet, f"wallet:{identity.wallet}"

    verdict = await app[ICE_LIMITER_KEY].hit(limit_key)
    headers.update(verdict.headers())
    verdict.raise_if_limited()

    if not await app[FLAGS_KEY].is_enabled(ICE_FLAG):
        raise ApiError("feature_disabled", f"feature flag {ICE_FLAG} is disabled")

    issuer = app[ISSUER_KEY]
    try:
        credentials = await issuer.issue(wallet)
    except ProviderError as exc:
        FAILED.inc()
        log.warning("no ICE provider could answer", extra={"reason": str(exc)})
        raise ApiError("ice_unavailable", "ICE credentials are temporarily unavailable") from None
    labelled(ISSUED, credentials.provider).inc()
    if credentials.provider != issuer.primary.name:
        FALLBACK_USED.labels(credentials.provider).inc()

    now = time.time()
    response = json_response(
        {
            "iceServers": credentials.ice_servers,
            "ttl": max(0, math.ceil(credentials.expires_at - now)),
            "provider": credentials.provider,
            "serverTime": iso_ms(now),
            "expiresAt": iso_ms(credentials.expires_at),
        }
    )
    return response, credentials.provider


async def post_telemetry(request: web.Request) -> web.Response:
    identity = request[IDENTITY_KEY]
    verdict = await request.app[TELEMETRY_LIMITER_KEY].hit(f"wallet:{identity.wallet}")
    extra_headers(request).update(verdict.headers())
    verdict.raise_if_limited()
    data = await read_json(request)
    try:
        event = TelemetryEvent.model_validate(data)
    except ValidationError as exc:
        raise invalid_payload(f"invalid telemetry event: {error_fields(exc)}") from None
    TRANSPORT.labels(
        event.transport, event.candidateType or "unknown", str(event.forced).lower()
    ).inc()
    return web.Response(status=204)


def _build_provider(
    name: Provider, settings: IceSettings, session: aiohttp.ClientSession
) -> IceProvider:
    missing = settings.missing_for(name)
    if missing:
        log.warning(
            "ICE provider not configured; it will answer ice_unavailable",
            extra={"provider": name, "missing": missing},
        )
        return UnconfiguredProvider(name, missing)
    if name == "coturn":
        return CoturnProvider(settings)
    return TwilioProvider(settings, session)


async def _ice_dependencies(app: web.Application) -> AsyncIterator[None]:
    settings = app[ICE_SETTINGS_KEY]
    session = aiohttp.ClientSession(raise_for_status=False)
    primary = _build_provider(settings.rtc_provider, settings, session)
    fallback = (
        _build_provider(settings.rtc_provider_fallback, settings, session)
        if settings.rtc_provider_fallback
        else None
    )
    app[ISSUER_KEY] = IceIssuer(primary, fallback)
    redis = app[REDIS_KEY]
    app[ICE_LIMITER_KEY] = RateLimiter(redis, scope="ice", limit=settings.ice_rate_limit_per_min)
    app[TELEMETRY_LIMITER_KEY] = RateLimiter(
        redis, scope="telemetry", limit=settings.telemetry_rate_limit_per_min
    )

    async def provider_ready() -> None:
        if all(isinstance(p, UnconfiguredProvider) for p in (primary, fallback) if p is not None):
            raise ProviderError("no ICE provider is configured")

    # Not required: without a provider ice-service answers 503 ice_unavailable (an answer).
    add_dependency(app, "provider", provider_ready, required=False)
    if settings.admin_token is not None:
        app[ADMIN_LIMITER_KEY] = RateLimiter(
            redis, scope="admin", limit=settings.admin_rate_limit_per_min
        )
    revoker = _turn_revoker(app, settings)
    yield
    if revoker is not None:
        await stop_task(revoker)
    for provider in (primary, fallback):
        if isinstance(provider, TwilioProvider):
            await provider.close()
    await session.close()


def _turn_revoker(app: web.Application, settings: IceSettings) -> asyncio.Task[None] | None:
    """The task ending revoked wallets' coturn sessions, when coturn's CLI is configured."""
    if settings.turn_admin_address is None or settings.turn_admin_password is None:
        if settings.admin_token is not None and "coturn" in (
            settings.rtc_provider,
            settings.rtc_provider_fallback,
        ):
            log.warning(
                "TURN_ADMIN_ADDRESS is not set: a revoked wallet's TURN credentials stay "
                "valid at coturn until they expire (TURN_CRED_TTL)"
            )
        return None
    cli = CoturnCli(settings.turn_admin_address, settings.turn_admin_password.get_secret_value())
    revoker = TurnRevoker(cli, app[REVOCATIONS_KEY], settings.turn_cred_ttl)
    return asyncio.create_task(revoker.run(), name="turn-revoker")


def create_app(settings: IceSettings) -> web.Application:
    app = create_base_app(settings)
    app[ICE_SETTINGS_KEY] = settings
    # Not required: the rate limits fall back to per-process ones while Redis is down.
    app.cleanup_ctx.append(redis_context(REDIS_KEY, settings.redis_url, required=False))
    app.cleanup_ctx.append(revocations_context(REDIS_KEY))
    app.cleanup_ctx.append(directory_context(settings))
    app.cleanup_ctx.append(_ice_dependencies)
    for prefix in API_PREFIXES:
        app.router.add_get(f"{prefix}/ice", get_ice)
        app.router.add_post(f"{prefix}/telemetry", post_telemetry)
    add_admin_routes(app, settings)
    serve_openapi(app, "ice_service", "/api/v1/rtc/openapi.json")
    return app
