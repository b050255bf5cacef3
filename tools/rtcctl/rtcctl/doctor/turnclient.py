"""A TURN client for the probes: real allocations (aioice) and a datagram relayed out and back."""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aioice import stun
from aioice.turn import create_turn_endpoint

Addr = tuple[Any, ...]


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
    server: tuple[str, int],
    username: str,
    password: str,
    transport: str,
    limit: float,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> Allocation:
    """A real TURN allocation (over TLS with `ssl_context`, transport tcp). Raises Refused (an
    error response), TimeoutError or OSError (ssl.SSLError among them)."""
    try:
        async with asyncio.timeout(limit):
            turn, inbox = await create_turn_endpoint(
                _Inbox,
                server_addr=server,
                username=username,
                password=password,
                lifetime=120,
                ssl=ssl_context,
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


async def resolve(host: str, port: int, transport: str) -> tuple[socket.AddressFamily, str]:
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    infos = await loop.getaddrinfo(host, port, type=kind)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])
