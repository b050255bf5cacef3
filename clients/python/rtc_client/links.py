"""The state of the peer connections towards one peer, and what they selected."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from aiortc import RTCDataChannel, RTCIceCandidate, RTCPeerConnection

from rtc_client.ice import IceConfig


def selected_pair(pc: RTCPeerConnection) -> tuple[str, str] | None:
    """The (local, remote) candidate types of the nominated ICE pair, or None before one is.

    aiortc's getStats() has no candidate-pair entries, so this reads the ICE transport's
    nominated pair (aioice) directly."""
    sctp = pc.sctp
    if sctp is None:
        return None
    connection = getattr(sctp.transport.transport, "_connection", None)
    nominated = getattr(connection, "_nominated", None)
    if not isinstance(nominated, dict) or not nominated:
        return None
    pair = nominated.get(1) or next(iter(nominated.values()))
    try:
        return str(pair.local_candidate.type), str(pair.remote_candidate.type)
    except AttributeError:
        return None


class PeerSession:
    """One RTCPeerConnection towards a peer (a link has at most one open and one negotiating)."""

    def __init__(self, pc: RTCPeerConnection, initiator: bool, ice: IceConfig) -> None:
        self.pc = pc
        self.initiator = initiator
        self.ice = ice
        self.id = uuid.uuid4().hex[:8]
        self.channel: RTCDataChannel | None = None
        self.remote_set = False
        self.early_candidates: list[RTCIceCandidate | None] = []
        self.closed = False

    @property
    def open(self) -> bool:
        return not self.closed and self.channel is not None and self.channel.readyState == "open"


@dataclass
class Link:
    remote: str
    active: PeerSession | None = None
    negotiating: PeerSession | None = None
    failure: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    negotiation_task: asyncio.Task[None] | None = None
    sessions_made: int = 0

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
