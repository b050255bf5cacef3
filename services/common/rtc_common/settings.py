"""Typed settings read from the environment.

Every service gets one frozen object built once at start-up. A service class lists only the
variables that service uses; `load_settings` turns pydantic's validation errors into a
`SettingsError` that names the variable and never echoes its value (secrets may be in it).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BEARER_ROUTE_WHITELIST = r"^/api/(?:v1/)?(?:relay|signal|rtc)(?:/.*)?$"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
CsvList = Annotated[tuple[str, ...], NoDecode]
NetworkList = Annotated[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], NoDecode]


class SettingsError(Exception):
    """Raised when the environment does not describe a usable configuration."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class CommonSettings(BaseSettings):
    """Variables every service reads."""

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=False,
        extra="ignore",
        hide_input_in_errors=True,
        env_ignore_empty=True,
    )

    service_name: str = "rtc"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: LogLevel = "INFO"
    # uvloop by default; "asyncio" is the stdlib loop (the benchmarks compare both).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    redis_url: str = "redis://127.0.0.1:6379/0"
    directory_url: str | None = None
    mongo_db: str = "rtc"
    mongo_flags_collection: str = "featureflags"
    mongo_contacts_collection: str = "contacts"
    mongo_users_collection: str = "users"
    flag_cache_seconds: float = Field(default=5, ge=0)
    flag_stale_max_seconds: float = Field(default=300, ge=0)

    jwt_secret: SecretStr | None = None
    jwt_public_key: SecretStr | None = None
    # A PEM file instead of JWT_PUBLIC_KEY (multi-line values do not fit every .env format).
    jwt_public_key_file: str | None = None
    # Key rotation: a second verification key, accepted while the first is retired (tokens
    # signed with it stay valid until they expire). Same algorithm family as the main key.
    jwt_secret_previous: SecretStr | None = None
    jwt_public_key_previous: SecretStr | None = None
    jwt_public_key_previous_file: str | None = None
    jwt_algorithms: CsvList = ("HS256",)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_wallet_claim: str = "wallet"
    jwt_cookie_name: str = "access_token"
    csrf_cookie_name: str = "csrf_token"
    csrf_header_name: str = "X-CSRF-Token"
    allow_bearer_auth: bool = False
    bearer_route_whitelist: str = DEFAULT_BEARER_ROUTE_WHITELIST

    allowed_origins: CsvList = ()
    trusted_proxies: NetworkList = (ipaddress.ip_network("127.0.0.1"),)

    @field_validator("jwt_algorithms", "allowed_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        items = _split_csv(value)
        if isinstance(items, tuple):
            return tuple(ipaddress.ip_network(item, strict=False) for item in items)
        return items

    @field_validator("redis_url", "directory_url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("redis://", "rediss://", "unix://", "mongodb://", "mongodb+srv://")
        ):
            raise ValueError("must be a redis:// or mongodb:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_only(cls, value: str) -> str:
        if value.startswith("mongodb"):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256"}
        if not value:
            raise ValueError("at least one algorithm is required")
        for alg in value:
            if alg not in allowed:
                # "none" and unknown names must never be accepted.
                raise ValueError(f"unsupported algorithm {alg!r}")
        return value

    @field_validator("bearer_route_whitelist")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _read_key_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key in ("jwt_public_key", "jwt_public_key_previous"):
            if data.get(f"{key}_file") and not data.get(key):
                path = Path(str(data[f"{key}_file"]))
                try:
                    data = {**data, key: path.read_text()}
                except (OSError, UnicodeDecodeError) as exc:
                    reason = getattr(exc, "strerror", None) or type(exc).__name__
                    variable = f"{key}_file".upper()
                    raise ValueError(f"{variable} cannot be read ({reason})") from None
        return data

    @model_validator(mode="after")
    def _jwt_key(self) -> CommonSettings:
        symmetric = {a for a in self.jwt_algorithms if a.startswith("HS")}
        asymmetric = set(self.jwt_algorithms) - symmetric
        if symmetric and asymmetric:
            raise ValueError("JWT_ALGORITHMS: do not mix HMAC and public-key algorithms")
        if symmetric and self.jwt_secret is None:
            raise ValueError("JWT_SECRET is required for HMAC algorithms")
        if asymmetric and self.jwt_public_key is None:
            raise ValueError("JWT_PUBLIC_KEY is required for RS/ES/PS algorithms")
        for variable, value in (
            ("JWT_PUBLIC_KEY", self.jwt_public_key),
            ("JWT_PUBLIC_KEY_PREVIOUS", self.jwt_public_key_previous),
        ):
            if not asymmetric or value is None:
                continue
            # Checked here so a malformed key fails the start, not every request (as 401s or 500s).
            pem = value.get_secret_value()
            for alg in sorted(asymmetric):
                try:
                    key = get_default_algorithms()[alg].prepare_key(pem)
                except (InvalidKeyError, ValueError, TypeError):
                    raise ValueError(
                        f"{variable} is not a PEM public key usable with {alg}"
                    ) from None
                if hasattr(key, "private_bytes"):
                    raise ValueError(f"{variable} must be a public key, not a private key")
        return self

    @property
    def jwt_verification_keys(self) -> tuple[str, ...]:
        """The keys tokens are checked with, current first: the pinned family's key, then its
        `*_PREVIOUS` key during a rotation."""
        asymmetric = any(not alg.startswith("HS") for alg in self.jwt_algorithms)
        keys = (
            (self.jwt_public_key, self.jwt_public_key_previous)
            if asymmetric
            else (self.jwt_secret, self.jwt_secret_previous)
        )
        return tuple(key.get_secret_value() for key in keys if key is not None)

    @property
    def effective_directory_url(self) -> str:
        return self.directory_url or self.redis_url


class RelayStoreSettings(CommonSettings):
    """For services that touch the relay queue (relay-service, signal-service's relay:ack)."""

    relay_redis_url: str | None = None

    @field_validator("relay_redis_url")
    @classmethod
    def _relay_redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @property
    def effective_relay_redis_url(self) -> str:
        return self.relay_redis_url or self.redis_url


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_settings(cls: type[SettingsT], environ: Mapping[str, str] | None = None) -> SettingsT:
    """Build settings from `environ` (default: the process environment).

    Errors name the variable and the rule it breaks, never the value it had.
    """
    try:
        if environ is None:
            return cls()
        # An explicit mapping replaces the process environment entirely, which keeps tests and
        # tools independent of whatever the caller's shell exported.
        values: dict[str, Any] = {}
        lowered = {key.lower(): value for key, value in environ.items() if value != ""}
        for name in cls.model_fields:
            if name in lowered:
                values[name] = lowered[name]
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
