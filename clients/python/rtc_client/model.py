"""What the SDK hands to the app (deliveries, incoming messages) and the wallet rules it shares
with the server."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

Transport = Literal["rtc", "relay"]
_HEX_WALLET = re.compile(r"^0x[0-9a-fA-F]+$")


def normalize_wallet(wallet: str) -> str:
    """As the server does: 0x-hex wallets compare lowercase, others are kept as given."""
    wallet = wallet.strip()
    return wallet.lower() if _HEX_WALLET.match(wallet) else wallet


def conv_id(a: str, b: str) -> str:
    return ":".join(sorted((normalize_wallet(a), normalize_wallet(b))))


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Delivery:
    """What happened to one sent message."""

    to: str
    message_id: str
    transport: Transport
    forced: bool
    rtc_tries: int
    candidate_pair: tuple[str, str] | None = None  # (local, remote) type when transport is rtc
    relay_id: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class IncomingMessage:
    sender: str
    conv_id: str
    message_id: str
    payload: str
    transport: Transport
    forced: bool = False
    sent_at: str | None = None
    relay_id: str | None = None
