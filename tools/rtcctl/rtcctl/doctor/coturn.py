"""coturn: allocations with credentials minted from TURN_SECRET, the relay, the previous secret."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import socket
import time

from aioice import stun
from rtc_common.ice.settings import IceProviderSettings
from rtc_common.ice.turn import coturn_credentials

from .clock import skew_result
from .config import TurnUri, parse_turn_uri, providers_of
from .rendering import Result
from .target import Target
from .turnclient import Addr, Allocation, Refused, allocate, relay_round_trip, resolve
from .turntls import check_turns_server

TURN_WALLET = "rtcctl-doctor"  # the wallet the doctor's own credentials and tokens name
FAR_FUTURE = 86400  # a credential that only a wrong secret (not a fast clock) gets refused


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _is_private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_private or ip.is_loopback or ip.is_link_local


async def check_coturn_server(
    uris: list[TurnUri], secret: str, ttl: int, target: Target, previous: str | None = None
) -> list[Result]:
    first = uris[0]
    label = f"coturn {first.hostport}"
    timeout = target.timeout
    transports = sorted({u.transport for u in uris}, key=lambda t: t != "udp")
    try:
        family, server_ip = await resolve(first.host, first.port, transports[0])
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
            results.append(await skew_result(label, server, mint, timeout))
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


def _fmt(addr: Addr) -> str:
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


async def check_coturn(target: Target, settings: IceProviderSettings | None) -> list[Result]:
    if settings is None:
        return [Result("SKIP", "coturn", "configuration did not load (see config)")]
    if "coturn" not in providers_of(settings):
        return [Result("SKIP", "coturn", "not configured (RTC_PROVIDER/RTC_PROVIDER_FALLBACK)")]
    if settings.missing_for("coturn") or settings.turn_secret is None:
        return [Result("SKIP", "coturn", "configuration incomplete (see config coturn)")]
    secret = settings.turn_secret.get_secret_value()
    # Not an ice-service setting (it signs only with TURN_SECRET): coturn's second secret.
    previous = target.env.get("TURN_SECRET_PREVIOUS") or None
    servers: dict[tuple[str, int], list[TurnUri]] = {}
    tls_servers: dict[tuple[str, int], TurnUri] = {}
    results: list[Result] = []
    for raw in settings.turn_uris:
        uri = parse_turn_uri(raw)
        if uri is None:
            continue
        if uri.scheme == "turns":
            tls_servers.setdefault((uri.host, uri.port), uri)
            continue
        servers.setdefault((uri.host, uri.port), []).append(uri)

    def mint() -> tuple[str, str]:
        username, password = coturn_credentials(
            secret, TURN_WALLET, int(time.time()) + settings.turn_cred_ttl
        )
        target.remember(password)
        return username, password

    groups = await asyncio.gather(
        *(
            check_coturn_server(uris, secret, settings.turn_cred_ttl, target, previous)
            for uris in servers.values()
        ),
        *(check_turns_server(uri, mint, target) for uri in tls_servers.values()),
    )
    for group in groups:
        results.extend(group)
    if not servers and not tls_servers and not results:
        results.append(Result("FAIL", "coturn", "TURN_URIS names no TURN server"))
    return results
