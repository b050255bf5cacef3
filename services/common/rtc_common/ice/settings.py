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

# Twilio's processing regions and the edge named in each one's API host (docs/deploying.md,
# "Twilio regions", cites Twilio's pages): api.twilio.com is US1, Twilio picks the edge.
TWILIO_REGION_EDGES = {"us1": None, "ie1": "dublin", "au1": "sydney"}
# The old edge-style ids, which are not processing regions: the edge each one named.
TWILIO_LEGACY_IDS = {
    "us1": "ashburn",
    "us2": "umatilla",
    "ie1": "dublin",
    "de1": "frankfurt",
    "au1": "sydney",
    "jp1": "tokyo",
    "sg1": "singapore",
    "br1": "sao-paulo",
}
_PUBLIC_EDGES = ("ashburn", "umatilla", "dublin", "frankfurt", "sao-paulo", "singapore", "sydney")
TWILIO_EDGES = frozenset(
    {*_PUBLIC_EDGES, "tokyo", "roaming", "london-ix", "san-jose-ix"}
    | {f"{edge}-ix" for edge in (*_PUBLIC_EDGES, "tokyo")}
)


def twilio_region_problem(region: str | None, edge: str | None) -> str | None:
    """Why TWILIO_REGION/TWILIO_EDGE name no working Tokens host, and what to set instead."""
    if edge and edge in TWILIO_LEGACY_IDS and edge not in TWILIO_EDGES:
        return (
            f"TWILIO_EDGE={edge} is an old edge id: the edge is now"
            f" {TWILIO_LEGACY_IDS[edge]}; set TWILIO_EDGE={TWILIO_LEGACY_IDS[edge]} or leave it"
            " unset (Twilio routes API calls to the nearest edge itself)"
        )
    if edge and edge not in TWILIO_EDGES:
        return f"TWILIO_EDGE={edge} is not a Twilio edge ({', '.join(sorted(TWILIO_EDGES))})"
    if region is None:
        return None
    if region not in TWILIO_REGION_EDGES:
        if region in TWILIO_LEGACY_IDS:
            return (
                f"TWILIO_REGION={region} is not a Twilio processing region (those are us1, ie1"
                f" and au1): {region} was the id of the {TWILIO_LEGACY_IDS[region]} edge, and"
                f" api.{region}.twilio.com stopped working on 2026-04-28. Unset TWILIO_REGION"
                " (api.twilio.com, Twilio picks the nearest edge), or set TWILIO_REGION=ie1 for"
                " data processed in the EU"
            )
        return f"TWILIO_REGION={region} is not a Twilio processing region: us1, ie1 or au1"
    wanted = TWILIO_REGION_EDGES[region]
    if wanted is not None and edge not in (None, wanted):
        return (
            f"TWILIO_REGION={region} is served at api.{wanted}.{region}.twilio.com: set"
            f" TWILIO_EDGE={wanted} or leave it unset"
        )
    return None


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
        problem = twilio_region_problem(self.twilio_region, self.twilio_edge)
        if problem and not self.twilio_api_base_url:
            raise ValueError(problem)
        return self

    def startup_warnings(self) -> list[tuple[str, tuple[str, ...]]]:
        warnings = super().startup_warnings()
        uses_twilio = "twilio" in (self.rtc_provider, self.rtc_provider_fallback)
        if uses_twilio and self.twilio_region in ("ie1", "au1") and not self.twilio_api_base_url:
            warnings.append(
                (
                    f"TWILIO_REGION={self.twilio_region}: Twilio does not list Network Traversal"
                    " (the Tokens API) among this region's products; if Tokens calls fail there,"
                    " unset TWILIO_REGION (US1) with a US1 API key",
                    ("TWILIO_REGION",),
                )
            )
        return warnings

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
        region = self.twilio_region or "us1"
        edge = self.twilio_edge or TWILIO_REGION_EDGES.get(region)
        if edge is None:
            return "https://api.twilio.com"  # US1; Twilio picks the edge
        # Twilio's own clients: an edge without a region is US1's.
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
