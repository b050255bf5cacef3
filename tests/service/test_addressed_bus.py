"""Addressed delivery: a signal, presence update or relay push reaches only the signal-service
instances that hold its target, and an instance from before addressed delivery still gets it.

Real redis-server and signal-service processes, python-socketio clients; each instance's
`rtc_signal_bus_messages_total` says what its listener received. "Nothing arrived" is shown after
a barrier: a later message that went through the same listener was counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import socketio
from relay_service.pusher import RelayPusher
from rtc_common.bus import AddressedBus, emit_message, instance_channel
from rtc_testkit.contract import offer
from rtc_testkit.peer import Peers
from rtc_testkit.processes import RedisServer, ServiceProcess, metric_value, wait_for_async
from rtc_testkit.stack import add_contacts

Cluster = Callable[..., list[ServiceProcess]]
CHANNEL = "rtc-socketio"  # SignalSettings.socketio_channel
BUS = "rtc_signal_bus_messages_total"


def received(server: ServiceProcess, channel: str) -> float:
    return metric_value(server.url, BUS, f'channel="{channel}"')


async def barrier(aredis: aioredis.Redis, server: ServiceProcess, instance: str) -> float:
    """Publish one message on the instance's own channel and wait until its listener counted it:
    whatever was published to that instance before has been counted too (one connection, in
    order). Returns the `own` count before the barrier's message."""
    before = received(server, "own")
    head, tail = emit_message("barrier", {}, namespace="/", host_id="test")
    await aredis.publish(instance_channel(CHANNEL, instance), head + b'"user:0xnobody"' + tail)

    async def counted() -> bool:
        return received(server, "own") >= before + 1

    await wait_for_async(counted, timeout=5, what=f"{instance} counted the barrier")
    return received(server, "own") - 1


@pytest.fixture
async def aredis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=redis_server.port, socket_timeout=2)
    yield client
    await client.aclose()


async def test_only_the_instances_holding_the_parties_receive(
    signal_cluster: Cluster, redis_server: RedisServer, aredis: aioredis.Redis, peers: Peers
) -> None:
    s1, s2, s3 = signal_cluster(3)
    a, b, c, d = "0xa1", "0xb2", "0xc3", "0xd3"
    add_contacts(redis_server, a, b)
    add_contacts(redis_server, c, d)  # C and D: the bystander instance's own users
    alice = await peers.connect(s1.url, a)
    bob = await peers.connect(s2.url, b)
    carol = await peers.connect(s3.url, c)
    await alice.next("presence:snapshot")
    assert (await alice.next("presence:update"))["online"] is True  # B came online
    await carol.next("presence:snapshot")
    before = {s: (received(s, "own"), received(s, "shared")) for s in (s1, s2, s3)}

    for i in range(20):
        ack = await alice.call("rtc:offer", offer(a, b, f"sig-{i}"))
        assert ack == {"ok": True, "signalId": f"sig-{i}"}
    for i in range(20):
        await bob.wait_signal("rtc:offer", f"sig-{i}")
    # Refusals and errors go to the sender's own socket: published nowhere.
    refused = await alice.call("rtc:offer", offer(a, c, "not-a-contact"))
    assert refused["error"] == "forbidden"

    # D comes online on s3: C hears it from s3's own emit, published nowhere. Then a presence
    # change of B's reaches A's instance only.
    await peers.connect(s3.url, d)
    assert (await carol.next("presence:update"))["wallet"] == d
    await bob.close()
    assert (await alice.next("presence:update")) | {"at": None} == {
        "wallet": b,
        "online": False,
        "at": None,
    }

    assert received(s2, "own") - before[s2][0] >= 20
    assert received(s1, "own") - before[s1][0] >= 1  # B's offline update
    # The bystander instance received nothing at all: no signal, no presence, no error emit.
    assert (await barrier(aredis, s3, "signal3"), received(s3, "shared")) == before[s3]
    assert received(s1, "shared") == before[s1][1] and received(s2, "shared") == before[s2][1]
    assert await aredis.pubsub_numsub(instance_channel(CHANNEL, "signal3")) == [
        (instance_channel(CHANNEL, "signal3").encode(), 1)
    ]


async def test_relay_push_goes_to_the_recipients_instances_only(
    signal_cluster: Cluster, redis_server: RedisServer, aredis: aioredis.Redis, peers: Peers
) -> None:
    s1, s2, s3 = signal_cluster(3)
    a, b = "0xa1", "0xb2"
    add_contacts(redis_server, a, b)
    phone = await peers.connect(s1.url, b)
    laptop = await peers.connect(s2.url, b)
    before = received(s3, "own"), received(s3, "shared")
    client = aioredis.Redis(port=redis_server.port)
    pusher = RelayPusher(client, CHANNEL)
    try:
        for i in range(5):
            pusher.push(b, "relay:message", {"id": f"{i}-0", "from": a, "payload": i})
        await pusher.drain()
        for sock in (phone, laptop):
            got = [(await sock.next("relay:message", 10))["payload"] for _ in range(5)]
            assert got == list(range(5))  # in queue order, once each
    finally:
        await client.aclose()
    assert (await barrier(aredis, s3, "signal3"), received(s3, "shared")) == before


async def test_an_instance_from_before_addressed_delivery_still_receives(
    signal_cluster: Cluster, redis_server: RedisServer, aredis: aioredis.Redis, peers: Peers
) -> None:
    """A rolling upgrade: an old instance (python-socketio's stock manager, shared channel only)
    beside new ones. Old -> new: its broadcasts are delivered. New -> old: presence and pushes
    reach it through the marked fallback copy, which new instances skip; a signal to a target
    held only there is refused `unavailable` (never acked and lost)."""
    (s1,) = signal_cluster(1)
    a, b, old_user = "0xa1", "0xb2", "0xe5"
    add_contacts(redis_server, a, b)
    add_contacts(redis_server, a, old_user)
    bob = await peers.connect(s1.url, b)
    await bob.next("presence:snapshot")

    # The old instance: its listener on the shared channel, and one socket of `old_user` in
    # presence, as the old code records it.
    old = aioredis.Redis(port=redis_server.port)
    pubsub = old.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    await old.hset(f"presence:conn:{old_user}", "old-sid", "old-instance|1")
    writer = socketio.AsyncRedisManager(redis_server.url, channel=CHANNEL, write_only=True)
    try:
        # Old -> new: the stock manager's emit, as an old instance publishes a signal.
        await writer.emit("rtc:offer", {"from": a, "signalId": "from-old"}, room=f"rtc:{b}")
        assert (await bob.next("rtc:offer", 10))["signalId"] == "from-old"

        # New -> old: A connects on the new instance; its presence reaches the old instance.
        alice = await peers.connect(s1.url, a)
        copies: list[Any] = []

        async def fallback_arrived() -> bool:
            message = await pubsub.get_message(timeout=0.2)
            if message is not None:
                copies.append(orjson.loads(message["data"]))
            return any(c.get("event") == "presence:update" for c in copies)

        await wait_for_async(fallback_arrived, timeout=10, what="fallback copy on shared channel")
        update = next(c for c in copies if c.get("event") == "presence:update")
        assert update["room"] == [f"user:{old_user}"] and update["addressed"] == 1
        assert update["data"][0]["wallet"] == a
        assert metric_value(s1.url, BUS, 'channel="shared_skipped"') >= 1

        refused = await alice.call("rtc:offer", offer(a, old_user, "to-old"))
        assert refused["error"] == "unavailable"
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await old.aclose()
        if getattr(writer, "redis", None) is not None:
            await writer.redis.aclose()


async def test_fan_out_groups_rooms_per_instance(
    redis_server: RedisServer, aredis: aioredis.Redis
) -> None:
    """One message per instance, naming only the rooms it holds; this instance gets none."""
    listeners = {i: aredis.pubsub(ignore_subscribe_messages=True) for i in ("i1", "i2")}
    for instance, pubsub in listeners.items():
        await pubsub.subscribe(instance_channel(CHANNEL, instance))
    holders = {"0x1": ["i1|0", "i1|1"], "0x2": ["i2|1"], "0x3": ["i1|1", "i2|0", "me|1"]}
    for wallet, values in holders.items():
        for n, value in enumerate(values):
            await aredis.hset(f"presence:conn:{wallet}", f"sid{n}", value)
    bus = AddressedBus(aredis, CHANNEL, "me")
    message = emit_message("presence:update", {"x": 1}, namespace="/", host_id="h")
    wallets = [*holders, "0x9"]  # 0x9 is offline
    result = await bus.fan_out(wallets, [f"user:{w}" for w in wallets], message)
    assert (result.reached, result.missed) == (2, 0)
    rtc_only = await bus.fan_out(["0x3"], ["user:0x3"], message, rtc_only=True)
    assert (rtc_only.reached, rtc_only.missed) == (1, 0)  # i1 only: i2's socket is not RTC

    async def next_message(pubsub: Any) -> Any:
        async with asyncio.timeout(5):
            while True:
                got = await pubsub.get_message(timeout=1)
                if got is not None:
                    return orjson.loads(got["data"])

    first_i1, first_i2 = await next_message(listeners["i1"]), await next_message(listeners["i2"])
    assert first_i1["room"] == ["user:0x1", "user:0x3"]
    assert first_i2["room"] == ["user:0x2", "user:0x3"]
    assert (await next_message(listeners["i1"]))["room"] == ["user:0x3"]
    assert first_i1["data"] == [{"x": 1}] and first_i1["method"] == "emit"
    for pubsub in listeners.values():
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_no_signal_is_acked_towards_an_instance_that_is_stopping(
    signal_cluster: Cluster, redis_server: RedisServer, peers: Peers
) -> None:
    """SIGTERM on the target's instance while offers stream to it: each offer is either acked
    and delivered before the socket closes, or refused (`unavailable` once the instance stopped
    taking addressed messages, `target_not_rtc_eligible` once the socket is gone)."""
    s1, s2 = signal_cluster(2, SIGNAL_RATE_PER_SEC="100000")
    a, b = "0xa1", "0xb2"
    add_contacts(redis_server, a, b)
    alice = await peers.connect(s1.url, a)
    bob = await peers.connect(s2.url, b)
    acked: list[str] = []
    refused: dict[str, int] = {}
    stopping = asyncio.Event()

    async def sender(lane: int) -> None:
        n = 0
        while True:
            signal_id = f"lane{lane}-{n}"
            n += 1
            ack = await alice.call("rtc:offer", offer(a, b, signal_id))
            if ack.get("ok"):
                acked.append(signal_id)
            else:
                refused[ack["error"]] = refused.get(ack["error"], 0) + 1
                if ack["error"] == "target_not_rtc_eligible":
                    return
            if stopping.is_set() and n > 10_000:
                return

    lanes = [asyncio.create_task(sender(lane)) for lane in range(8)]

    async def flowing() -> bool:
        return len(acked) >= 200

    await wait_for_async(flowing, timeout=10, what="offers flowing")
    stopping.set()
    await asyncio.to_thread(s2.stop)  # SIGTERM: drain, close the sockets, exit
    async with asyncio.timeout(20):
        await asyncio.gather(*lanes)
    delivered = {body["signalId"] for body in bob.received("rtc:offer")}
    assert set(acked) <= delivered, f"acked, never delivered: {sorted(set(acked) - delivered)}"
    assert refused.get("target_not_rtc_eligible") == 8
