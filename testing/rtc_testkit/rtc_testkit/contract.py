"""The contract as a client sees it: tokens, wallets, the canonical convId, signal bodies, and the
TURN REST credentials coturn accepts (with a real allocation to prove it).

The convId and the TURN credential formula are written out here, independently of the
services' code, so that a test comparing the two checks something.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import uuid
from typing import Any, Protocol

from aioice import stun
from aioice.turn import create_turn_endpoint
from rtc_common.tokens import mint_token

# The stacks' secrets: test values, never a deployment's.
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"  # noqa: S105
TURN_SECRET = "test-turn-secret-abcdef"  # noqa: S105
TURN_CLI_PASSWORD = "test-turn-cli-password"  # noqa: S105
ADMIN_TOKEN = "test-admin-token-0123456789abcdef0123456789"  # noqa: S105

SDP_OFFER = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
SDP_ANSWER = "v=0\r\no=- 7 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CANDIDATE = "candidate:842163049 1 udp 1677729535 127.0.0.1 50000 typ host"

_HEX_WALLET = re.compile(r"^0x[0-9a-fA-F]+$")


def make_token(
    wallet: str | None = "0xabc",
    *,
    secret: str = JWT_SECRET,
    expires_in: float = 3600,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """An HMAC-signed JWT as the tools mint them (`wallet` and `sub` claims, `iat`, `exp`);
    `claims` are added as given and may override those."""
    return mint_token(secret, wallet, expires_in=expires_in, algorithm=algorithm, **claims)


def bearer(wallet: str, **kwargs: Any) -> dict[str, str]:
    """The Authorization header of a valid token for `wallet` (`kwargs` as for make_token)."""
    return {"Authorization": f"Bearer {make_token(wallet, **kwargs)}"}


def new_wallet(prefix: str = "0x") -> str:
    """A wallet no other test uses (0x-hex unless `prefix` says otherwise)."""
    return prefix + uuid.uuid4().hex[:20]


def sid(tag: str = "s") -> str:
    """A fresh signalId / messageId."""
    return f"{tag}-{uuid.uuid4().hex[:12]}"


def normalized(wallet: str) -> str:
    """0x-hex wallets compare lowercase; anything else is kept as given."""
    return wallet.lower() if _HEX_WALLET.match(wallet) else wallet


def conv_id(a: str, b: str) -> str:
    """The canonical convId of two wallets."""
    return ":".join(sorted((normalized(a), normalized(b))))


def offer(
    sender: str, to: str, signal_id: str | None = None, sdp: str = SDP_OFFER
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "convId": conv_id(sender, to),
        "to": to,
        "sdp": {"type": "offer", "sdp": sdp},
    }
    if signal_id is not None:
        body["signalId"] = signal_id
    return body


def answer(
    sender: str, to: str, signal_id: str | None = None, sdp: str = SDP_ANSWER
) -> dict[str, Any]:
    body = offer(sender, to, signal_id, sdp)
    body["sdp"]["type"] = "answer"
    return body


def candidate(
    sender: str,
    to: str,
    signal_id: str | None = None,
    text: str = CANDIDATE,
    sdp_mid: str | None = "0",
    index: int | None = 0,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "convId": conv_id(sender, to),
        "to": to,
        "candidate": {"candidate": text, "sdpMid": sdp_mid, "sdpMLineIndex": index},
    }
    if signal_id is not None:
        body["signalId"] = signal_id
    return body


def relay_message(
    sender: str, to: str, message_id: str, payload: str = "hi", **extra: Any
) -> dict[str, Any]:
    """An enqueue body."""
    return {
        "to": to,
        "convId": conv_id(sender, to),
        "messageId": message_id,
        "payload": payload,
        **extra,
    }


def turn_credentials(secret: str, wallet: str, expiry: int) -> tuple[str, str]:
    """coturn's documented REST-API credential scheme: `expiry:wallet`, base64 HMAC-SHA1."""
    username = f"{expiry}:{wallet}"
    password = base64.b64encode(
        hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    ).decode()
    return username, password


class _Listening(Protocol):
    @property
    def port(self) -> int: ...


def _address(server: tuple[str, int] | _Listening) -> tuple[str, int]:
    return server if isinstance(server, tuple) else ("127.0.0.1", server.port)


async def allocate_relay(
    server: tuple[str, int] | _Listening, username: str, password: str
) -> tuple[str, int]:
    """Allocate a relay on a real TURN server (over UDP), released at once; the relayed address.
    `server` is (host, port) or a local Coturn. A refusal raises aioice's `stun.TransactionFailed`.
    """
    transport, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol,
        server_addr=_address(server),
        username=username,
        password=password,
        transport="udp",
    )
    try:
        relayed: tuple[str, int] = transport.get_extra_info("sockname")
        return relayed
    finally:
        transport.close()


async def allocation_error(
    server: tuple[str, int] | _Listening, username: str, password: str
) -> int | None:
    """None when the TURN server allocates a relay with these credentials, else its STUN error
    code."""
    try:
        await allocate_relay(server, username, password)
    except stun.TransactionFailed as exc:
        return int(exc.response.attributes["ERROR-CODE"][0])
    return None


class FakeClock:
    """A clock a test moves by hand (`clock.now`, `advance`), for code that takes a clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
