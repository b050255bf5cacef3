"""End to end with the Python SDK (`rtc_client`, aiortc) through the real gateway.

Real components: redis-server, coturn, ice-service (coturn provider), two signal-service
instances, relay-service and the nginx gateway. Every HTTP call and both Socket.IO connections
go through the gateway; each user's client binds its own loopback source address, chosen so that
the gateway's `hash $remote_addr` upstream puts the two users on different signal instances.
The peer connections use the relay-only ICE policy, so their media path is the real coturn with
the credentials ice-service issued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from rtc_client import Delivery, IncomingMessage, ManualClock, RtcClient
from rtc_testkit.contract import (
    JWT_SECRET,
    TURN_SECRET,
    allocation_error,
    make_token,
    new_wallet,
    turn_credentials,
)
from rtc_testkit.processes import (
    Gateway,
    ServiceProcess,
    metric_value,
    until,
    wait_for,
    wait_for_async,
)
from rtc_testkit.stack import Stack, StackSpec, add_contacts, base_env, start_stack

TTL = 60  # short credentials: the SDK's refresh falls due at 0.7 x 60 s (driven by its clock)
RELAY_PORTS = range(49160, 49201)  # coturn's relay port range (tools/rtcctl/local.py)


# Every secret and credential this module's runs hand out: none may reach a log.
SECRETS_SEEN = {JWT_SECRET, TURN_SECRET}


def remember(*values: str | None) -> None:
    SECRETS_SEEN.update(v for v in values if v)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    spec = StackSpec(
        ice=1, signal=2, relay=1, coturn=True, ice_env={"TURN_CRED_TTL": str(TTL)}, name="e2e-"
    )
    with start_stack(spec, tmp_path_factory.mktemp("client-e2e")) as stack:
        yield stack


# -- helpers ------------------------------------------------------------------------------------


class Clients:
    """Makes SDK clients for the stack and closes them all at the end."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.made: list[RtcClient] = []

    async def start(
        self, wallet: str, addr: str, *, base_url: str | None = None, **kwargs: Any
    ) -> RtcClient:
        token = make_token(wallet)
        remember(token)
        client = RtcClient(
            base_url or self.stack.gateway.url,
            token,
            wallet,
            ice_transport_policy="relay",
            local_addr=addr,
            **kwargs,
        )
        self.made.append(client)
        await client.start()
        assert client.ice is not None
        remember(*(s.credential for s in client.ice.ice_servers))
        return client


@pytest.fixture
async def clients(stack: Stack) -> AsyncIterator[Clients]:
    made = Clients(stack)
    yield made
    await asyncio.gather(*(client.close() for client in made.made))


async def next_message(client: RtcClient, timeout: float = 10.0) -> IncomingMessage:
    return await asyncio.wait_for(client.incoming.get(), timeout)


def transport_count(stack: Stack, transport: str, candidate: str, forced: str) -> float:
    labels = f'candidate_type="{candidate}",forced="{forced}",transport="{transport}"'
    return metric_value(stack.ice.url, "rtc_transport_messages_total", labels)


def queue_length(stack: Stack, wallet: str) -> int:
    return int(stack.redis.client().xlen(f"relay:q:{wallet}"))


def relay_port_of(pc: Any) -> int:
    """The local relayed port of the nominated ICE pair (aioice internals, like the SDK)."""
    pair = pc.sctp.transport.transport._connection._nominated[1]
    return int(pair.local_candidate.port)


def turn_username_of(pc: Any) -> str:
    """The TURN username the connection's relay allocation was made with (aioice)."""
    return str(pc.sctp.transport.transport._connection.turn_username)


# -- the promise: RTC when it can, Relay always -------------------------------------------


async def test_rtc_then_relay_fallback_then_offline_pull(
    stack: Stack, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rtc_client")
    addr_a, up_a, addr_b, up_b = await stack.gateway.spread_addresses()
    assert {up_a, up_b} == {f"127.0.0.1:{p.port}" for p in stack.signals}
    a, b = new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    alice = await clients.start(a, addr_a)
    bob = await clients.start(b, addr_b)
    assert alice.ice is not None and alice.ice.provider == "coturn" and alice.ice.ttl == TTL

    # 1. Over the data channel, through coturn: ACKed, relay/relay.
    started = time.monotonic()
    first: Delivery = await alice.send(b, "hello over rtc")
    rtc_seconds = time.monotonic() - started
    assert (first.transport, first.forced, first.rtc_tries) == ("rtc", False, 1), first
    assert first.candidate_pair == ("relay", "relay")
    got = await next_message(bob)
    assert (got.sender, got.payload, got.transport) == (a, "hello over rtc", "rtc")
    assert got.message_id == first.message_id
    assert bob.selected_pair(a) == ("relay", "relay")
    pc_a, pc_b = alice.peer_connection(b), bob.peer_connection(a)
    assert pc_a is not None and pc_b is not None
    assert relay_port_of(pc_a) in RELAY_PORTS and relay_port_of(pc_b) in RELAY_PORTS
    # The relayed candidates were allocated on coturn with the usernames ice-service issued.
    assert bob.ice is not None
    assert turn_username_of(pc_a) == alice.ice.turn_usernames[0]
    assert turn_username_of(pc_b) == bob.ice.turn_usernames[0]
    await until(lambda: transport_count(stack, "rtc", "relay", "false") >= 1, what="telemetry")

    # 2. The peer path breaks (the receiver closes its peer connection and stops consuming):
    #    two ACK windows pass, then the relay with force, pushed to the online receiver.
    bob.set_peer_path_blocked(True)
    started = time.monotonic()
    second = await alice.send(b, "after the break")
    fallback_seconds = time.monotonic() - started
    assert (second.transport, second.forced, second.rtc_tries) == ("relay", True, 2), second
    assert 2 * alice.ack_window - 0.5 <= fallback_seconds <= 2 * alice.ack_window + 3
    got = await next_message(bob)
    assert (got.payload, got.transport, got.forced) == ("after the break", "relay", True)
    assert got.message_id == second.message_id and got.relay_id == second.relay_id
    # Bob acked it (relay:message push, then POST ack): nothing stays queued.
    await until(lambda: queue_length(stack, b) == 0, what="bob's queue acked")
    await until(lambda: transport_count(stack, "relay", "unknown", "true") >= 1, what="telemetry")

    # 3. Bob goes offline; the next message is queued (RTC refused by signaling: target
    #    offline), and Bob pulls it when he comes back.
    await bob.close()
    started = time.monotonic()
    third = await alice.send(b, "while you were away")
    offline_seconds = time.monotonic() - started
    assert (third.transport, third.forced) == ("relay", True), third
    assert queue_length(stack, b) == 1
    bob_again = await clients.start(b, addr_b)
    got = await next_message(bob_again)
    assert (got.payload, got.transport, got.forced) == ("while you were away", "relay", True)
    assert got.sender == a and got.message_id == third.message_id
    await until(lambda: queue_length(stack, b) == 0, what="pulled message acked")
    assert bob_again.incoming.empty()  # "after the break" was acked before: not delivered again

    # 4. Dedup across transports: RTC again with the new client, then the same messageId
    #    through the relay is acked but not delivered twice.
    fourth = await alice.send(b, "once only")
    assert fourth.transport == "rtc" and fourth.candidate_pair == ("relay", "relay"), fourth
    got = await next_message(bob_again)
    assert (got.payload, got.transport) == ("once only", "rtc")
    answer = await alice.relay_enqueue(b, fourth.message_id, "once only", force=True)
    assert answer["ok"] is True
    await until(lambda: queue_length(stack, b) == 0, what="duplicate acked by bob")
    assert bob_again.incoming.empty()

    await alice.close()
    await bob_again.close()

    # Both users' websockets went through the gateway, to different signal instances.
    def websockets_logged() -> bool:
        used = {
            (e["remote"], e["upstream"])
            for e in stack.gateway.access_entries()
            if e["path"] == "/socket.io/" and e["status"] == 101
        }
        return {(addr_a, up_a), (addr_b, up_b)} <= used

    wait_for(websockets_logged, 10, what="both websocket sessions in the access log")

    # No token or credential in the SDK's log records nor in any component's log.
    logs = {
        "sdk": "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records),
        "ice": stack.ice.log_text(),
        "relay": stack.relay.log_text(),
        "signal": "".join(p.log_text() for p in stack.signals),
        "gateway": stack.gateway.access_log.read_text(),
    }
    assert len(SECRETS_SEEN) >= 6
    for name, text in logs.items():
        for secret in SECRETS_SEEN:
            assert secret not in text, f"a secret in the {name} log"
    print(
        f"\nrtc first message {rtc_seconds:.2f} s; fallback {fallback_seconds:.2f} s; "
        f"offline enqueue {offline_seconds:.2f} s"
    )


# -- ICE refresh ------------------------------------------------------------------------------


async def test_ice_refresh_at_70_percent_rebuilds_with_fresh_credentials(
    stack: Stack, clients: Clients
) -> None:
    addr_a, _, addr_b, _ = await stack.gateway.spread_addresses()
    a, b = new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    clock = ManualClock(start=1000.0)
    issued = metric_value(stack.ice.url, "rtc_ice_issued_total", 'provider="coturn"')
    alice = await clients.start(a, addr_a, clock=clock)
    bob = await clients.start(b, addr_b)
    assert metric_value(stack.ice.url, "rtc_ice_issued_total", 'provider="coturn"') == issued + 2
    first_ice = alice.ice
    assert first_ice is not None and first_ice.ttl == TTL
    assert first_ice.refresh_at == pytest.approx(1000.0 + 0.7 * TTL)
    await until(lambda: clock.pending() == [first_ice.refresh_at], what="timer armed")
    first = await alice.send(b, "before refresh")
    assert first.transport == "rtc" and first.candidate_pair == ("relay", "relay")
    assert (await next_message(bob)).payload == "before refresh"
    old_username = first_ice.turn_usernames[0]
    old_pc = alice.peer_connection(b)
    assert old_pc is not None and turn_username_of(old_pc) == old_username
    sessions = alice.sessions_made(b)

    # coturn usernames carry whole seconds: let the wall clock move to a new second so the
    # refreshed username differs from the first one.
    issued_at = int(old_username.split(":")[0]) - TTL
    await until(lambda: int(time.time()) > issued_at, 3, what="a new second")

    clock.advance(0.7 * TTL - 0.5)  # not yet due
    assert clock.pending() == [first_ice.refresh_at] and alice.ice_fetches == 1
    clock.advance(0.5)  # due: the SDK fetches again and rebuilds its peer connection
    await until(lambda: alice.ice_fetches == 2, what="refresh")
    fresh = alice.ice
    assert fresh is not None and fresh is not first_ice
    assert metric_value(stack.ice.url, "rtc_ice_issued_total", 'provider="coturn"') == issued + 3
    new_username = fresh.turn_usernames[0]
    assert int(new_username.split(":")[0]) > int(old_username.split(":")[0])
    remember(*(s.credential for s in fresh.ice_servers))
    # The next refresh is scheduled at 70 % of the new ttl.
    await until(lambda: clock.pending() == [fresh.refresh_at], what="timer re-armed")
    assert fresh.refresh_at == pytest.approx(clock.now() + 0.7 * TTL)

    # aiortc has no restartIce: a new peer connection, built with the fresh credentials, took
    # over; its relay was allocated on coturn with the new username.
    await until(
        lambda: alice.active_ice(b) is fresh and alice.selected_pair(b) == ("relay", "relay"),
        10,
        what="rebuilt peer connection open",
    )
    assert alice.sessions_made(b) == sessions + 1
    new_pc = alice.peer_connection(b)
    assert new_pc is not None and new_pc is not old_pc
    assert turn_username_of(new_pc) == new_username
    assert relay_port_of(new_pc) in RELAY_PORTS
    await until(lambda: old_pc.connectionState == "closed", what="old connection closed")
    after = await alice.send(b, "after refresh")
    assert after.transport == "rtc" and after.candidate_pair == ("relay", "relay"), after
    got = await next_message(bob)
    assert (got.payload, got.transport) == ("after refresh", "rtc")

    # The fresh credentials allocate; expired ones (same scheme, same secret) are refused by
    # coturn for a new allocation: 401.
    turn = next(s for s in fresh.ice_servers if s.username)
    assert turn.username is not None and turn.credential is not None
    assert await allocation_error(stack.coturn, turn.username, turn.credential) is None
    username, password = turn_credentials(TURN_SECRET, a, int(time.time()) - 10)
    assert await allocation_error(stack.coturn, username, password) == 401


async def test_ice_refresh_in_real_time_and_expired_credentials_refused(
    stack: Stack, clients: Clients, tmp_path: Path
) -> None:
    """With TURN_CRED_TTL=20 s and the real clock: the SDK re-fetches at ~70 % (counted at
    ice-service), the first credentials really expire and coturn refuses them for a new
    allocation, and a peer connection made after that expiry opens with the fresh ones."""
    short_ttl = 20
    ice = ServiceProcess(
        "ice_service",
        tmp_path / "ice-short",
        base_env(stack.redis.url, TURN_URIS=stack.coturn.uris, TURN_CRED_TTL=str(short_ttl)),
    )
    ice.start()
    gateway = Gateway(
        tmp_path / "gateway-short",
        ice=[ice.port],
        signal=[p.port for p in stack.signals],
        relay=[stack.relay.port],
    )
    gateway.start()
    try:
        addr_a, _, addr_b, _ = await gateway.spread_addresses()
        a, b = new_wallet(), new_wallet()
        add_contacts(stack.redis, a, b)
        alice = await clients.start(a, addr_a, base_url=gateway.url)
        await clients.start(b, addr_b, base_url=gateway.url)
        first_ice = alice.ice
        assert first_ice is not None and first_ice.ttl == short_ttl
        first_turn = next(s for s in first_ice.ice_servers if s.username)
        assert first_turn.username is not None and first_turn.credential is not None
        expiry = int(first_turn.username.split(":")[0])
        started = time.monotonic()
        sent = await alice.send(b, "with the first credentials")
        assert sent.transport == "rtc" and sent.candidate_pair == ("relay", "relay")

        issued = metric_value(ice.url, "rtc_ice_issued_total", 'provider="coturn"')
        await until(lambda: alice.ice_fetches >= 2, short_ttl, what="refresh at ~70 % of ttl")
        refreshed_after = time.monotonic() - started
        assert 0.6 * short_ttl <= refreshed_after <= 0.8 * short_ttl + 1, refreshed_after
        assert metric_value(ice.url, "rtc_ice_issued_total", 'provider="coturn"') > issued
        fresh = alice.ice
        assert fresh is not None and fresh.turn_usernames[0] != first_turn.username

        # The first credentials expire. coturn compares the expiry with its own clock, which was
        # seen (CI, busy machine) to still accept them a second after expiry by ours: so poll,
        # with a deadline, until it refuses them for a new allocation.
        await until(lambda: time.time() > expiry, short_ttl, what="first credentials expired")
        answers: list[int | None] = []

        async def refused() -> bool:
            assert first_turn.username is not None and first_turn.credential is not None
            answers.append(
                await allocation_error(stack.coturn, first_turn.username, first_turn.credential)
            )
            return answers[-1] is not None

        await wait_for_async(refused, 10, what="coturn refusing expired credentials", interval=0.5)
        assert answers[-1] == 401, answers
        late = time.time() - expiry

        # A peer connection made now (the old ones closed) opens with the fresh credentials.
        alice.set_peer_path_blocked(True)
        await until(lambda: alice.peer_connection(b) is None, what="connections closed")
        alice.set_peer_path_blocked(False)
        after = await alice.send(b, "after expiry")
        assert after.transport == "rtc" and after.candidate_pair == ("relay", "relay"), after
        pc = alice.peer_connection(b)
        assert alice.ice is not None
        assert pc is not None and turn_username_of(pc) == alice.ice.turn_usernames[0]
        assert turn_username_of(pc) != first_turn.username
        print(
            f"\n[ice refresh] ttl={short_ttl}s refreshed after {refreshed_after:.1f}s; first"
            f" credentials refused by coturn {late:.1f}s after expiry ({len(answers)} tries);"
            " new connection used the fresh ones"
        )
    finally:
        gateway.stop()
        ice.stop()
