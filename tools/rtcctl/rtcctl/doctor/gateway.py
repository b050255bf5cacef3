"""The gateway: /healthz, the ICE and relay routes with a token, socket.io, issued credentials."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

import aiohttp
from rtc_common.settings import CommonSettings
from rtc_common.tokens import mint_for

from .config import parse_turn_uri
from .coturn import TURN_WALLET
from .http_get import http_get
from .rendering import Result
from .stores import ICE_FLAG
from .target import TOKEN_ENV, Target
from .turnclient import Refused, allocate, resolve


def _auth(settings: CommonSettings, token: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and cookies: Bearer when the deployment allows it, else the cookie + CSRF pair."""
    if settings.allow_bearer_auth:
        return {"Authorization": f"Bearer {token}"}, {}
    csrf = secrets.token_urlsafe(16)
    cookies = {settings.jwt_cookie_name: token, settings.csrf_cookie_name: csrf}
    return {settings.csrf_header_name: csrf}, cookies


def _error_code(body: bytes) -> tuple[str, str]:
    try:
        data = json.loads(body)
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    return str(data.get("error", "")), str(data.get("message", ""))


async def check_gateway(
    target: Target, settings: CommonSettings | None, session: aiohttp.ClientSession
) -> list[Result]:
    gw = target.gateway
    timeout = target.timeout
    results: list[Result] = []
    unreachable_fix = "start the gateway (nginx) or pass --gateway URL"
    try:
        status, _ = await http_get(session, f"{gw}/healthz", timeout)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return [
            Result(
                "FAIL",
                "gateway /healthz",
                f"{gw} unreachable ({type(exc).__name__})",
                unreachable_fix,
            ),
            Result("SKIP", "gateway routes", "the gateway is unreachable"),
        ]
    if status == 200:
        results.append(Result("PASS", "gateway /healthz", f"{gw}/healthz 200"))
    else:
        results.append(
            Result(
                "FAIL",
                "gateway /healthz",
                f"{gw}/healthz answered {status}",
                "--gateway must be the gateway's public origin (nginx with gateway/nginx.conf)",
            )
        )

    token = target.token
    wallet = f"{TURN_WALLET}-{secrets.token_hex(4)}"  # a fresh wallet: its own rate-limit bucket
    if token is None and settings is not None:
        token = mint_for(settings, wallet, expires_in=120)
    target.remember(token)
    if token is None or settings is None:
        why = (
            "configuration did not load (see config)"
            if settings is None
            else "no JWT_SECRET to mint a token: put a token of the main application in"
            f" {TOKEN_ENV}"
        )
        results.append(Result("SKIP", "gateway /api/v1/rtc/ice", why))
        results.append(Result("SKIP", "gateway /api/v1/relay/pull", why))
    else:
        headers, cookies = _auth(settings, token)
        ice_result, answer = await _ice_route(session, gw, timeout, headers, cookies)
        results.append(ice_result)
        if answer is not None:
            results.append(await _issued_credentials(answer, target))
        results.append(await _relay_route(session, gw, timeout, headers, cookies))
    results.append(await _socketio_route(session, gw, timeout))
    return results


_AUTH_FIX = (
    "the services must verify with the JWT_SECRET (or JWT_PUBLIC_KEY), JWT_ALGORITHMS,"
    " JWT_ISSUER and JWT_AUDIENCE this doctor read; Bearer needs ALLOW_BEARER_AUTH=true and a"
    " BEARER_ROUTE_WHITELIST matching /api/v1/..."
)


async def _ice_route(
    session: aiohttp.ClientSession,
    gw: str,
    limit: float,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
) -> tuple[Result, dict[str, Any] | None]:
    """The route's verdict, and its answer when it is a 200 ICE answer."""
    name = "gateway /api/v1/rtc/ice"
    try:
        status, body = await http_get(session, f"{gw}/api/v1/rtc/ice", limit, headers, cookies)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result("FAIL", name, f"no answer ({type(exc).__name__})", "check ice-service"), None
    code, message = _error_code(body)
    if status == 200:
        try:
            data = json.loads(body)
            detail = (
                f"200: provider {data['provider']}, {len(data['iceServers'])} ICE server(s),"
                f" ttl {data['ttl']} s"
            )
        except (ValueError, KeyError, TypeError):
            return Result("FAIL", name, "200 with a body that is not an ICE answer", None), None
        return Result("PASS", name, detail), data
    detail = f"{status} {code}: {message}" if code else f"{status}"
    if status == 403 and code == "feature_disabled":
        fix = (
            f"enable the flag: rtcctl flags enable {ICE_FLAG}"
            f" (MongoDB: {{key: '{ICE_FLAG}', enabled: true}})"
        )
    elif status in (401, 403):
        fix = _AUTH_FIX
    elif status == 503 and code == "ice_unavailable":
        fix = (
            "no ICE provider answered: fix the provider named above (config/twilio/coturn checks;"
            " ice-service reads its own env, make sure it matches) or set RTC_PROVIDER_FALLBACK"
        )
    elif status == 503 and code == "unavailable":
        fix = "ice-service or its directory is down: check ice-service's /readyz and its logs"
    elif status == 429:
        fix = "rate limited (ICE_RATE_LIMIT_PER_MIN): run the doctor again in a minute"
    elif status == 404:
        fix = "the gateway does not route /api/v1/rtc/ to ice-service: use gateway/nginx.conf"
    else:
        fix = "check ice-service's logs for this request"
    return Result("FAIL", name, detail, fix), None


async def _issued_credentials(answer: dict[str, Any], target: Target) -> Result:
    """Allocate on coturn with the credentials ice-service issued through the gateway.

    The doctor's own allocation proves the TURN_SECRET it read; this one proves the secret
    ice-service runs with (the two may differ when the doctor's env is not the deployment's).
    """
    name = "gateway ICE credentials"
    if answer.get("provider") != "coturn":
        return Result("SKIP", name, f"provider {answer.get('provider')}: not probed")
    for server in answer.get("iceServers") or []:
        username, credential = server.get("username"), server.get("credential")
        urls = server.get("urls")
        if not (isinstance(username, str) and isinstance(credential, str)):
            continue
        target.remember(credential)
        uris = [parse_turn_uri(u) for u in ([urls] if isinstance(urls, str) else urls or [])]
        udp = [u for u in uris if u is not None and u.transport == "udp"]
        if not udp:
            continue
        uri = udp[0]
        try:
            _, ip = await resolve(uri.host, uri.port, "udp")
            alloc = await allocate((ip, uri.port), username, credential, "udp", target.timeout)
        except Refused as refused:
            return Result(
                "FAIL",
                name,
                f"coturn at {uri.hostport} refused the credentials ice-service issued:"
                f" {refused.code} {refused.reason}",
                "ice-service's TURN_SECRET must equal coturn's static-auth-secret (and its"
                " clock be in sync with coturn's); restart ice-service after changing it",
            )
        except (TimeoutError, OSError):
            return Result("SKIP", name, f"coturn at {uri.hostport} did not answer (see coturn)")
        await alloc.close()
        return Result(
            "PASS", name, f"coturn at {uri.hostport} accepted the credentials ice-service issued"
        )
    return Result("SKIP", name, "the answer has no turn: UDP server with credentials")


async def _relay_route(
    session: aiohttp.ClientSession,
    gw: str,
    limit: float,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
) -> Result:
    name = "gateway /api/v1/relay/pull"
    try:
        status, body = await http_get(
            session, f"{gw}/api/v1/relay/pull?limit=1", limit, headers, cookies
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result("FAIL", name, f"no answer ({type(exc).__name__})", "check relay-service")
    if status == 200:
        return Result("PASS", name, "200")
    code, message = _error_code(body)
    detail = f"{status} {code}: {message}" if code else f"{status}"
    if status in (401, 403):
        fix = _AUTH_FIX
    elif status == 503:
        fix = "relay-service or its Redis (RELAY_REDIS_URL) is down: check its /readyz and logs"
    else:
        fix = "the gateway must route /api/v1/relay/ to relay-service (gateway/nginx.conf)"
    return Result("FAIL", name, detail, fix)


async def _socketio_route(session: aiohttp.ClientSession, gw: str, limit: float) -> Result:
    name = "gateway /socket.io/"
    url = f"{gw}/socket.io/?EIO=4&transport=polling"
    try:
        status, body = await http_get(session, url, limit)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result("FAIL", name, f"no answer ({type(exc).__name__})", "check signal-service")
    if status == 200 and body.startswith(b"0{"):
        try:
            sid = json.loads(body[1:])["sid"]
        except (ValueError, KeyError, TypeError):
            sid = None
        if sid:
            # Close the session politely (the same replica answers: the gateway has affinity).
            try:
                async with session.post(
                    f"{url}&sid={sid}", data=b"1", timeout=aiohttp.ClientTimeout(total=limit)
                ):
                    pass
            except (aiohttp.ClientError, TimeoutError):
                pass
        return Result("PASS", name, "200: Engine.IO session opened (polling)")
    return Result(
        "FAIL",
        name,
        f"{status}: not an Engine.IO open packet",
        "the gateway must route /socket.io/ to signal-service with the Upgrade headers and"
        " session affinity (gateway/nginx.conf)",
    )
