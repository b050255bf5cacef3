"""What signal-service keeps per socket and per event, and the namespace's run-time deps."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from rtc_common.bus import AddressedBus
from rtc_common.directory import AccessCache
from rtc_common.relay_store import RelayStore

from .guard import Refusals, TokenBucket
from .presence import Presence

DEDUP_SECONDS = 60


@dataclass(slots=True)
class SocketState:
    wallet: str
    rtc: bool
    bucket: TokenBucket
    refusals: Refusals
    # The token's `exp` (epoch seconds): the session ends then (session:end token_expired).
    expires_at: float | None = None
    expiry: asyncio.TimerHandle | None = None
    legacy_warned: bool = False
    ended: bool = False

    def expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at


@dataclass
class LocalDedup:
    """signalId dedup for when Redis is unreachable (same-instance delivery still works)."""

    seen: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def first_time(self, key: str) -> bool:
        now = time.monotonic()
        while self.seen and next(iter(self.seen.values())) < now - DEDUP_SECONDS:
            self.seen.popitem(last=False)
        if key in self.seen:
            return False
        self.seen[key] = now
        return True


class Refusal(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class SignalDeps:
    """What the namespace needs at run time, built in the app's cleanup context."""

    redis: Any
    presence: Presence
    bus: AddressedBus
    access: AccessCache
    relay: RelayStore


def dedup_key(sender: str, signal_id: str) -> str:
    """Redis key marking that `sender` sent `signal_id` (forwarded once within DEDUP_SECONDS)."""
    return f"signal:dedup:{sender}:{signal_id}"


def outcome_of(result: Any) -> str:
    """The outcome word of a handler's answer: ok, duplicate, or the error code."""
    if isinstance(result, dict):
        if result.get("ok") is False:
            return str(result.get("error", "error"))
        if result.get("duplicate"):
            return "duplicate"
    return "ok"


def signal_id_of(data: Any) -> str | None:
    if isinstance(data, dict):
        value = data.get("signalId")
        if isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return None
