"""Twilio: a real Tokens call with the configured account, key and host."""

from __future__ import annotations

import json

import aiohttp
from rtc_common.ice.settings import IceProviderSettings

from .config import providers_of
from .rendering import Result
from .target import Target, redact_url


async def check_twilio(
    target: Target, settings: IceProviderSettings | None, session: aiohttp.ClientSession
) -> list[Result]:
    if settings is None:
        return [Result("SKIP", "twilio", "configuration did not load (see config)")]
    if "twilio" not in providers_of(settings):
        return [Result("SKIP", "twilio", "not configured (RTC_PROVIDER/RTC_PROVIDER_FALLBACK)")]
    if settings.missing_for("twilio"):
        return [Result("SKIP", "twilio", "configuration incomplete (see config twilio)")]
    sid, key, secret = (
        settings.twilio_account_sid,
        settings.twilio_api_key,
        settings.twilio_api_secret,
    )
    assert sid and key and secret
    base = settings.twilio_base_url
    auth = aiohttp.encode_basic_auth(key, secret.get_secret_value())
    target.remember(auth, auth.removeprefix("Basic "), sid, key)
    url = f"{base}/2010-04-01/Accounts/{sid}/Tokens.json"
    base = redact_url(base)  # what is printed from here on
    ttl = min(settings.turn_cred_ttl, 600)
    region_fix = (
        "check TWILIO_ACCOUNT_SID, TWILIO_API_KEY and TWILIO_API_SECRET (an API key is valid only"
        " in the region it was created in: set TWILIO_REGION and TWILIO_EDGE for a regional key;"
        " for a US key leave TWILIO_REGION unset)"
    )
    try:
        async with session.post(
            url,
            data={"Ttl": str(ttl)},
            headers={"Authorization": auth},
            timeout=aiohttp.ClientTimeout(total=settings.twilio_timeout_seconds),
        ) as response:
            status = response.status
            body = await response.read()
    except TimeoutError:
        return [
            Result(
                "FAIL",
                "twilio",
                f"no answer from {base} within TWILIO_TIMEOUT_SECONDS"
                f"={settings.twilio_timeout_seconds:g}",
                "check outbound HTTPS from ice-service's host to Twilio (proxy, firewall, DNS)"
                " and TWILIO_REGION/TWILIO_EDGE/TWILIO_API_BASE_URL",
            )
        ]
    except aiohttp.ClientError as exc:
        return [
            Result(
                "FAIL",
                "twilio",
                f"{base} unreachable ({type(exc).__name__})",
                "check DNS and outbound HTTPS to Twilio; a regional host is"
                " api.<edge>.<region>.twilio.com (TWILIO_REGION, TWILIO_EDGE)",
            )
        ]
    code = _twilio_error_code(body)
    if status in (200, 201):
        try:
            servers = json.loads(body).get("ice_servers") or []
        except (ValueError, AttributeError):
            servers = []
        if not servers:
            return [
                Result(
                    "FAIL",
                    "twilio",
                    f"{base} answered HTTP {status} without ice_servers",
                    "TWILIO_API_BASE_URL must point at Twilio's REST API (or a faithful proxy)",
                )
            ]
        return [
            Result(
                "PASS",
                "twilio",
                f"Tokens call to {base}: HTTP {status}, {len(servers)} ICE servers",
            )
        ]
    if status == 401:
        return [
            Result(
                "FAIL",
                "twilio",
                f"{base} refused the credentials: HTTP 401{code} (credentials, region or edge)",
                region_fix,
            )
        ]
    if status in (403, 404):
        return [
            Result(
                "FAIL",
                "twilio",
                f"{base} answered HTTP {status}{code} to the Tokens call",
                "the account (TWILIO_ACCOUNT_SID) is not reachable with this key at this host: "
                + region_fix,
            )
        ]
    return [
        Result(
            "FAIL",
            "twilio",
            f"{base} answered HTTP {status}{code}",
            "Twilio is failing (see status.twilio.com); configure RTC_PROVIDER_FALLBACK=coturn"
            " to keep issuing credentials meanwhile",
        )
    ]


def _twilio_error_code(body: bytes) -> str:
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return ""
    return f" (Twilio error {code})" if isinstance(code, int) else ""
