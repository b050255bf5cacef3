"""JWT verification and the aiohttp auth middleware (cookie + CSRF, or Bearer on whitelisted paths).

JWTs are issued by the main application; this module only verifies them. Algorithms are pinned
by settings, `exp` is required, and `iss`/`aud` are checked when configured.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import jwt
from aiohttp import web

from .errors import ApiError, unauthorized
from .revocation import Revocations, revoked_error
from .settings import CommonSettings

MAX_TOKEN_LENGTH = 8192
# Verified tokens remembered per process (see JwtVerifier._remember).
VERIFIED_CACHE_SIZE = 10_000
_HEX_WALLET = re.compile(r"^0x[0-9a-fA-F]+$")
# Wallets end up in Redis keys, TURN usernames ("<expiry>:<wallet>") and convIds ("a:b"),
# so separators and control characters are refused rather than escaped.
_WALLET = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")

AuthMethod = Literal["bearer", "cookie", "anonymous"]


@dataclass(frozen=True, slots=True)
class Identity:
    wallet: str
    method: AuthMethod
    claims: Mapping[str, Any]


def normalize_wallet(value: str) -> str:
    """0x-hex wallets compare lowercase; anything else is kept as given."""
    value = value.strip()
    return value.lower() if _HEX_WALLET.match(value) else value


def is_valid_wallet(value: str) -> bool:
    return bool(_WALLET.match(value))


def conv_id(wallet_a: str, wallet_b: str) -> str:
    """Canonical conversation id of two normalized wallets."""
    return ":".join(sorted((wallet_a, wallet_b)))


class JwtVerifier:
    def __init__(self, settings: CommonSettings) -> None:
        # The key follows the pinned algorithm family (settings refuse mixing families): a leftover
        # JWT_SECRET must not become the key of RS/ES/PS tokens, nor the public key an HMAC secret.
        # During a key rotation the previous key (JWT_SECRET_PREVIOUS / JWT_PUBLIC_KEY_PREVIOUS)
        # follows the current one; it is tried only when the signature does not match.
        self._keys = settings.jwt_verification_keys
        if not self._keys:  # settings validation guarantees one of them
            raise ValueError("JWT_SECRET or JWT_PUBLIC_KEY is required")
        self._algorithms = list(settings.jwt_algorithms)
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._wallet_claim = settings.jwt_wallet_claim
        self._verified: dict[str, Identity] = {}

    def _decode(self, token: str) -> dict[str, Any]:
        for index, key in enumerate(self._keys):
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=self._algorithms,
                    issuer=self._issuer,
                    audience=self._audience,
                    options={"require": ["exp"], "verify_aud": self._audience is not None},
                )
            except jwt.InvalidSignatureError:
                # The signature is checked before any claim: another key may still match.
                if index == len(self._keys) - 1:
                    raise
                continue
            return claims
        raise jwt.InvalidSignatureError("no verification key")

    def verify(self, token: str, method: AuthMethod) -> Identity:
        # A JWT is ASCII; other text (e.g. undecodable header bytes) must not reach PyJWT, whose
        # encode step would raise something other than a PyJWTError (a 500).
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise unauthorized("invalid token")
        cached = self._verified.get(token)
        if cached is not None:
            if time.time() < cached.claims["exp"]:  # no leeway, like PyJWT's check here
                return Identity(wallet=cached.wallet, method=method, claims=cached.claims)
            del self._verified[token]
            raise unauthorized("token expired")
        try:
            claims = self._decode(token)
        except jwt.ExpiredSignatureError:
            raise unauthorized("token expired") from None
        except jwt.PyJWTError:
            # One message for every other failure: callers learn nothing about which check failed.
            raise unauthorized("invalid token") from None
        wallet = claims.get(self._wallet_claim) or claims.get("sub")
        if not isinstance(wallet, str) or not wallet.strip():
            raise unauthorized("token has no wallet claim")
        wallet = normalize_wallet(wallet)
        if not is_valid_wallet(wallet):
            raise unauthorized("token wallet claim is malformed")
        identity = Identity(wallet=wallet, method=method, claims=claims)
        self._remember(token, identity)
        return identity

    def _remember(self, token: str, identity: Identity) -> None:
        # Clients send the same token on every request: a verified token is remembered (by its
        # whole text, signature included) until its exp, so the signature is checked once.
        if not isinstance(identity.claims.get("exp"), int | float):
            return
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = identity


class Authenticator:
    """Turns request credentials into an Identity; shared by HTTP and the Socket.IO handshake.
    A valid token of a revoked wallet is refused (403 `revoked`)."""

    def __init__(
        self,
        settings: CommonSettings,
        verifier: JwtVerifier | None = None,
        revocations: Revocations | None = None,
    ) -> None:
        self.settings = settings
        self.verifier = verifier or JwtVerifier(settings)
        self.revocations = revocations if revocations is not None else Revocations()
        self._whitelist = re.compile(settings.bearer_route_whitelist)

    def _admit(self, identity: Identity) -> Identity:
        if self.revocations.is_revoked(identity.wallet):
            raise revoked_error()
        return identity

    def bearer(self, token: str) -> Identity:
        if not self.settings.allow_bearer_auth:
            raise unauthorized("bearer authentication is disabled")
        return self._admit(self.verifier.verify(token, "bearer"))

    def cookie_token(self, token: str) -> Identity:
        """The cookie's token once its CSRF defence was checked by the caller."""
        return self._admit(self.verifier.verify(token, "cookie"))

    def bearer_for_path(self, authorization: str, path: str) -> Identity:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("unsupported authorization scheme")
        if self.settings.allow_bearer_auth and not self._whitelist.match(path):
            raise unauthorized("bearer authentication is not allowed on this route")
        return self.bearer(token.strip())

    def cookie(self, cookies: Mapping[str, str], csrf_header: str | None) -> Identity:
        token = cookies.get(self.settings.jwt_cookie_name, "")
        csrf_cookie = cookies.get(self.settings.csrf_cookie_name, "")
        if (
            not csrf_cookie
            or not csrf_header
            # surrogateescape: header bytes that are not UTF-8 compare as bytes instead of raising.
            or not hmac.compare_digest(
                csrf_cookie.encode("utf-8", "surrogateescape"),
                csrf_header.encode("utf-8", "surrogateescape"),
            )
        ):
            raise ApiError("csrf_failed", "CSRF header missing or does not match the CSRF cookie")
        return self.cookie_token(token)

    def has_cookie_token(self, cookies: Mapping[str, str]) -> bool:
        return bool(cookies.get(self.settings.jwt_cookie_name))


IDENTITY_KEY = web.RequestKey("rtc_identity", Identity)

HandlerT = TypeVar("HandlerT", bound=Callable[..., Awaitable[web.StreamResponse]])


def allow_anonymous(handler: HandlerT) -> HandlerT:
    """Mark a handler under /api/ that may run without credentials (it decides what to allow)."""
    handler.__rtc_allow_anonymous__ = True  # type: ignore[attr-defined]
    return handler


def public(handler: HandlerT) -> HandlerT:
    """Mark a handler under /api/ that never needs credentials (documents, not data)."""
    handler.__rtc_public__ = True  # type: ignore[attr-defined]
    return handler


def get_identity(request: web.Request) -> Identity:
    identity: Identity | None = request.get(IDENTITY_KEY)
    if identity is None:
        raise unauthorized()
    return identity


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(authenticator: Authenticator) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Authenticate every matched route under /api/.

    Credentials that are present must be valid (a bad token never degrades to anonymous).
    Without credentials the request is refused unless its handler is marked `allow_anonymous`.
    """
    csrf_header_name = authenticator.settings.csrf_header_name

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        match_info = request.match_info
        if not request.path.startswith("/api/") or match_info.http_exception is not None:
            return await handler(request)
        route_handler = match_info.handler
        if getattr(route_handler, "__rtc_public__", False):
            return await handler(request)
        authorization = request.headers.get("Authorization")
        if authorization:
            request[IDENTITY_KEY] = authenticator.bearer_for_path(authorization, request.path)
        elif authenticator.has_cookie_token(request.cookies):
            request[IDENTITY_KEY] = authenticator.cookie(
                request.cookies, request.headers.get(csrf_header_name)
            )
        elif not getattr(route_handler, "__rtc_allow_anonymous__", False):
            raise unauthorized()
        return await handler(request)

    return middleware
