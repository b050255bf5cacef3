"""The provider configuration, loaded as ice-service loads it, and TURN URI parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rtc_common.ice.settings import IceProviderSettings, IceSettings, Provider
from rtc_common.settings import CommonSettings, SettingsError, load_settings

from .rendering import Result
from .target import Target, redact_url


def providers_of(settings: IceProviderSettings) -> list[Provider]:
    """The providers in use: RTC_PROVIDER, then RTC_PROVIDER_FALLBACK when set."""
    chosen: list[Provider] = [settings.rtc_provider]
    if settings.rtc_provider_fallback is not None:
        chosen.append(settings.rtc_provider_fallback)
    return chosen


_TURN_URI = re.compile(
    r"^(?P<scheme>turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[^:?\[\]]+)(?::(?P<port>\d+))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?$"
)


@dataclass(frozen=True)
class TurnUri:
    uri: str
    scheme: str
    host: str
    port: int
    transport: str  # udp or tcp (turns: is always tcp)

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_turn_uri(uri: str) -> TurnUri | None:
    match = _TURN_URI.match(uri)
    if match is None:
        return None
    scheme = match["scheme"]
    port = int(match["port"]) if match["port"] else (5349 if scheme == "turns" else 3478)
    if not 1 <= port <= 65535:
        return None
    transport = "tcp" if scheme == "turns" else (match["transport"] or "udp")
    return TurnUri(uri, scheme, match["host"].strip("[]"), port, transport)


def check_config(
    target: Target,
) -> tuple[list[Result], IceSettings | None, CommonSettings | None]:
    env = target.env
    results: list[Result] = []
    fix_where = f"set it in ice-service's environment (here read from {target.env_source})"
    try:
        settings = load_settings(IceSettings, env)
    except SettingsError as exc:
        results.append(
            Result(
                "FAIL",
                "config",
                str(exc),
                "correct the variable(s) named above; ice-service refuses to start with them",
            )
        )
        try:
            common = load_settings(CommonSettings, env)
        except SettingsError:
            common = None
        return results, None, common

    default = "" if env.get("RTC_PROVIDER") else " (default)"
    for index, provider in enumerate(providers_of(settings)):
        role = (
            f"RTC_PROVIDER={provider}{default}"
            if index == 0
            else f"RTC_PROVIDER_FALLBACK={provider}"
        )
        missing = settings.missing_for(provider)
        if missing:
            names = ", ".join(missing)
            results.append(
                Result(
                    "FAIL",
                    f"config {provider}",
                    f"{role}: missing {names}",
                    f"{names}: {fix_where}; until then /rtc/ice answers 503 ice_unavailable"
                    + (" unless the fallback answers" if index == 0 else ""),
                )
            )
            continue
        if provider == "coturn":
            bad = [uri for uri in settings.turn_uris if parse_turn_uri(uri) is None]
            if bad:
                results.append(
                    Result(
                        "FAIL",
                        "config coturn",
                        f"{role}: TURN_URIS has {len(bad)} entry(ies) that are not"
                        " turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT]",
                        f"fix TURN_URIS: {', '.join(bad)}",
                    )
                )
                continue
            detail = (
                f"{role}: TURN_SECRET set, TURN_URIS has {len(settings.turn_uris)} URI(s),"
                f" TURN_CRED_TTL={settings.turn_cred_ttl}"
            )
        else:
            where = "TWILIO_API_BASE_URL" if settings.twilio_api_base_url else "region/edge"
            detail = (
                f"{role}: TWILIO_ACCOUNT_SID, TWILIO_API_KEY, TWILIO_API_SECRET set;"
                f" host {redact_url(settings.twilio_base_url)} (from {where})"
            )
        results.append(Result("PASS", f"config {provider}", detail))
    return results, settings, settings
