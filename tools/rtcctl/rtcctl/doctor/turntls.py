"""turns: servers: the certificate clients will see (trusted? for this host? how long left?) and
a real TURN allocation over TLS with credentials minted from TURN_SECRET."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import Any

from .config import TurnUri
from .rendering import Result
from .target import Target
from .turnclient import Refused, allocate

# A certificate with fewer days left than this is a warning (Let's Encrypt renews at 30).
EXPIRY_WARN_DAYS = 14


async def peer_certificate(host: str, port: int, context: ssl.SSLContext, limit: float) -> Any:
    """The server's certificate (as `getpeercert()` decodes it) after a verified handshake."""
    async with asyncio.timeout(limit):
        _reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host
        )
    try:
        return writer.get_extra_info("peercert")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _name(parts: Any, key: str) -> str:
    for rdn in parts or ():
        for name, value in rdn:
            if name == key:
                return str(value)
    return "?"


def certificate_result(label: str, cert: Any, now: float) -> Result:
    not_after = ssl.cert_time_to_seconds(cert["notAfter"])
    days = (not_after - now) / 86400
    issuer = _name(cert.get("issuer"), "organizationName")
    if issuer == "?":
        issuer = _name(cert.get("issuer"), "commonName")
    until = time.strftime("%Y-%m-%d", time.gmtime(not_after))
    detail = f"certificate trusted, issued by {issuer}, valid until {until} ({days:.0f} days left)"
    if days < EXPIRY_WARN_DAYS:
        return Result(
            "WARN",
            label,
            detail,
            "renew the certificate (cert=/pkey= in turnserver.conf) and restart coturn",
        )
    return Result("PASS", label, detail)


async def check_turns_server(
    uri: TurnUri, mint: Callable[[], tuple[str, str]], target: Target
) -> list[Result]:
    """The certificate, then an allocation over TLS (aioice verifies it again)."""
    label = f"coturn {uri.hostport}/tls"
    timeout = target.timeout
    # The system's trust store (SSL_CERT_FILE / SSL_CERT_DIR point elsewhere), as clients use.
    context = ssl.create_default_context()
    try:
        cert = await peer_certificate(uri.host, uri.port, context, timeout)
    except ssl.SSLCertVerificationError as exc:
        return [
            Result(
                "FAIL",
                f"{label} certificate",
                f"not trusted: {exc.verify_message}",
                "give coturn (cert=, pkey= in turnserver.conf) a certificate for the host in"
                " TURN_URIS from a CA browsers trust, with its intermediate chain",
            )
        ]
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return [
            Result(
                "FAIL",
                label,
                f"TLS connection failed ({type(exc).__name__}, {timeout:g} s)",
                f"start coturn with tls-listening-port={uri.port} and cert=/pkey=, and open"
                f" {uri.port}/tcp to clients in the firewall",
            )
        ]
    results = [certificate_result(f"{label} certificate", cert, time.time())]
    try:
        alloc = await allocate((uri.host, uri.port), *mint(), "tcp", timeout, ssl_context=context)
    except Refused as refused:
        results.append(
            Result(
                "FAIL",
                label,
                f"allocation refused over TLS: {refused}",
                "the same secret and clock rules as turn: apply (see the UDP checks)",
            )
        )
        return results
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        results.append(
            Result("FAIL", label, f"allocation over TLS failed ({type(exc).__name__})", "")
        )
        return results
    results.append(
        Result("PASS", label, "allocated a relay over TLS with credentials minted from TURN_SECRET")
    )
    await alloc.close()
    return results
