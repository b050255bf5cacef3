"""`rtcctl doctor`: walks the troubleshooting list of the integration guide against a deployment.

Every check is real: the provider configuration as ice-service would load it, a Twilio Tokens
call, TURN allocations on coturn with credentials minted from TURN_SECRET (a datagram relayed out
and back, clock skew estimated from credentials that expire around now; during a rotation, whether
coturn still accepts TURN_SECRET_PREVIOUS), the gateway's routes,
Redis, the directory and its `rtc.ice` flag, and each signal instance's pub/sub listener.

The target is the local stack by default (the run folder's `env` and `stack.json`); `--env-file`,
`--gateway` and `--signal` point it elsewhere, and the process environment overrides the env file.
One line per check; a failing check prints its fix. Secrets are never printed: the env values are
only used, and any text about to be printed is scrubbed of every secret known to this run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aioice import stun
from aioice.turn import create_turn_endpoint
from ice_service.providers import coturn_credentials
from ice_service.settings import IceSettings, Provider
from rtc_common.clients import make_redis
from rtc_common.directory import open_directory
from rtc_common.settings import CommonSettings, SettingsError, load_settings, with_redis_password
from rtc_common.tokens import mint_for

from . import local

Status = Literal["PASS", "FAIL", "WARN", "SKIP"]
Addr = tuple[Any, ...]

ICE_FLAG = "rtc.ice"
TURN_WALLET = "rtcctl-doctor"
# Expiry offsets (seconds from now) of the clock-skew probes. coturn accepts a credential whose
# expiry is not in its own past, so the boundary between refused and accepted brackets the skew.
SKEW_PROBES = (-30, -10, -3, 3, 10, 30)
SKEW_OK = 3  # |skew| proven within this: pass
SKEW_FAIL = 30  # |skew| proven beyond this: fail (in between: a warning)
FAR_FUTURE = 86400  # a credential that only a wrong secret (not a fast clock) gets refused
TOKEN_ENV = "RTC_DOCTOR_TOKEN"  # noqa: S105 (a variable name)


@dataclass
class Result:
    status: Status
    name: str
    detail: str
    fix: str | None = None


@dataclass
class Target:
    env: dict[str, str]
    env_source: str
    gateway: str
    signal_urls: list[str]
    signal_source: str
    timeout: float
    token: str | None = None
    secrets: set[str] = field(default_factory=set)

    def remember(self, *values: str | None) -> None:
        """Values never to be printed (scrubbed from every line as a last safeguard)."""
        self.secrets.update(v for v in values if v and len(v) >= 4)


# ---------------------------------------------------------------------------------------------
# Target: env, gateway, signal instances


def _stack_ports(run_dir: Path) -> local.StackPorts | None:
    path = run_dir / "stack.json"
    if not path.exists():
        return None
    try:
        return local.StackPorts(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def resolve_target(args: argparse.Namespace) -> Target:
    run_dir: Path = args.run_dir
    env_file: Path = args.env_file or run_dir / "env"
    env: dict[str, str] = {}
    if env_file.exists():
        env.update(local.read_env_file(env_file))
        env_source = f"{env_file} + process environment"
    else:
        env_source = f"process environment ({env_file} not found)"
    env.update(os.environ)

    ports = _stack_ports(run_dir)
    stack_gateway = f"http://127.0.0.1:{ports.gateway}" if ports else None
    gateway = (
        args.gateway or env.get("RTC_GATEWAY_URL") or stack_gateway or "http://127.0.0.1:8080"
    ).rstrip("/")

    if args.signal:
        signal_urls = [url.rstrip("/") for url in args.signal]
        signal_source = "--signal"
    elif ports is not None and (stack_gateway == gateway):
        signal_urls = [f"http://127.0.0.1:{port}" for port in ports.signal]
        signal_source = str(run_dir / "stack.json")
    else:
        signal_urls, signal_source = [], ""
    target = Target(
        env=env,
        env_source=env_source,
        gateway=gateway,
        signal_urls=signal_urls,
        signal_source=signal_source,
        timeout=args.timeout,
        token=env.get(TOKEN_ENV) or None,
    )
    for name in (
        "JWT_SECRET",
        "JWT_SECRET_PREVIOUS",
        "JWT_PUBLIC_KEY",
        "TURN_SECRET",
        "TURN_SECRET_PREVIOUS",
        "TWILIO_API_SECRET",
        "REDIS_PASSWORD",
        "LOG_PSEUDONYM_KEY",
        TOKEN_ENV,
    ):
        target.remember(env.get(name))
        # The same secrets given as files (`*_FILE`) are scrubbed from the output too.
        path = env.get(f"{name}_FILE")
        if path:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                target.remember(Path(path).read_text().removesuffix("\n") or None)
    for name in ("REDIS_URL", "RELAY_REDIS_URL", "DIRECTORY_URL"):
        target.remember(_userinfo_password(env.get(name)))
    return target


_USERINFO = re.compile(r"(//)[^/@]*@")


def redact_url(url: str) -> str:
    """A URL without its user-info (Redis and MongoDB URLs may carry a password)."""
    return _USERINFO.sub(r"\1", url)


def _userinfo_password(url: str | None) -> str | None:
    if not url:
        return None
    match = re.search(r"//([^/@]*)@", url)
    if not match:
        return None
    return match.group(1).partition(":")[2] or None


# ---------------------------------------------------------------------------------------------
# Provider configuration


def _providers(settings: IceSettings) -> list[Provider]:
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
    for index, provider in enumerate(_providers(settings)):
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


# ---------------------------------------------------------------------------------------------
# Twilio


async def check_twilio(
    target: Target, settings: IceSettings | None, session: aiohttp.ClientSession
) -> list[Result]:
    if settings is None:
        return [Result("SKIP", "twilio", "configuration did not load (see config)")]
    if "twilio" not in _providers(settings):
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


# ---------------------------------------------------------------------------------------------
# coturn


class _Inbox(asyncio.DatagramProtocol):
    """Collects datagrams and errors; `changed` is set whenever something arrives."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Addr]] = []
        self.errors: list[Exception] = []
        self.changed = asyncio.Event()
        self.closed = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.received.append((data, addr))
        self.changed.set()

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class Allocation:
    transport: Any  # aioice.turn.TurnTransport
    inbox: _Inbox
    relayed: Addr
    mapped: Addr | None

    async def close(self, limit: float = 1.0) -> None:
        """Delete the allocation (a Refresh with lifetime 0) and wait for the socket to close."""
        self.transport.close()
        try:
            async with asyncio.timeout(limit):
                await self.inbox.closed
        except TimeoutError:
            pass  # coturn frees it when its lifetime ends


class Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


async def allocate(
    server: tuple[str, int], username: str, password: str, transport: str, limit: float
) -> Allocation:
    """A real TURN allocation. Raises Refused (an error response), TimeoutError or OSError."""
    try:
        async with asyncio.timeout(limit):
            turn, inbox = await create_turn_endpoint(
                _Inbox,
                server_addr=server,
                username=username,
                password=password,
                lifetime=120,
                transport=transport,
            )
    except stun.TransactionFailed as exc:
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, "error"))
        raise Refused(int(code), str(reason)) from None
    except stun.TransactionTimeout:
        raise TimeoutError from None
    mapped = turn.get_extra_info("related_address")
    return Allocation(turn, inbox, turn.get_extra_info("sockname"), mapped)


async def _wait_changed(events: Iterable[asyncio.Event], limit: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def relay_round_trip(
    alloc: Allocation, family: socket.AddressFamily, limit: float
) -> tuple[bool, bool, float, list[Exception], Addr]:
    """A datagram from this host through the relay to a local UDP peer, and one back.

    Out: TURN transport -> relayed address -> the peer (needs a permission: the ChannelBind the
    first send makes installs one). Back: the peer -> the relayed address -> coturn -> here (what
    a firewalled relay port range stops). Returns (out_ok, back_ok, seconds, errors, peer).
    """
    loop = asyncio.get_running_loop()
    bind_host = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104 (a probe's peer)
    peer_transport, peer = await loop.create_datagram_endpoint(_Inbox, local_addr=(bind_host, 0))
    try:
        peer_port = peer_transport.get_extra_info("sockname")[1]
        # The peer as coturn can reach it: this host's address as coturn saw it (XOR-MAPPED).
        peer_ip = alloc.mapped[0] if alloc.mapped else alloc.relayed[0]
        destinations: list[Addr] = [(peer_ip, peer_port)]
        nonce = secrets.token_hex(8)
        out_msg, back_msg = f"doctor-out {nonce}".encode(), f"doctor-back {nonce}".encode()
        out_ok = back_ok = False
        started = time.monotonic()
        deadline = started + limit
        while not (out_ok and back_ok) and time.monotonic() < deadline and not alloc.inbox.errors:
            alloc.inbox.changed.clear()
            peer.changed.clear()
            if not out_ok:
                for destination in destinations:
                    alloc.transport.sendto(out_msg, destination)
            if not back_ok:
                peer_transport.sendto(back_msg, alloc.relayed[:2])
            # Resend every 0.25 s (UDP); the wait ends as soon as anything arrives.
            await _wait_changed((alloc.inbox.changed, peer.changed), 0.25)
            out_ok = out_ok or any(data == out_msg for data, _ in peer.received)
            for data, addr in alloc.inbox.received:
                if data == back_msg:
                    back_ok = True
                    if addr[:2] not in destinations:  # behind NAT: reply where it came from
                        destinations.append(addr[:2])
        return (
            out_ok,
            back_ok,
            time.monotonic() - started,
            list(alloc.inbox.errors),
            destinations[0],
        )
    finally:
        peer_transport.close()


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _is_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_private or ip.is_loopback or ip.is_link_local


async def _resolve(host: str, port: int, transport: str) -> tuple[socket.AddressFamily, str]:
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    infos = await loop.getaddrinfo(host, port, type=kind)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


def skew_verdict(accepted: dict[int, bool]) -> tuple[Status, str, str | None]:
    """From which expiry offsets coturn accepted, the bracket of (coturn clock - this clock)."""
    refused = [o for o, ok in accepted.items() if not ok]
    taken = [o for o, ok in accepted.items() if ok]
    fix = (
        "synchronise the clocks of this host, ice-service's hosts and the TURN server with NTP"
        " (chrony or systemd-timesyncd); coturn checks a credential's expiry against its own"
        " clock with no tolerance"
    )
    if refused and taken and max(refused) > min(taken):
        return (
            "WARN",
            "inconsistent answers (accepted expiry now"
            f"{min(taken):+d} s but refused now{max(refused):+d} s)",
            "run the doctor again; if it persists several TURN servers may share this address",
        )
    low = max(refused) if refused else None  # skew > low
    high = min(taken) if taken else None  # skew <= high
    if low is None:
        assert high is not None
        return (
            "FAIL",
            f"coturn accepted a credential that expired {-high} s ago: its clock is more than"
            f" {-high} s behind this host",
            fix,
        )
    if high is None:
        return (
            "FAIL",
            f"coturn refused a credential valid for {low} more seconds: its clock is more than"
            f" {low} s ahead of this host",
            fix,
        )
    bracket = f"(coturn accepted expiry now{high:+d} s, refused now{low:+d} s)"
    if low >= -SKEW_OK and high <= SKEW_OK:
        return "PASS", f"clock skew within ±{SKEW_OK} s {bracket}", None
    if high <= 0:
        size = f"{-high} to {-low} s behind"
        worst = -low
    else:
        size = f"{low} to {high} s ahead of"
        worst = high
    status: Status = "FAIL" if worst > SKEW_FAIL else "WARN"
    return status, f"coturn's clock is {size} this host {bracket}", fix


async def check_coturn_server(
    uris: list[TurnUri], secret: str, ttl: int, target: Target, previous: str | None = None
) -> list[Result]:
    first = uris[0]
    label = f"coturn {first.hostport}"
    timeout = target.timeout
    transports = sorted({u.transport for u in uris}, key=lambda t: t != "udp")
    try:
        family, server_ip = await _resolve(first.host, first.port, transports[0])
    except OSError as exc:
        return [
            Result(
                "FAIL",
                label,
                f"cannot resolve {first.host} ({type(exc).__name__})",
                "fix the host in TURN_URIS or its DNS record",
            )
        ]
    server = (server_ip, first.port)

    def mint(offset: int) -> tuple[str, str]:
        username, password = coturn_credentials(secret, TURN_WALLET, int(time.time()) + offset)
        target.remember(password)
        return username, password

    results: list[Result] = []
    if "udp" not in transports:
        results.append(Result("SKIP", f"{label}/udp", "no UDP URI for this server in TURN_URIS"))
    udp_alloc: Allocation | None = None
    allocated: list[str] = []  # transports that allocated with TURN_SECRET
    for transport in transports:
        name = f"{label}/{transport}"
        try:
            alloc = await allocate(server, *mint(ttl), transport, timeout)
        except Refused as refused:
            results.append(await _explain_refusal(name, refused, server, secret, transport, target))
            continue
        except (TimeoutError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                why = "no answer from"
            elif isinstance(exc, ConnectionRefusedError):
                why = "connection refused by"
            else:
                why = f"{type(exc).__name__} with"
            results.append(
                Result(
                    "FAIL",
                    name,
                    f"allocation failed: {why} {server_ip}:{first.port}"
                    f" ({transport.upper()}, {timeout:g} s)",
                    "start coturn (turnserver) on that host, check the host:port in TURN_URIS,"
                    f" and open {first.port}/{transport} to clients in the firewall",
                )
            )
            continue
        results.append(
            Result(
                "PASS",
                name,
                f"allocated relay {_fmt(alloc.relayed)} with credentials minted from TURN_SECRET",
            )
        )
        allocated.append(transport)
        if transport == "udp":
            udp_alloc = alloc
        else:
            await alloc.close()

    if udp_alloc is None:
        results.append(Result("SKIP", f"{label} relay", "needs a UDP allocation"))
        results.append(Result("SKIP", f"{label} clock", "needs a UDP allocation"))
    else:
        try:
            results.append(await _relay_result(label, udp_alloc, family, timeout))
            results.append(_relay_address_result(label, udp_alloc, server_ip, first.host))
            results.append(await _skew_result(label, server, mint, timeout))
        finally:
            await udp_alloc.close()
    if previous is not None:
        results.append(
            await _previous_secret_result(label, server, previous, secret, ttl, allocated, target)
        )
    return results


async def _previous_secret_result(
    label: str,
    server: tuple[str, int],
    previous: str,
    current: str,
    ttl: int,
    allocated: list[str],
    target: Target,
) -> Result:
    """During a TURN secret rotation: does coturn still accept TURN_SECRET_PREVIOUS?"""
    name = f"{label} previous secret"
    if hmac.compare_digest(previous.encode(), current.encode()):
        # Probing it would only repeat the TURN_SECRET allocation and report a rotation.
        return Result(
            "WARN",
            name,
            "TURN_SECRET_PREVIOUS equals TURN_SECRET (no rotation to check)",
            "set TURN_SECRET_PREVIOUS to the retired secret during a rotation, unset it otherwise",
        )
    if not allocated:
        return Result("SKIP", name, "needs an allocation with TURN_SECRET")
    # The transport TURN_SECRET allocated on, with its expiry: only the secret differs.
    transport = allocated[0]
    username, password = coturn_credentials(previous, TURN_WALLET, int(time.time()) + ttl)
    target.remember(password)
    try:
        alloc = await allocate(server, username, password, transport, target.timeout)
    except Refused as refused:
        if refused.code == 401:
            return Result(
                "WARN",
                name,
                "TURN_SECRET_PREVIOUS is set but coturn refuses it (already retired)",
                "unset TURN_SECRET_PREVIOUS",
            )
        return _refused_result(name, refused)
    except (TimeoutError, OSError):
        return Result(
            "SKIP",
            name,
            f"no answer from coturn ({transport.upper()}, {target.timeout:g} s): not probed",
        )
    await alloc.close()
    return Result(
        "WARN",
        name,
        "rotation in progress: coturn still accepts credentials minted from TURN_SECRET_PREVIOUS",
        "once every credential minted with it has expired (TURN_CRED_TTL s after ice-service"
        " switched), remove its static-auth-secret line from turnserver.conf and unset"
        " TURN_SECRET_PREVIOUS",
    )


def _refused_result(name: str, refused: Refused) -> Result:
    """A refusal other than 401: coturn's own limits, named in its log."""
    return Result(
        "FAIL",
        name,
        f"allocation refused: {refused.code} {refused.reason}",
        "see coturn's log for the reason (quotas: user-quota/total-quota; 437/508 mean"
        " allocation limits)",
    )


async def _explain_refusal(
    name: str,
    refused: Refused,
    server: tuple[str, int],
    secret: str,
    transport: str,
    target: Target,
) -> Result:
    if refused.code != 401:
        return _refused_result(name, refused)
    # 401 with a fresh credential: the secret, or a TURN clock far ahead. A far-future expiry
    # tells them apart.
    username, password = coturn_credentials(secret, TURN_WALLET, int(time.time()) + FAR_FUTURE)
    target.remember(password)
    try:
        far = await allocate(server, username, password, transport, target.timeout)
    except (Refused, TimeoutError, OSError):
        return Result(
            "FAIL",
            name,
            "allocation refused: 401 Unauthorized: coturn does not accept credentials minted"
            " from this TURN_SECRET",
            "TURN_SECRET must equal coturn's static-auth-secret (with use-auth-secret in"
            " turnserver.conf); restart coturn and ice-service after changing either",
        )
    await far.close()
    return Result(
        "FAIL",
        name,
        "allocation refused: 401 for a credential valid TURN_CRED_TTL seconds, accepted with a"
        f" {FAR_FUTURE} s expiry: coturn's clock is ahead of this host by more than"
        " TURN_CRED_TTL",
        "synchronise the TURN server's clock (and this host's) with NTP",
    )


async def _relay_result(
    label: str, alloc: Allocation, family: socket.AddressFamily, limit: float
) -> Result:
    out_ok, back_ok, seconds, errors, peer = await relay_round_trip(alloc, family, limit)
    relayed = _fmt(alloc.relayed)
    if errors:
        error = errors[0]
        code = ""
        if isinstance(error, stun.TransactionFailed):
            code = " ({} {})".format(*error.response.attributes.get("ERROR-CODE", (0, "")))
        return Result(
            "FAIL",
            f"{label} relay",
            f"coturn refused the permission for peer {_fmt(peer)}{code}",
            "coturn blocks this peer address (denied-peer-ip; loopback peers need"
            " allow-loopback-peers and an allowed-peer-ip): run the doctor from a host coturn"
            " may relay to",
        )
    if out_ok and back_ok:
        return Result(
            "PASS",
            f"{label} relay",
            f"permission + datagram out via {relayed} to {_fmt(peer)} and back"
            f" in {seconds * 1000:.0f} ms",
        )
    if not back_ok:
        return Result(
            "FAIL",
            f"{label} relay",
            f"a datagram sent to the relayed address {relayed} never came back through coturn"
            f" within {limit:g} s"
            + ("" if out_ok else "; nor did one sent out through the relay reach this host"),
            "open coturn's relay port range (min-port..max-port, UDP) to the internet on the"
            " TURN host's firewall/security group; behind NAT set external-ip in turnserver.conf",
        )
    return Result(
        "FAIL",
        f"{label} relay",
        f"a datagram sent out through {relayed} did not reach this host at {_fmt(peer)}"
        " (the way back works)",
        "allow UDP from the TURN host to this host, or run the doctor from a host without"
        " inbound filtering",
    )


def _relay_address_result(label: str, alloc: Allocation, server_ip: str, host: str) -> Result:
    relayed_ip = _ip(str(alloc.relayed[0]))
    turn_ip = _ip(server_ip)
    name = f"{label} relay address"
    if relayed_ip is None or turn_ip is None:
        return Result("SKIP", name, f"relayed address {_fmt(alloc.relayed)} not an IP")
    if _is_private(relayed_ip) and not _is_private(turn_ip):
        return Result(
            "WARN",
            name,
            f"relayed address {relayed_ip} is private but the TURN server ({host} ="
            f" {turn_ip}) is public: remote peers get an unreachable relay candidate",
            f"set external-ip={turn_ip}/{relayed_ip} in turnserver.conf (public/private)",
        )
    if _is_private(relayed_ip):
        return Result(
            "PASS",
            name,
            f"relayed address {relayed_ip} (the TURN host is {turn_ip}, private/loopback too:"
            " expected on a local stack)",
        )
    return Result("PASS", name, f"relayed address {relayed_ip} is public")


async def _skew_result(
    label: str,
    server: tuple[str, int],
    mint: Callable[[int], tuple[str, str]],
    limit: float,
) -> Result:
    async def probe(offset: int) -> bool | None:
        try:
            alloc = await allocate(server, *mint(offset), "udp", limit)
        except Refused as refused:
            return False if refused.code == 401 else None
        except (TimeoutError, OSError):
            return None
        await alloc.close()
        return True

    answers = await asyncio.gather(*(probe(offset) for offset in SKEW_PROBES))
    accepted = {o: a for o, a in zip(SKEW_PROBES, answers, strict=True) if a is not None}
    name = f"{label} clock"
    if len(accepted) < len(SKEW_PROBES):
        return Result("WARN", name, "some clock probes got no answer; skew not estimated")
    status, detail, fix = skew_verdict(accepted)
    return Result(status, name, detail, fix)


def _fmt(addr: Addr) -> str:
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


async def check_coturn(target: Target, settings: IceSettings | None) -> list[Result]:
    if settings is None:
        return [Result("SKIP", "coturn", "configuration did not load (see config)")]
    if "coturn" not in _providers(settings):
        return [Result("SKIP", "coturn", "not configured (RTC_PROVIDER/RTC_PROVIDER_FALLBACK)")]
    if settings.missing_for("coturn") or settings.turn_secret is None:
        return [Result("SKIP", "coturn", "configuration incomplete (see config coturn)")]
    secret = settings.turn_secret.get_secret_value()
    # Not an ice-service setting (it signs only with TURN_SECRET): coturn's second secret.
    previous = target.env.get("TURN_SECRET_PREVIOUS") or None
    servers: dict[tuple[str, int], list[TurnUri]] = {}
    results: list[Result] = []
    for raw in settings.turn_uris:
        uri = parse_turn_uri(raw)
        if uri is None:
            continue
        if uri.scheme == "turns":
            results.append(Result("SKIP", f"coturn {uri.hostport}/tls", "turns: (TLS) not probed"))
            continue
        servers.setdefault((uri.host, uri.port), []).append(uri)
    groups = await asyncio.gather(
        *(
            check_coturn_server(uris, secret, settings.turn_cred_ttl, target, previous)
            for uris in servers.values()
        )
    )
    for group in groups:
        results.extend(group)
    if not servers and not results:
        results.append(Result("FAIL", "coturn", "TURN_URIS names no TURN server"))
    return results


# ---------------------------------------------------------------------------------------------
# Gateway


def mint_token(settings: CommonSettings, wallet: str, ttl: int = 120) -> str | None:
    return mint_for(settings, wallet, expires_in=ttl)


def _auth(settings: CommonSettings, token: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and cookies: Bearer when the deployment allows it, else the cookie + CSRF pair."""
    if settings.allow_bearer_auth:
        return {"Authorization": f"Bearer {token}"}, {}
    csrf = secrets.token_urlsafe(16)
    cookies = {settings.jwt_cookie_name: token, settings.csrf_cookie_name: csrf}
    return {settings.csrf_header_name: csrf}, cookies


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    limit: float,
    headers: Mapping[str, str] | None = None,
    cookies: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    cookie_header = "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())
    all_headers = dict(headers or {})
    if cookie_header:
        all_headers["Cookie"] = cookie_header
    async with session.get(
        url, headers=all_headers, timeout=aiohttp.ClientTimeout(total=limit)
    ) as response:
        return response.status, await response.read()


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
        status, _ = await _get(session, f"{gw}/healthz", timeout)
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
        token = mint_token(settings, wallet)
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
        status, body = await _get(session, f"{gw}/api/v1/rtc/ice", limit, headers, cookies)
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
            _, ip = await _resolve(uri.host, uri.port, "udp")
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
        status, body = await _get(
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
        status, body = await _get(session, url, limit)
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


# ---------------------------------------------------------------------------------------------
# Redis, directory, flag


async def _ping_redis(url: str, limit: float) -> str | None:
    client = make_redis(url)
    try:
        async with asyncio.timeout(limit):
            await client.ping()
    except Exception as exc:  # any failure is the answer
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        await client.aclose()
    return None


async def check_stores(target: Target, settings: CommonSettings | None) -> list[Result]:
    if settings is None:
        return [Result("SKIP", "redis/directory", "configuration did not load (see config)")]
    timeout = target.timeout
    results: list[Result] = []
    urls = [("REDIS_URL", settings.redis_url)]
    relay_url = target.env.get("RELAY_REDIS_URL") or None
    if relay_url and settings.redis_password is not None:
        # As the services do: REDIS_PASSWORD goes into a URL that carries none.
        relay_url = with_redis_password(relay_url, settings.redis_password.get_secret_value())
    if relay_url and relay_url != settings.redis_url:
        urls.append(("RELAY_REDIS_URL", relay_url))
    for var, url in urls:
        error = await _ping_redis(url, timeout)
        shown = redact_url(url) + ("" if target.env.get(var) else " (default)")
        if error is None:
            results.append(Result("PASS", f"redis {var}", f"{shown}: PONG"))
        else:
            results.append(
                Result(
                    "FAIL",
                    f"redis {var}",
                    f"{shown}: {redact_url(error)}",
                    f"start Redis or fix {var} (host, port, password, TLS as rediss://)",
                )
            )
    if relay_url is None or relay_url == settings.redis_url:
        why = "not set" if relay_url is None else "same as REDIS_URL"
        results.append(Result("PASS", "redis RELAY_REDIS_URL", f"{why}: the relay uses REDIS_URL"))

    directory_url = settings.effective_directory_url
    shown = redact_url(directory_url) + ("" if settings.directory_url else " (= REDIS_URL)")
    directory = open_directory(settings)
    try:
        try:
            async with asyncio.timeout(timeout):
                await directory.ping()
        except Exception as exc:  # any backend failure
            results.append(
                Result(
                    "FAIL",
                    "directory DIRECTORY_URL",
                    f"{shown} ({directory.backend}): {type(exc).__name__}",
                    "start the directory (MongoDB) or fix DIRECTORY_URL / MONGO_DB",
                )
            )
            results.append(Result("SKIP", f"flag {ICE_FLAG}", "the directory is unreachable"))
            return results
        results.append(
            Result("PASS", "directory DIRECTORY_URL", f"{shown}: {directory.backend} answers")
        )
        try:
            async with asyncio.timeout(timeout):
                enabled = await directory.get_flag(ICE_FLAG)
        except Exception as exc:  # any backend failure
            results.append(
                Result("FAIL", f"flag {ICE_FLAG}", f"read failed: {type(exc).__name__}", None)
            )
            return results
    finally:
        await directory.close()
    fix = f"rtcctl flags enable {ICE_FLAG}"
    if enabled is True:
        results.append(Result("PASS", f"flag {ICE_FLAG}", "enabled"))
    elif enabled is False:
        results.append(
            Result(
                "FAIL", f"flag {ICE_FLAG}", "disabled: /rtc/ice answers 403 feature_disabled", fix
            )
        )
    else:
        results.append(
            Result(
                "FAIL", f"flag {ICE_FLAG}", "not set: /rtc/ice answers 403 feature_disabled", fix
            )
        )
    return results


# ---------------------------------------------------------------------------------------------
# signal instances


async def check_signal(target: Target, session: aiohttp.ClientSession) -> list[Result]:
    if not target.signal_urls:
        return [
            Result(
                "SKIP",
                "signal pub/sub",
                "no signal instance known: pass --signal URL for each instance (its own port,"
                " /readyz is not routed by the gateway)",
            )
        ]
    checks = await asyncio.gather(
        *(_signal_instance(u, target, session) for u in target.signal_urls)
    )
    return list(checks)


async def _signal_instance(url: str, target: Target, session: aiohttp.ClientSession) -> Result:
    readyz = url if url.endswith("/readyz") else f"{url}/readyz"
    name = f"signal {url.removeprefix('http://').removesuffix('/readyz')} pub/sub"
    try:
        status, body = await _get(session, readyz, target.timeout)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(
            "FAIL",
            name,
            f"{readyz} unreachable ({type(exc).__name__})",
            "start that signal-service instance (or correct --signal / stack.json)",
        )
    try:
        checks = json.loads(body).get("checks") or {}
    except (ValueError, AttributeError):
        checks = {}
    pubsub = checks.get("pubsub")
    others = ", ".join(f"{k}: {v}" for k, v in checks.items() if k != "pubsub" and v != "ok")
    if pubsub == "ok":
        detail = f"/readyz {status}: pubsub ok" + (f"; also failing: {others}" if others else "")
        return Result("PASS" if status == 200 else "WARN", name, detail)
    if pubsub is None:
        return Result(
            "FAIL",
            name,
            f"/readyz {status} reports no pubsub check",
            "is this a signal-service instance? pass its own URL with --signal",
        )
    return Result(
        "FAIL",
        name,
        f"/readyz {status}: pubsub {pubsub}" + (f"; {others}" if others else ""),
        "its Redis pub/sub listener does not receive its own messages: check REDIS_URL from"
        " that instance; it resubscribes by itself, restart it if it stays failed",
    )


# ---------------------------------------------------------------------------------------------
# Running and printing


async def run_checks(target: Target) -> list[Result]:
    config, ice_settings, common = check_config(target)
    async with aiohttp.ClientSession() as session:
        groups: list[Awaitable[list[Result]]] = [
            check_twilio(target, ice_settings, session),
            check_coturn(target, ice_settings),
            check_gateway(target, common, session),
            check_stores(target, common),
            check_signal(target, session),
        ]
        results = await asyncio.gather(*groups)
    return config + [r for group in results for r in group]


def render(results: list[Result], target: Target) -> str:
    width = max((len(r.name) for r in results), default=10)
    lines = []
    for result in results:
        lines.append(f"{result.status}  {result.name.ljust(width)}  {result.detail}")
        if result.fix and result.status in ("FAIL", "WARN"):
            lines.append(f"{'':4}  {'':{width}}  fix: {result.fix}")
    counts = {s: sum(1 for r in results if r.status == s) for s in ("PASS", "FAIL", "WARN", "SKIP")}
    lines.append(
        f"doctor: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['WARN']} warnings,"
        f" {counts['SKIP']} skipped"
    )
    return scrub("\n".join(lines), target.secrets)


def scrub(text: str, values: Iterable[str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def cmd_doctor(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    signals = (
        f"{len(target.signal_urls)} signal instance(s) from {target.signal_source}"
        if target.signal_urls
        else "no signal instances"
    )
    print(f"rtcctl doctor: env {target.env_source}; gateway {target.gateway}; {signals}")
    results = asyncio.run(run_checks(target))
    print(render(results, target), flush=True)
    return 1 if any(r.status == "FAIL" for r in results) else 0


def add_parser(sub: Any) -> None:
    """Register `rtcctl doctor` on the CLI's subparsers."""
    doctor = sub.add_parser(
        "doctor",
        help="check a deployment end to end and say what is wrong",
        description=__doc__.splitlines()[0],
        epilog=(
            "Exit status: 0 when no check fails (warnings do not fail), 1 otherwise. Without"
            " JWT_SECRET (a public-key deployment) put a token of the main application in"
            f" {TOKEN_ENV} for the authenticated routes."
        ),
    )
    doctor.add_argument(
        "--gateway",
        help="the gateway's URL (default: the local stack's, from stack.json, or RTC_GATEWAY_URL)",
    )
    doctor.add_argument(
        "--env-file",
        type=Path,
        help="the deployment's env file (default: the run folder's env); the process"
        " environment overrides it",
    )
    doctor.add_argument(
        "--signal",
        action="append",
        metavar="URL",
        help="a signal-service instance's own URL (repeat per instance; default: stack.json)",
    )
    doctor.add_argument(
        "--timeout", type=float, default=3.0, help="seconds per network probe (default 3)"
    )
    doctor.set_defaults(func=cmd_doctor)
