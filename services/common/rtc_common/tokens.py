"""Minting test and operator tokens (`rtcctl token`, `rtcctl doctor`, the test kit).

The services only verify tokens (rtc_common.auth); the main application issues the real ones.
This is the one place that writes the claims this project expects, for the tools that need a
token of their own with the deployment's HMAC secret.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from .settings import CommonSettings


def mint_token(
    secret: str,
    wallet: str | None,
    *,
    expires_in: float = 3600,
    algorithm: str = "HS256",
    wallet_claim: str = "wallet",
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
    **claims: Any,
) -> str:
    """An HMAC-signed JWT for `wallet` (in `wallet_claim` and `sub`), valid for `expires_in`
    seconds from `now`; `claims` are added as given (they may override the defaults)."""
    issued = time.time() if now is None else now
    payload: dict[str, Any] = {"iat": int(issued), "exp": int(issued + expires_in)}
    if wallet is not None:
        payload[wallet_claim] = wallet
        payload["sub"] = wallet
    if issuer:
        payload["iss"] = issuer
    if audience:
        payload["aud"] = audience
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm=algorithm)


def mint_for(settings: CommonSettings, wallet: str, *, expires_in: float = 3600) -> str | None:
    """A token the deployment described by `settings` accepts, or None when it verifies with a
    public key (its tokens then come from the main application only)."""
    if settings.jwt_secret is None or not settings.jwt_algorithms[0].startswith("HS"):
        return None
    return mint_token(
        settings.jwt_secret.get_secret_value(),
        wallet,
        expires_in=expires_in,
        algorithm=settings.jwt_algorithms[0],
        wallet_claim=settings.jwt_wallet_claim,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
