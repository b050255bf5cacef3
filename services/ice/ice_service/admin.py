"""The admin routes: revoke a wallet's access (`POST`) and lift it (`DELETE`).

Registered only when ADMIN_TOKEN is set (404 otherwise, through the gateway too). Authorised by
`Authorization: Bearer <ADMIN_TOKEN>`, compared in constant time; a user's JWT is never an admin
credential. Attempts are rate limited per client address, failed ones included.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from redis.exceptions import RedisError
from rtc_common.auth import is_valid_wallet, normalize_wallet, public
from rtc_common.clients import REDIS_KEY
from rtc_common.errors import ApiError, invalid_payload, unauthorized, unavailable
from rtc_common.jsonbody import parse_body
from rtc_common.keys import extra_headers
from rtc_common.logs import info_line, wallet_hash
from rtc_common.ratelimit import RateLimiter
from rtc_common.responses import json_response
from rtc_common.revocation import REVOCATIONS_KEY, REVOKE_MAX_SECONDS
from rtc_common.times import iso_ms
from rtc_common.web import client_ip

from .metrics import ADMIN_REQUESTS
from .settings import IceSettings

log = logging.getLogger("ice.admin")

ADMIN_LIMITER_KEY = web.AppKey("ice_admin_limiter", RateLimiter)
ADMIN_SETTINGS_KEY = web.AppKey("ice_admin_settings", IceSettings)
REVOKE_PATH = "/api/v1/rtc/admin/revoke"

Wallet = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class RevokeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    wallet: Wallet
    # Absent: until lifted.
    seconds: Annotated[int, Field(ge=1, le=REVOKE_MAX_SECONDS)] | None = None


class LiftRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    wallet: Wallet


async def _authorise(request: web.Request, action: str) -> None:
    settings = request.app[ADMIN_SETTINGS_KEY]
    verdict = await request.app[ADMIN_LIMITER_KEY].hit(
        f"ip:{client_ip(request, settings.trusted_proxies)}"
    )
    extra_headers(request).update(verdict.headers())
    verdict.raise_if_limited()
    assert settings.admin_token is not None  # the routes exist only with it
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), expected
    ):
        ADMIN_REQUESTS.labels(action, "unauthorized").inc()
        raise unauthorized("admin token required")


BodyT = TypeVar("BodyT", RevokeRequest, LiftRequest)


async def _body(request: web.Request, model: type[BodyT]) -> tuple[str, BodyT]:
    """The validated body and its wallet, normalised."""
    body = await parse_body(request, model)
    wallet = normalize_wallet(body.wallet)
    if not is_valid_wallet(wallet):
        raise invalid_payload("invalid fields: wallet")
    return wallet, body


@public  # authorised by ADMIN_TOKEN in _authorise, never by a user's credentials
async def revoke(request: web.Request) -> web.Response:
    await _authorise(request, "revoke")
    wallet, body = await _body(request, RevokeRequest)
    try:
        entry = await request.app[REVOCATIONS_KEY].revoke(
            request.app[REDIS_KEY], wallet, body.seconds
        )
    except RedisError:
        ADMIN_REQUESTS.labels("revoke", "unavailable").inc()
        raise unavailable("the revocation could not be recorded, retry") from None
    except ApiError:
        ADMIN_REQUESTS.labels("revoke", "refused").inc()
        raise
    ADMIN_REQUESTS.labels("revoke", "ok").inc()
    info_line(log, "wallet revoked", {"walletHash": wallet_hash(wallet), "seconds": body.seconds})
    return json_response(
        {
            "wallet": wallet,
            "revoked": True,
            "revokedAt": iso_ms(entry.at),
            "until": iso_ms(entry.until) if entry.until is not None else None,
        }
    )


@public  # authorised by ADMIN_TOKEN in _authorise, never by a user's credentials
async def lift(request: web.Request) -> web.Response:
    await _authorise(request, "lift")
    wallet, _ = await _body(request, LiftRequest)
    try:
        was_revoked = await request.app[REVOCATIONS_KEY].lift(request.app[REDIS_KEY], wallet)
    except RedisError:
        ADMIN_REQUESTS.labels("lift", "unavailable").inc()
        raise unavailable("the change could not be recorded, retry") from None
    ADMIN_REQUESTS.labels("lift", "ok").inc()
    info_line(log, "revocation lifted", {"walletHash": wallet_hash(wallet)})
    return json_response({"wallet": wallet, "revoked": False, "wasRevoked": was_revoked})


def add_admin_routes(app: web.Application, settings: IceSettings) -> None:
    """The admin routes, if ADMIN_TOKEN is set (the limiter is made in a cleanup context)."""
    if settings.admin_token is None:
        return
    app[ADMIN_SETTINGS_KEY] = settings
    app.router.add_post(REVOKE_PATH, revoke)
    app.router.add_delete(REVOKE_PATH, lift)
