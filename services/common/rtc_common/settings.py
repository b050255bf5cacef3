"""Typed settings read from the environment.

Every service gets one frozen object built once at start-up. A service class lists only the
variables that service uses; `load_settings` turns pydantic's validation errors into a
`SettingsError` that names the variable and never echoes its value (secrets may be in it).

Every secret can also come from a file, `<NAME>_FILE` (a compose or Kubernetes secret mount):
the classes list them in `SECRET_FILE_FIELDS`, read once here; setting both forms is an error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BEARER_ROUTE_WHITELIST = r"^/api/(?:v1/)?(?:relay|signal|rtc)(?:/.*)?$"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
CsvList = Annotated[tuple[str, ...], NoDecode]
NetworkList = Annotated[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], NoDecode]


# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
PSEUDONYM_KEY_MIN_BYTES = 32
# A secret (or PEM key) file is small; a larger one is a mistake (e.g. /dev/zero), not a key.
SECRET_FILE_MAX_BYTES = 64 * 1024
_REDIS_URL_FIELDS = ("redis_url", "relay_redis_url", "directory_url")


class SettingsError(Exception):
    """Raised when the environment does not describe a usable configuration."""


def read_secret_file(variable: str, path: Path) -> str:
    """The secret in `path`, without one trailing newline (what `echo` and editors add).

    Errors name `variable` and the reason, never the content.
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(SECRET_FILE_MAX_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"{variable} cannot be read ({reason})") from None
    if len(raw) > SECRET_FILE_MAX_BYTES:
        raise ValueError(f"{variable} is larger than {SECRET_FILE_MAX_BYTES // 1024} KiB")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{variable} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
    if not text:
        raise ValueError(f"{variable} is empty")
    return text


def secret_or_file(variable: str, value: str | None, path: str | None) -> str | None:
    """A secret given as `variable`'s value or in the file `<variable>_FILE` names (one trailing
    newline dropped); both set is an error that names them, never the value."""
    if not path:
        return value
    if value:
        raise ValueError(f"{variable} and {variable}_FILE are both set: use one of them")
    return read_secret_file(f"{variable}_FILE", Path(path))


def _plain(value: str | SecretStr) -> str:
    return value if isinstance(value, str) else value.get_secret_value()


def with_redis_password(url: str, password: str) -> str:
    """`url` with `password` added, unless it already carries one (then it wins)."""
    return _with_password(url, password, ("redis", "rediss"))


def with_directory_password(url: str, password: str) -> str:
    """A mongodb:// `url` with `password` given to its user, unless it carries one."""
    if not urlsplit(url).username:
        return url
    return _with_password(url, password, ("mongodb", "mongodb+srv"))


def _with_password(url: str, password: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        # redis-py reads a unix socket's password from the query string.
        if parts.password or "password" in parse_qs(parts.query):
            return url
        # Appended as text: urlunsplit would drop the empty host of unix:///path.
        separator = "&" if parts.query else ("" if url.endswith("?") else "?")
        return f"{url}{separator}password={quote(password, safe='')}"
    if parts.scheme not in schemes or parts.password:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


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
    # Added to REDIS_URL, RELAY_REDIS_URL and a redis:// DIRECTORY_URL that carry no password.
    redis_password: SecretStr | None = None
    redis_password_file: str | None = None
    directory_url: str | None = None
    # Given to the user of a mongodb:// DIRECTORY_URL that carries no password.
    directory_password: SecretStr | None = None
    directory_password_file: str | None = None
    mongo_db: str = "rtc"
    mongo_flags_collection: str = "featureflags"
    mongo_contacts_collection: str = "contacts"
    mongo_users_collection: str = "users"
    flag_cache_seconds: float = Field(default=5, ge=0)
    flag_stale_max_seconds: float = Field(default=300, ge=0)

    jwt_secret: SecretStr | None = None
    jwt_secret_file: str | None = None
    jwt_public_key: SecretStr | None = None
    # A PEM file instead of JWT_PUBLIC_KEY (multi-line values do not fit every .env format).
    jwt_public_key_file: str | None = None
    # Key rotation: a second verification key, accepted while the first is retired (tokens
    # signed with it stay valid until they expire). Same algorithm family as the main key.
    jwt_secret_previous: SecretStr | None = None
    jwt_secret_previous_file: str | None = None
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

    # The key of the wallet pseudonyms in logs (`walletHash`, an HMAC): without it, a hash of a
    # public address is reversed by hashing known addresses.
    log_pseudonym_key: SecretStr | None = None
    log_pseudonym_key_file: str | None = None

    # Secrets that may come from `<NAME>_FILE` instead (each has a `<name>_file` field).
    SECRET_FILE_FIELDS: ClassVar[tuple[str, ...]] = (
        "jwt_secret",
        "jwt_secret_previous",
        "jwt_public_key",
        "jwt_public_key_previous",
        "redis_password",
        "directory_password",
        "log_pseudonym_key",
    )

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
    def _secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in cls.SECRET_FILE_FIELDS:
            path = data.get(f"{name}_file")
            if path:
                data[name] = secret_or_file(name.upper(), data.get(name), str(path))
        password = data.get("redis_password")
        if password:
            data.setdefault("redis_url", cls.model_fields["redis_url"].default)
            for name in _REDIS_URL_FIELDS:
                if name in cls.model_fields and isinstance(data.get(name), str):
                    data[name] = with_redis_password(data[name], _plain(password))
        password = data.get("directory_password")
        if password and isinstance(data.get("directory_url"), str):
            data["directory_url"] = with_directory_password(data["directory_url"], _plain(password))
        return data

    @model_validator(mode="after")
    def _jwt_key(self) -> CommonSettings:
        symmetric = {a for a in self.jwt_algorithms if a.startswith("HS")}
        asymmetric = set(self.jwt_algorithms) - symmetric
        if symmetric and asymmetric:
            raise ValueError("JWT_ALGORITHMS: do not mix HMAC and public-key algorithms")
        if symmetric and self.jwt_secret is None:
            raise ValueError("JWT_SECRET is required for HMAC algorithms")
        if symmetric:
            strongest = max(symmetric, key=HMAC_MIN_KEY_BYTES.__getitem__)
            needed = HMAC_MIN_KEY_BYTES[strongest]
            for variable, secret in (
                ("JWT_SECRET", self.jwt_secret),
                ("JWT_SECRET_PREVIOUS", self.jwt_secret_previous),
            ):
                # A short HMAC key can be brute-forced offline from any one token.
                if secret is not None and len(secret.get_secret_value().encode()) < needed:
                    raise ValueError(
                        f"{variable} is too short for {strongest}: at least {needed} bytes"
                        " (python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
                    )
        key = self.log_pseudonym_key
        if key is not None and len(key.get_secret_value().encode()) < PSEUDONYM_KEY_MIN_BYTES:
            raise ValueError(
                f"LOG_PSEUDONYM_KEY is too short: at least {PSEUDONYM_KEY_MIN_BYTES} bytes"
            )
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

    def startup_warnings(self) -> list[tuple[str, tuple[str, ...]]]:
        """What this configuration leaves open, as (message, variables): logged at start."""
        warnings: list[tuple[str, tuple[str, ...]]] = []
        unset = tuple(
            name
            for name, value in (
                ("JWT_ISSUER", self.jwt_issuer),
                ("JWT_AUDIENCE", self.jwt_audience),
            )
            if not value
        )
        if unset:
            warnings.append(
                (
                    " and ".join(unset) + " unset: any token signed with the JWT key that has a"
                    " wallet claim is accepted, including ones the issuer made for other purposes",
                    unset,
                )
            )
        if self.log_pseudonym_key is None:
            warnings.append(
                (
                    "LOG_PSEUDONYM_KEY unset: walletHash in logs uses a random per-process key,"
                    " so it differs between processes and restarts",
                    ("LOG_PSEUDONYM_KEY",),
                )
            )
        return warnings


class RelayStoreSettings(CommonSettings):
    """For services that touch the relay queue (relay-service, signal-service's relay:ack)."""

    relay_redis_url: str | None = None
    # How long a message's idempotency key outlives its ack (a repeat is a duplicate meanwhile).
    relay_idempotency_seconds: int = Field(default=86400, ge=1)

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
