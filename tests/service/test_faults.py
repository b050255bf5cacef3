"""Faults under load (issue 8; docs/reliability.md): the cases the other files do not cover.

- `nginx -s reload` while ICE requests stream through the gateway: none fails;
- Redis restarted, then a signal instance killed with -9, while signals flow across instances
  through the gateway: the clients reconnect to the other instance, presence is corrected, and
  every acked signal is delivered (the only exception, stated in the docs: a signal acked just
  before its receiver's own socket dropped);
- the directory (MongoDB) on a closed port: flags, contacts and the RTC switch are `unavailable`
  on every service, never an allow;
- Twilio's circuit breaker: open after failures (the fallback answers without calling Twilio),
  one trial after the cooldown, closed again when Twilio has healed.

Real processes (redis-server, nginx, the services) and real clients; waits are conditions with
deadlines.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp.test_utils import TestClient
from conftest import IceClientFactory
from ice_service.app import ISSUER_KEY
from ice_service.providers import TwilioProvider
from relay_service.app import create_app as create_relay_app
from relay_service.settings import RelaySettings
from rtc_common.clients import as_text
from rtc_common.settings import load_settings
from rtc_gateway import GatewayLimits
from rtc_testkit.contract import FakeClock, bearer, conv_id, make_token, offer
from rtc_testkit.peer import Peer, Peers, open_peers
from rtc_testkit.processes import (
    Gateway,
    RedisServer,
    ServiceProcess,
    free_port,
    http_status,
    until,
    wait_for,
)
from rtc_testkit.stack import Stack, StackSpec, add_contacts, base_env, signal_env, start_stack
from rtc_testkit.twilio import TwilioStub

ICE = "/api/v1/rtc/ice"


# --- 1. gateway reload during ICE load ------------------------------------------------------


@pytest.fixture
def ice_gateway(tmp_path: Path) -> Iterator[Gateway]:
    spec = StackSpec(
        ice=1,
        ice_env={"ICE_RATE_LIMIT_PER_MIN": "1000000", "LOG_LEVEL": "WARNING"},
        gateway_limits=GatewayLimits.off(),
    )
    with start_stack(spec, tmp_path) as stack:
        yield stack.gateway


async def test_gateway_reload_under_ice_load_fails_nothing(ice_gateway: Gateway) -> None:
    outcomes: list[str] = []
    stop = asyncio.Event()
    tokens = [make_token(f"0x1ce{n:03x}") for n in range(16)]

    async def worker(session: aiohttp.ClientSession, token: str) -> None:
        while not stop.is_set():
            try:
                async with session.get(
                    ice_gateway.url + ICE, headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    body = await response.json(content_type=None)
                    outcomes.append("ok" if response.status == 200 else f"{response.status} {body}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcomes.append(f"exception {type(exc).__name__}")

    reloads = 5
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        workers = [asyncio.create_task(worker(session, token)) for token in tokens]
        try:
            for _ in range(reloads):
                before = ice_gateway.worker_pids()
                seen = len(outcomes)
                await asyncio.to_thread(ice_gateway.reload)

                # The new workers are up and the old ones have finished their requests.
                def replaced(old: set[int] = before) -> bool:
                    now = ice_gateway.worker_pids()
                    return bool(now) and not now & old

                await asyncio.to_thread(wait_for, replaced, 10, "nginx workers replaced")

                def answered(n: int = seen) -> bool:
                    return len(outcomes) > n + 50

                await until(answered, 10, "requests after the reload")
        finally:
            stop.set()
            await asyncio.gather(*workers)
    failures = [o for o in outcomes if o != "ok"]
    print(f"\n{len(outcomes)} ICE requests across {reloads} reloads, {len(failures)} failed")
    assert len(outcomes) > reloads * 50
    assert failures == []


# --- 2. signaling: Redis restart, then an instance killed, under load -------------------------


def arrivals(peer: Peer) -> dict[str, float]:
    """signalId -> when the peer first received that rtc:offer."""
    first: dict[str, float] = {}
    peer.on("rtc:offer", lambda data: first.setdefault(data["signalId"], time.monotonic()))
    return first


async def test_signals_survive_redis_restart_and_instance_kill(
    tmp_path: Path, peers: Peers
) -> None:
    spec = StackSpec(signal=2, gateway_limits=GatewayLimits.off())
    with start_stack(spec, tmp_path) as stack:
        await _signals_under_faults(stack, peers)


async def _signals_under_faults(stack: Stack, peers: Peers) -> None:
    redis_server, gateway, signals = stack.redis, stack.gateway, stack.signals
    addr1, up1, addr2, _ = await gateway.spread_addresses()
    first = next(s for s in signals if up1.endswith(f":{s.port}"))
    pairs: list[tuple[Peer, Peer]] = []
    delivered: dict[str, dict[str, float]] = {}
    for index in range(4):
        tag = uuid.uuid4().hex[:6]
        a, b = f"0xa{index}{tag}", f"0xb{index}{tag}"
        add_contacts(redis_server, a, b)
        near, far = (addr1, addr2) if index % 2 == 0 else (addr2, addr1)
        sender, receiver = (
            peers(
                wallet,
                local_addr=addr,
                reconnection=True,
                reconnection_delay=0.1,
                reconnection_delay_max=0.5,
            )
            for wallet, addr in ((a, near), (b, far))
        )
        for client in (sender, receiver):
            delivered[client.wallet] = arrivals(client)
            await client.connect(gateway.url)
        pairs.append((sender, receiver))
    clients = peers.made

    acked: dict[str, tuple[float, Peer]] = {}
    outcomes: dict[str, int] = {}
    stop = asyncio.Event()

    async def send(sender: Peer, receiver: Peer) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            signal_id = f"{sender.wallet}-{n}"
            outcome = "disconnected"
            if sender.connected:
                try:
                    ack = await sender.call(
                        "rtc:offer", offer(sender.wallet, receiver.wallet, signal_id), timeout=3
                    )
                    outcome = "ok" if ack.get("ok") else str(ack.get("error"))
                    if outcome == "ok":
                        acked[signal_id] = (time.monotonic(), receiver)
                except socketio.exceptions.SocketIOError as exc:
                    outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            await asyncio.sleep(0.02)  # the load's pace

    def acked_count() -> int:
        return len(acked)

    async def more_acked(count: int) -> None:
        target = acked_count() + count
        await until(lambda: acked_count() >= target, 20, f"{count} more acked signals")

    senders = [asyncio.create_task(send(s, r)) for s, r in pairs]
    try:
        await more_acked(40)
        # Redis restarted (its AOF is off here: contacts are written again when it is back).
        await asyncio.to_thread(redis_server.kill)
        await asyncio.to_thread(redis_server.start)
        for sender, receiver in pairs:
            add_contacts(redis_server, sender.wallet, receiver.wallet)
        await more_acked(40)

        # One instance killed: its clients reconnect through the gateway to the other one.
        first.kill()
        killed = time.monotonic()
        await more_acked(40)

        raw = redis_server.client()
        survivor = next(s for s in signals if s is not first)

        def presence_exact() -> bool:
            return all(c.connected for c in clients) and all(
                raw.hlen(f"presence:conn:{c.wallet}") == 1 for c in clients
            )

        await asyncio.to_thread(wait_for, presence_exact, 15, "presence corrected")
        print(f"\npresence exact {time.monotonic() - killed:.2f} s after the kill")
        instances = {as_text(m) for m in raw.smembers("presence:instances")}
        assert instances == {survivor.name}
        for client in clients:
            [entry] = raw.hvals(f"presence:conn:{client.wallet}")
            assert as_text(entry).startswith(f"{survivor.name}|")
        await more_acked(40)
    finally:
        stop.set()
        await asyncio.gather(*senders)

    def all_arrived() -> bool:
        return all(sid in delivered[r.wallet] or r.was_down_at(t) for sid, (t, r) in acked.items())

    await until(all_arrived, 5, "acked signals delivered")
    in_flight = [sid for sid, (_, r) in acked.items() if sid not in delivered[r.wallet]]
    print(f"outcomes {outcomes}; acked {len(acked)}; in flight to a dropped socket {in_flight}")
    assert all(acked[sid][1].was_down_at(acked[sid][0]) for sid in in_flight)
    assert len(in_flight) <= 8, in_flight  # a short window, not a stream of losses
    assert outcomes["ok"] == len(acked)


# --- 3. the directory (MongoDB) unreachable ------------------------------------------------


async def test_mongo_unreachable_is_unavailable_never_an_allow(
    tmp_path: Path,
    redis_server: RedisServer,
    ice_client: IceClientFactory,
    aiohttp_client: Any,
) -> None:
    closed = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    a, b = "0xa5e", "0xb5e"
    add_contacts(redis_server, a, b)  # allowed in Redis, which is not the directory here

    ice = await ice_client(DIRECTORY_URL=closed, FLAG_STALE_MAX_SECONDS="1")
    async with ice.get(ICE, headers=bearer(a)) as response:
        assert response.status == 503
        assert (await response.json())["error"] == "unavailable"

    relay_settings = load_settings(RelaySettings, base_env(redis_server.url, DIRECTORY_URL=closed))
    relay: TestClient[Any, Any] = await aiohttp_client(create_relay_app(relay_settings))
    body = {"to": b, "convId": conv_id(a, b), "messageId": "m-1", "payload": "hi"}
    async with relay.post("/api/v1/relay/enqueue", json=body, headers=bearer(a)) as response:
        assert response.status == 503, await response.text()
        assert (await response.json())["error"] == "unavailable"
    assert redis_server.client().keys("relay:q:*") == []  # nothing stored, nothing acked

    env = signal_env(redis_server.url, DIRECTORY_URL=closed, INSTANCE_ID="mongo-down")
    signal = ServiceProcess("signal_service", tmp_path / "signal", env, name="mongo-down")
    signal.start()  # ready: it answers, `unavailable` where the directory is needed
    try:
        assert http_status(signal.url + "/readyz") == 200
        async with open_peers() as peers:
            sender = await peers.connect(signal.url, a)
            await peers.connect(signal.url, b)
            ack = await sender.call("rtc:offer", offer(a, b, "mongo-down-1"), timeout=10)
            assert ack == {"ok": False, "error": "unavailable", "signalId": "mongo-down-1"}
    finally:
        signal.stop()
    log = signal.log_text()
    assert "Traceback" not in log
    assert all(json.loads(line) for line in log.splitlines() if line.startswith("{"))


# --- 4. Twilio: the circuit opens, the fallback answers, Twilio comes back ------------------


async def test_twilio_breaker_falls_back_then_recovers(
    ice_client: IceClientFactory, twilio: TwilioStub
) -> None:
    client = await ice_client(
        RTC_PROVIDER="twilio",
        RTC_PROVIDER_FALLBACK="coturn",
        **twilio.env(),
        TWILIO_TIMEOUT_SECONDS="0.5",
        ICE_RATE_LIMIT_PER_MIN="1000",
    )
    provider = client.app[ISSUER_KEY].primary
    assert isinstance(provider, TwilioProvider)
    clock = FakeClock()
    provider.breaker.clock = clock

    async def ice(wallet: str = "0xabc") -> tuple[str, float]:
        started = time.monotonic()
        async with client.get(ICE, headers=bearer(wallet)) as response:
            body = await response.json()
            assert response.status == 200, body
            return body["provider"], time.monotonic() - started

    # Slow (past the timeout), then failing: each answer is bounded and comes from coturn.
    twilio.delay = 2.0
    for _ in range(2):
        provider_name, elapsed = await ice()
        assert (provider_name, elapsed < 1.5) == ("coturn", True), elapsed
    twilio.delay = 0.0
    twilio.mode = "http_500"
    assert (await ice())[0] == "coturn"
    assert twilio.token_calls == 3  # three consecutive failures: the circuit is open

    # Open: Twilio is not called at all, even though it has healed.
    twilio.mode = "ok"
    for _ in range(5):
        assert (await ice())[0] == "coturn"
    assert twilio.token_calls == 3

    # After the cooldown one trial goes through; it succeeds and the circuit closes.
    clock.now += provider.breaker.cooldown
    assert (await ice())[0] == "twilio"
    assert twilio.token_calls == 4
    assert provider.breaker.opened_at is None and provider.breaker.failures == 0
    assert (await ice("0xdef"))[0] == "twilio"  # the token is reused, not fetched again
    assert twilio.token_calls == 4
