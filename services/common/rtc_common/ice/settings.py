"""ice-service's environment: the common base, the ICE provider variables, the service's own.

`IceProviderSettings` is the provider part (RTC_PROVIDER and its fallback, the Twilio account and
host rules, coturn's secret and URIs); `IceSettings` adds ice-service's HTTP knobs. Both live in
this library, not in the service, because `rtcctl doctor` must accept and refuse exactly what
ice-service does: it loads `IceSettings` from the deployment's env and reports its errors.
"""

from __future__ import annotations

import ipaddress
import re
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from ..settings import CommonSettings, CsvList

Provider = Literal["twilio", "coturn"]

# Twilio's regional hosts are api.<edge>.<region>.twilio.com; these are each region's default
# edge, used when TWILIO_REGION is set without TWILIO_EDGE (the edge-less form is retired).
TWILIO_DEFAULT_EDGES = {
    "us1": "ashburn",
    "ie1": "dublin",
    "de1": "frankfurt",
    "au1": "sydney",
    "jp1": "tokyo",
    "sg1": "singapore",
    "br1": "sao-paulo",
}


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class IceProviderSettings(CommonSettings):
    """The ICE providers: which one serves (and which falls back), and what each needs."""

    rtc_provider: Provider = "twilio"
    rtc_provider_fallback: Provider | None = None

    twilio_account_sid: str | None = None
    twilio_api_key: str | None = None
    twilio_api_secret: SecretStr | None = None
    twilio_api_secret_file: str | None = None
    twilio_region: str | None = Field(default=None, pattern=r"^[a-z]{2}[0-9]$")
    twilio_edge: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]*$")
    twilio_api_base_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    twilio_timeout_seconds: float = Field(default=3.0, gt=0, le=30)

    turn_secret: SecretStr | None = None
    turn_secret_file: str | None = None
    turn_uris: CsvList = ()
    turn_stun_fallback: CsvList = ()
    turn_cred_ttl: int = Field(default=600, ge=10, le=86400)

    SECRET_FILE_FIELDS: ClassVar[tuple[str, ...]] = (
        *CommonSettings.SECRET_FILE_FIELDS,
        "turn_secret",
        "twilio_api_secret",
    )

    @field_validator("turn_uris", "turn_stun_fallback", mode="before")
    @classmethod
    def _csv_uris(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("turn_uris")
    @classmethod
    def _turn_uris(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for uri in value:
            if not re.match(r"^turns?:[^\s,]+$", uri):
                raise ValueError("each entry must be a turn: or turns: URI")
        return value

    @field_validator("turn_stun_fallback")
    @classmethod
    def _stun_uris(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for uri in value:
            if not re.match(r"^stuns?:[^\s,]+$", uri):
                raise ValueError("each entry must be a stun: URI")
        return value

    @field_validator("twilio_api_base_url")
    @classmethod
    def _twilio_base_url(cls, value: str | None) -> str | None:
        if not value:
            return value
        # The API secret travels in every request's Basic header: plain http only to a loopback
        # stand-in (tests, a local proxy), never across a network.
        parts = urlsplit(value)
        if parts.scheme != "https" and not _is_loopback(parts.hostname):
            raise ValueError("must be an https:// URL (http:// only for a loopback host)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _providers(self) -> IceProviderSettings:
        if self.rtc_provider_fallback == self.rtc_provider:
            raise ValueError("RTC_PROVIDER_FALLBACK must differ from RTC_PROVIDER")
        if (
            self.twilio_region
            and not self.twilio_edge
            and self.twilio_region not in TWILIO_DEFAULT_EDGES
        ):
            raise ValueError(f"TWILIO_EDGE is required for TWILIO_REGION={self.twilio_region}")
        return self

    def missing_for(self, provider: Provider) -> list[str]:
        """Names of the variables `provider` needs and does not have."""
        needed: dict[str, object]
        if provider == "coturn":
            needed = {"TURN_SECRET": self.turn_secret, "TURN_URIS": self.turn_uris}
        else:
            needed = {
                "TWILIO_ACCOUNT_SID": self.twilio_account_sid,
                "TWILIO_API_KEY": self.twilio_api_key,
                "TWILIO_API_SECRET": self.twilio_api_secret,
            }
        return [name for name, value in needed.items() if not value]

    @property
    def twilio_base_url(self) -> str:
        if self.twilio_api_base_url:
            return self.twilio_api_base_url
        if not self.twilio_region and not self.twilio_edge:
            return "https://api.twilio.com"
        region = self.twilio_region or "us1"
        edge = self.twilio_edge or TWILIO_DEFAULT_EDGES[region]
        return f"https://api.{edge}.{region}.twilio.com"


class IceSettings(IceProviderSettings):
    """ice-service's whole environment: the providers plus its HTTP API's own settings."""

    service_name: str = "ice-service"
    port: int = Field(default=8101, ge=1, le=65535)

    ice_cache_max_age: int = Field(default=0, ge=0, le=86400)
    ice_rate_limit_per_min: int = Field(default=10, ge=1)
    ice_allow_anonymous: bool = False
    telemetry_rate_limit_per_min: int = Field(default=120, ge=1)

    # The admin routes (revocation) exist only with ADMIN_TOKEN set; it is never a user JWT.
    admin_token: SecretStr | None = None
    admin_token_file: str | None = None
    admin_rate_limit_per_min: int = Field(default=60, ge=1)
    # coturn's admin CLI, where revoked wallets' TURN sessions are ended ("host:port").
    turn_admin_address: str | None = Field(default=None, pattern=r"^[^\s:]+:[0-9]{1,5}$")
    turn_admin_password: SecretStr | None = None
    turn_admin_password_file: str | None = None

    SECRET_FILE_FIELDS: ClassVar[tuple[str, ...]] = (
        *IceProviderSettings.SECRET_FILE_FIELDS,
        "admin_token",
        "turn_admin_password",
    )

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value or None

    @model_validator(mode="after")
    def _turn_admin(self) -> IceSettings:
        if bool(self.turn_admin_address) != bool(self.turn_admin_password):
            raise ValueError("TURN_ADMIN_ADDRESS and TURN_ADMIN_PASSWORD are set together")
        return self
