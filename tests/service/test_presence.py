"""Presence across signal-service instances, what happens when Redis or an instance goes away,
the contacts / RTC-switch directory on both backends, and the `rtcctl contacts|rtc` commands.

Real redis-server and real signal-service processes; python-socketio clients over websocket.
"No event" is never shown by sleeping: a later, observable presence change from another contact
is used as a barrier, and what arrived before it is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import redis.asyncio as aioredis
from helpers import directory_settings, opened
from mockupdb import MockupDB, OpMsg
from rtc_common.directory import (
    REDIS_CONTACTS_PREFIX,
    REDIS_RTC_DISABLED_KEY,
    AccessCache,
    MongoDirectory,
    RedisDirectory,
)
from rtc_common.errors import ApiError
from rtc_common.settings import load_settings
from rtc_testkit.contract import JWT_SECRET, FakeClock, offer
from rtc_testkit.peer import Peers
from rtc_testkit.processes import (
    REPO_ROOT,
    RedisServer,
    ServiceProcess,
    metric_value,
    wait_for_async,
)
from rtc_testkit.stack import add_contacts, signal_env
from signal_service.settings import SignalSettings

T = TypeVar("T")
Cluster = Callable[..., list[ServiceProcess]]

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
CHANNEL = "rtc-socketio"  # SignalSettings.socketio_channel
RTCCTL = REPO_ROOT / ".venv" / "bin" / "rtcctl"

# The test cluster's presence timing (helpers.signal_env): TTL 2 s + heartbeat 0.5 s.
OFFLINE_BOUND_SECONDS = 6.0
RECOVERY_BOUND_SECONDS = 15.0


@pytest.fixture
async def aredis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=redis_server.port, socket_timeout=2)
    yield client
    await client.aclose()


def update(wallet: str, online: bool) -> tuple[str, bool]:
    return (wallet, online)


def summary(events: list[Any]) -> list[tuple[str, bool]]:
    return [(event["wallet"], event["online"]) for event in events]


def assert_presence_update(event: Any, wallet: str, online: bool) -> None:
    assert set(event) == {"wallet", "online", "at"}, event
    assert (event["wallet"], event["online"]) == (wallet, online)
    assert ISO_MS.match(event["at"]), event["at"]
    at = datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()
    assert abs(at - time.time()) < 10, event["at"]


async def readyz(server: ServiceProcess) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(server.url + "/readyz") as response,
    ):
        return response.status, await response.json()


# --- 1. presence events across instances ------------------------------------------------------


async def test_presence_updates_across_instances(
    signal_cluster: Cluster, redis_server: RedisServer, aredis: aioredis.Redis, peers: Peers
) -> None:
    s1, s2 = signal_cluster(2)
    a, b, c, d = "0xa1", "0xb1", "0xc1", "0xd1"
    add_contacts(redis_server, a, b)
    add_contacts(redis_server, a, d)  # D: the barrier contact of A
    add_contacts(redis_server, c, d)  # and of C; C is not B's contact

    alice = await peers.connect(s1.url, a)
    assert await alice.next("presence:snapshot") == {"online": []}
    carol = await peers.connect(s2.url, c)
    assert await carol.next("presence:snapshot") == {"online": []}

    # B's first socket (instance 2): A hears it, B gets its snapshot.
    before = time.time()
    bob1 = await peers.connect(s2.url, b)
    assert await bob1.next("presence:snapshot") == {"online": [a]}
    came = await alice.next("presence:update")
    assert_presence_update(came, b, True)
    assert before - 0.01 <= datetime.fromisoformat(came["at"][:-1] + "+00:00").timestamp()

    # Barrier: D comes online; it is the next thing C hears (nothing about B came before it).
    dave = await peers.connect(s1.url, d)
    assert sorted((await dave.next("presence:snapshot"))["online"]) == [a, c]
    assert_presence_update(await carol.next("presence:update"), d, True)
    assert_presence_update(await alice.next("presence:update"), d, True)

    # B's second device, on the other instance: a snapshot, but no new online event for A.
    bob2 = await peers.connect(s1.url, b)
    assert await bob2.next("presence:snapshot") == {"online": [a]}
    assert await aredis.hlen(f"presence:conn:{b}") == 2
    await dave.close()
    assert_presence_update(await alice.next("presence:update"), d, False)  # not B online again
    assert_presence_update(await carol.next("presence:update"), d, False)

    # One of B's devices leaves: B is still online, A hears nothing.
    await bob1.close()

    async def one_bob_socket() -> bool:
        return int(await aredis.hlen(f"presence:conn:{b}")) == 1

    await wait_for_async(one_bob_socket, timeout=5, what="bob1 unregistered")
    dave = await peers.connect(s2.url, d)
    assert_presence_update(await alice.next("presence:update"), d, True)  # not B offline
    assert_presence_update(await carol.next("presence:update"), d, True)

    # B's last device leaves: A hears B go offline.
    await bob2.close()
    assert_presence_update(await alice.next("presence:update"), b, False)

    # A final barrier, then the whole story as each one heard it.
    await dave.close()
    assert_presence_update(await alice.next("presence:update"), d, False)
    assert_presence_update(await carol.next("presence:update"), d, False)
    assert summary(alice.received("presence:update")) == [
        update(b, True),
        update(d, True),
        update(d, False),
        update(d, True),
        update(b, False),
        update(d, False),
    ]
    assert summary(carol.received("presence:update")) == [
        update(d, True),
        update(d, False),
        update(d, True),
        update(d, False),
    ]
    for event, data in carol.events:  # not even a legacy event mentions B
        assert b not in str(data), (event, data)
    assert not await aredis.exists(f"presence:conn:{b}")


# --- 2. legacy presence events ----------------------------------------------------------------


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-on", "legacy-off"])
async def test_legacy_presence_events(
    legacy: bool, signal_cluster: Cluster, redis_server: RedisServer, peers: Peers
) -> None:
    overrides = {} if legacy else {"PRESENCE_LEGACY_ENABLED": "false"}
    s1, s2 = signal_cluster(2, **overrides)
    a, b = "0xa2", "0xb2"
    add_contacts(redis_server, a, b)
    counted = [metric_value(s.url, "rtc_legacy_events_total", 'event="presence"') for s in (s1, s2)]

    alice = await peers.connect(s1.url, a)
    await alice.next("presence:snapshot")
    bob = await peers.connect(s2.url, b)
    assert_presence_update(await alice.next("presence:update"), b, True)
    await bob.close()
    assert_presence_update(await alice.next("presence:update"), b, False)
    # Barrier: B back online; everything about the two earlier changes has arrived by then.
    bob = await peers.connect(s2.url, b)
    assert_presence_update(await alice.next("presence:update"), b, True)

    heard = [(event, data) for event, data in alice.events if event != "presence:update"]
    updates = [event for event, _ in alice.events if event == "presence:update"]
    assert updates == ["presence:update"] * 3

    def legacy_counts() -> list[float]:
        return [
            metric_value(s.url, "rtc_legacy_events_total", 'event="presence"') for s in (s1, s2)
        ]

    if legacy:
        # s2 (where B lives) announced B online, offline, online: one legacy emission each.
        # The counter moves just after the emits, so it is waited for.
        async def three_counted() -> bool:
            return (await asyncio.to_thread(legacy_counts))[1] - counted[1] >= 3

        await wait_for_async(three_counted, timeout=5, what="rtc_legacy_events_total +3")
        after = legacy_counts()
        assert after[1] - counted[1] == 3
        assert after[0] == counted[0]  # A came online with no contact online: nothing sent
        # Each legacy pair follows its presence:update, in order.
        sequence = [event for event, _ in alice.events if event != "presence:snapshot"]
        assert sequence[:6] == [
            "presence:update", "presence", "user_connected",
            "presence:update", "presence", "user_disconnected",
        ]  # fmt: skip
        assert heard[1:5] == [
            ("presence", {"wallet": b, "online": True}),
            ("user_connected", {"wallet": b}),
            ("presence", {"wallet": b, "online": False}),
            ("user_disconnected", {"wallet": b}),
        ]
        assert "deprecated presence events emitted" in s2.log_text()
    else:
        assert heard == [("presence:snapshot", {"online": []})]
        assert legacy_counts() == counted
        assert "deprecated presence events emitted" not in s2.log_text()


# --- 3. an instance killed with -9 ------------------------------------------------------------


def test_default_offline_bound_is_at_most_30_seconds() -> None:
    defaults = load_settings(SignalSettings, {"JWT_SECRET": JWT_SECRET})
    bound = defaults.presence_instance_ttl_seconds + defaults.presence_heartbeat_seconds
    assert (defaults.presence_instance_ttl_seconds, defaults.presence_heartbeat_seconds) == (15, 5)
    assert defaults.presence_heartbeat_seconds < defaults.presence_instance_ttl_seconds
    assert bound <= 30


async def test_instance_killed_reports_offline_within_bound(
    signal_cluster: Cluster, redis_server: RedisServer, aredis: aioredis.Redis, peers: Peers
) -> None:
    s1, s2 = signal_cluster(2)
    a, b = "0xa3", "0xb3"
    add_contacts(redis_server, a, b)
    alice = await peers.connect(s1.url, a)
    await alice.next("presence:snapshot")
    bob = await peers.connect(s2.url, b)
    assert_presence_update(await alice.next("presence:update"), b, True)
    assert await aredis.sismember("presence:instances", "signal2")

    killed_at = time.monotonic()
    await asyncio.to_thread(s2.kill)
    gone = await alice.next("presence:update", timeout=OFFLINE_BOUND_SECONDS + 2)
    latency = time.monotonic() - killed_at
    print(f"\noffline presence:update {latency:.2f} s after kill -9 (TTL 2 s + heartbeat 0.5 s)")
    assert_presence_update(gone, b, False)
    assert latency <= OFFLINE_BOUND_SECONDS
    assert latency >= 1.0  # it came from the reaper (the TTL), not from a live instance

    await asyncio.wait_for(bob.disconnected.wait(), timeout=5)
    assert not await aredis.exists(f"presence:conn:{b}")
    assert not await aredis.exists("presence:inst:signal2:sockets")
    assert not await aredis.sismember("presence:instances", "signal2")
    assert await aredis.hkeys(f"presence:conn:{a}")  # A's own record is untouched
    assert s1.running


async def test_disconnect_while_redis_is_down_is_settled_when_it_returns(
    tmp_path: Path, peers: Peers
) -> None:
    """A socket that leaves while Redis is down cannot be unregistered then; Redis (restarted on
    its AOF) still lists it, so the instance's reconciliation removes it and tells contacts."""
    store = RedisServer(tmp_path / "aof-redis", appendonly=True)
    store.start()
    env = signal_env(store.url)
    servers = [
        ServiceProcess("signal_service", tmp_path / name, {**env, "INSTANCE_ID": name}, name=name)
        for name in ("signal1", "signal2")
    ]
    try:
        for server in servers:
            server.start()
        a, b = "0xa9", "0xb9"
        add_contacts(store, a, b)
        alice = await peers.connect(servers[0].url, a)
        await alice.next("presence:snapshot")
        bob = await peers.connect(servers[1].url, b)
        assert_presence_update(await alice.next("presence:update"), b, True)

        store.kill()
        await bob.close()  # its disconnect cannot reach Redis now
        await asyncio.to_thread(store.start)  # the AOF still lists bob's socket
        gone = await alice.next("presence:update", timeout=RECOVERY_BOUND_SECONDS)
        assert_presence_update(gone, b, False)
        client = store.client()
        assert not client.exists(f"presence:conn:{b}")
        assert client.exists(f"presence:conn:{a}")
    finally:
        for server in servers:
            server.stop()
        store.stop()


# --- 4. Redis restarted mid-session -----------------------------------------------------------


async def test_redis_restart_readiness_and_recovery(
    signal_cluster: Cluster, redis_server: RedisServer, aredis: aioredis.Redis, peers: Peers
) -> None:
    # Long directory cache: same-instance signaling survives the outage on cached answers.
    s1, s2 = signal_cluster(2, FLAG_CACHE_SECONDS="30")
    a, b, e = "0xa4", "0xb4", "0xe4"
    add_contacts(redis_server, a, b)
    add_contacts(redis_server, a, e)
    alice = await peers.connect(s1.url, a)
    erin = await peers.connect(s1.url, e)
    bob = await peers.connect(s2.url, b)
    for peer in (alice, erin, bob):
        await peer.next("presence:snapshot")

    # Warm the caches: one offer on the same instance, one across.
    assert (await alice.call("rtc:offer", offer(a, e, "warm-e")))["ok"] is True
    assert (await erin.next("rtc:offer"))["signalId"] == "warm-e"
    assert (await alice.call("rtc:offer", offer(a, b, "warm-b")))["ok"] is True
    assert (await bob.next("rtc:offer"))["signalId"] == "warm-b"

    await asyncio.to_thread(redis_server.kill)

    # Not ready, naming what fails.
    for server in (s1, s2):
        status, body = await readyz(server)
        assert status == 503, body
        assert body["error"] == "unavailable"
        for check in ("redis", "pubsub"):
            assert body["checks"][check].startswith("failed"), body
            assert check in body["message"], body

    # Same instance: still delivered (cached directory answers, local room).
    ack = await alice.call("rtc:offer", offer(a, e, "during-outage"))
    assert ack == {"ok": True, "signalId": "during-outage"}
    delivered = await erin.next("rtc:offer")
    assert (delivered["from"], delivered["signalId"]) == (a, "during-outage")
    # Across instances it cannot be vouched for: refused, never a silent success.
    ack = await alice.call("rtc:offer", offer(a, b, "cross-outage"))
    assert ack == {"ok": False, "error": "unavailable", "signalId": "cross-outage"}

    await asyncio.to_thread(redis_server.start)
    restarted = time.monotonic()
    assert not await aredis.exists(f"{REDIS_CONTACTS_PREFIX}{a}")  # nothing persisted
    add_contacts(redis_server, a, b)
    add_contacts(redis_server, a, e)

    async def all_ready() -> bool:
        statuses = [await readyz(server) for server in (s1, s2)]
        return all(status == 200 for status, _ in statuses)

    await wait_for_async(all_ready, timeout=RECOVERY_BOUND_SECONDS + 5, what="/readyz 200")
    recovery = time.monotonic() - restarted
    print(f"\n/readyz 200 on both instances {recovery:.2f} s after redis came back")
    assert recovery <= RECOVERY_BOUND_SECONDS
    for server in (s1, s2):
        status, body = await readyz(server)
        assert status == 200
        assert set(body["checks"].values()) == {"ok"}

    # Cross-instance delivery comes back by itself.
    sent: set[str] = set()

    async def offer_crosses() -> bool:
        signal_id = f"after-{len(sent)}"
        sent.add(signal_id)
        ack = await alice.call("rtc:offer", offer(a, b, signal_id))
        if not ack.get("ok"):
            return False
        with contextlib.suppress(TimeoutError):
            while True:
                got = await bob.next("rtc:offer", timeout=1.0)
                if got["signalId"] in sent and got["from"] == a:
                    return True
        return False

    await wait_for_async(offer_crosses, timeout=15, what="cross-instance rtc:offer after restart")
    crossed = time.monotonic() - restarted
    print(f"cross-instance rtc:offer delivered {crossed:.2f} s after redis came back")

    # Presence of the sockets that stayed connected is registered again by the heartbeat.
    async def presence_back() -> bool:
        held = [await aredis.hlen(f"presence:conn:{w}") for w in (a, b, e)]
        return held == [1, 1, 1]

    await wait_for_async(presence_back, timeout=10, what="presence re-registered")
    assert await aredis.smembers("presence:instances") == {b"signal1", b"signal2"}


# --- 5. the pub/sub listener is part of readiness ----------------------------------------------


async def test_readyz_proves_the_pubsub_listener(
    signal_cluster: Cluster, aredis: aioredis.Redis
) -> None:
    (s1,) = signal_cluster(1)
    status, body = await readyz(s1)
    assert status == 200, body
    assert body["checks"]["pubsub"] == "ok"
    assert body["checks"]["redis"] == "ok"
    numsub = dict(await aredis.pubsub_numsub(CHANNEL))
    assert numsub[CHANNEL.encode()] == 1  # the instance's listener is subscribed

    # Drop the subscriber connection behind the instance's back: it subscribes again by itself.
    assert await aredis.client_kill_filter(_type="pubsub") >= 1

    async def resubscribed() -> bool:
        subscribed = dict(await aredis.pubsub_numsub(CHANNEL))[CHANNEL.encode()] == 1
        return subscribed and (await readyz(s1))[0] == 200

    await wait_for_async(resubscribed, timeout=10, what="pub/sub listener back")
    assert (await readyz(s1))[1]["checks"]["pubsub"] == "ok"


# --- 6. graceful stop ---------------------------------------------------------------------------


async def test_graceful_stop_disconnects_and_reports_offline(
    signal_cluster: Cluster, redis_server: RedisServer, aredis: aioredis.Redis, peers: Peers
) -> None:
    s1, s2 = signal_cluster(2)
    a, b = "0xa6", "0xb6"
    add_contacts(redis_server, a, b)
    alice = await peers.connect(s1.url, a)
    await alice.next("presence:snapshot")
    bob = await peers.connect(s2.url, b)
    assert_presence_update(await alice.next("presence:update"), b, True)

    stopping_at = time.monotonic()
    stopping = asyncio.ensure_future(asyncio.to_thread(s2.stop))
    try:
        await asyncio.wait_for(bob.disconnected.wait(), timeout=10)
        gone = await alice.next("presence:update", timeout=OFFLINE_BOUND_SECONDS + 2)
        latency = time.monotonic() - stopping_at
        # Checked on arrival: its `at` is compared with the clock, and the stop goes on meanwhile.
        assert_presence_update(gone, b, False)
    finally:
        await stopping
    stopped_after = time.monotonic() - stopping_at
    print(
        f"\noffline presence:update {latency:.3f} s after SIGTERM;"
        f" the process exited after {stopped_after:.1f} s"
    )
    assert latency <= OFFLINE_BOUND_SECONDS
    assert s2.proc is not None and s2.proc.returncode == 0, s2.log_text()[-2000:]
    assert "Traceback" not in s2.log_text()
    assert not await aredis.exists(f"presence:conn:{b}")
    assert not await aredis.exists("presence:inst:signal2:alive")  # it left on its way out

    async def forgotten() -> bool:  # the next reaper pass of instance 1 drops it
        return not await aredis.sismember("presence:instances", "signal2")

    await wait_for_async(forgotten, timeout=3, what="signal2 removed from presence:instances")


# --- 7. the directory: contacts and the RTC switch ------------------------------------------------


async def test_redis_directory_contacts_and_rtc_switch(redis_server: RedisServer) -> None:
    raw = redis_server.client()
    a, b, c = "0xa7", "0xb7", "0xc7"
    async with opened(directory_settings(REDIS_URL=redis_server.url)) as directory:
        assert isinstance(directory, RedisDirectory)
        assert await directory.mutual_contacts(a) == []
        assert await directory.are_mutual_contacts(a, b) is False

        await directory.add_contact(a, b)  # one direction only: not mutual
        assert raw.smembers(f"{REDIS_CONTACTS_PREFIX}{a}") == {b.encode()}
        assert await directory.are_mutual_contacts(a, b) is False
        assert await directory.are_mutual_contacts(b, a) is False
        assert await directory.mutual_contacts(a) == []
        assert await directory.mutual_contacts(b) == []

        await directory.add_contact(b, a)
        await directory.add_contact(b, a)  # idempotent
        assert await directory.are_mutual_contacts(a, b) is True
        assert await directory.are_mutual_contacts(b, a) is True
        assert await directory.mutual_contacts(a) == [b]
        assert await directory.mutual_contacts(b) == [a]

        await directory.add_contact(a, c)  # A lists C, C does not list A
        assert await directory.mutual_contacts(a) == [b]
        await directory.add_contact(c, a)
        assert await directory.mutual_contacts(a) == [b, c]

        await directory.remove_contact(b, a)
        assert await directory.are_mutual_contacts(a, b) is False
        assert await directory.mutual_contacts(a) == [c]
        assert raw.smembers(f"{REDIS_CONTACTS_PREFIX}{a}") == {b.encode(), c.encode()}

        assert await directory.is_rtc_enabled(a) is True  # absent = enabled
        await directory.set_rtc_enabled(a, False)
        assert await directory.is_rtc_enabled(a) is False
        assert await directory.is_rtc_enabled(b) is True
        assert raw.smembers(REDIS_RTC_DISABLED_KEY) == {a.encode()}
        await directory.set_rtc_enabled(a, True)
        assert await directory.is_rtc_enabled(a) is True
        assert raw.exists(REDIS_RTC_DISABLED_KEY) == 0


@pytest.fixture
def mongo() -> Iterator[MockupDB]:
    server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    server.run()
    yield server
    server.stop()


async def converse(
    server: MockupDB, call: Awaitable[T], *steps: tuple[OpMsg, dict[str, Any]]
) -> tuple[list[dict[str, Any]], T]:
    """Run `call`; answer each command it sends (which must match) in order; its result."""
    task = asyncio.ensure_future(call)
    commands = []
    try:
        for expect, reply in steps:
            request = await asyncio.to_thread(server.receives, expect, timeout=5)
            commands.append(dict(request.doc))
            request.replies(**reply)
        return commands, await asyncio.wait_for(task, 5)
    finally:
        if not task.done():
            task.cancel()


def batch(ns: str, *docs: dict[str, Any]) -> dict[str, Any]:
    return {"cursor": {"id": 0, "firstBatch": list(docs), "ns": ns}}


async def test_mongo_directory_contacts_and_rtc_switch(mongo: MockupDB) -> None:
    url = f"mongodb://127.0.0.1:{mongo.port}/?directConnection=true"
    a, b = "0xa7", "0xb7"
    async with opened(directory_settings(DIRECTORY_URL=url)) as directory:
        assert isinstance(directory, MongoDirectory)

        # are_mutual_contacts: one find per direction, the second only when the first is there
        # (a duplicated document of one direction never stands for the other).
        def direction(owner: str, contact: str) -> dict[str, Any]:
            return {
                "find": "contacts",
                "filter": {"wallet": owner, "contact": contact},
                "projection": {"_id": 1},
                "limit": 1,
                "singleBatch": True,
                "$db": "rtc",
            }

        found = [{"_id": 1}]
        mutual_cases: list[tuple[list[list[dict[str, Any]]], bool]] = [
            ([found, found], True),
            ([found, []], False),  # one direction only
            ([[]], False),
        ]
        for answers, mutual in mutual_cases:
            commands, answer = await converse(
                mongo,
                directory.are_mutual_contacts(a, b),
                *[
                    (OpMsg("find", "contacts", namespace="rtc"), batch("rtc.contacts", *docs))
                    for docs in answers
                ],
            )
            assert commands == [direction(a, b), direction(b, a)][: len(answers)]
            assert answer is mutual

        # is_rtc_enabled: one find on users by wallet; no document or no field = enabled.
        expected_find = {
            "find": "users",
            "filter": {"wallet": a},
            "projection": {"_id": 0, "rtcEnabled": 1},
            "limit": 1,
            "singleBatch": True,
            "$db": "rtc",
        }
        enabled_cases: list[tuple[list[dict[str, Any]], bool]] = [
            ([], True),
            ([{"rtcEnabled": False}], False),
            ([{"rtcEnabled": True}], True),
            ([{}], True),
        ]
        for docs, enabled in enabled_cases:
            commands, answer = await converse(
                mongo,
                directory.is_rtc_enabled(a),
                (OpMsg("find", "users", namespace="rtc"), batch("rtc.users", *docs)),
            )
            assert commands == [expected_find]
            assert answer is enabled

        # mutual_contacts: who A lists, then which of them list A back.
        commands, contacts = await converse(
            mongo,
            directory.mutual_contacts(a),
            (
                OpMsg("find", "contacts", namespace="rtc"),
                batch("rtc.contacts", {"contact": b}, {"contact": "0xc7"}),
            ),
            (
                OpMsg("find", "contacts", namespace="rtc"),
                batch("rtc.contacts", {"wallet": b}),
            ),
        )
        assert [command["filter"] for command in commands] == [
            {"wallet": a},
            {"wallet": {"$in": [b, "0xc7"]}, "contact": a},
        ]
        assert contacts == [b]


async def test_access_cache_caches_within_ttl_and_never_allows_on_failure(
    redis_server: RedisServer,
) -> None:
    a, b = "0xa7", "0xb7"
    clock = FakeClock()
    add_contacts(redis_server, a, b)
    async with opened(directory_settings(REDIS_URL=redis_server.url)) as directory:
        cache = AccessCache(directory, ttl=5, clock=clock)
        assert await cache.are_mutual_contacts(a, b) is True
        assert await cache.mutual_contacts(a) == [b]
        assert await cache.is_rtc_enabled(a) is True

        # Changed behind the cache: the cached answers hold within the ttl...
        redis_server.client().srem(f"{REDIS_CONTACTS_PREFIX}{b}", a)
        redis_server.client().sadd(REDIS_RTC_DISABLED_KEY, a)
        clock.now += 4.9
        assert await cache.are_mutual_contacts(b, a) is True  # same question, either order
        assert await cache.mutual_contacts(a) == [b]
        assert await cache.is_rtc_enabled(a) is True
        # ...and are read again after it.
        clock.now += 0.2
        assert await cache.are_mutual_contacts(a, b) is False
        assert await cache.mutual_contacts(a) == []
        assert await cache.is_rtc_enabled(a) is False

        # Directory down: cached answers within the ttl, then `unavailable`, never an allow.
        add_contacts(redis_server, a, b)
        redis_server.client().srem(REDIS_RTC_DISABLED_KEY, a)
        clock.now += 5.1
        assert await cache.are_mutual_contacts(a, b) is True
        assert await cache.is_rtc_enabled(a) is True
        assert await cache.mutual_contacts(a) == [b]
        await asyncio.to_thread(redis_server.kill)
        clock.now += 1
        assert await cache.are_mutual_contacts(a, b) is True  # still within the ttl
        clock.now += 4.1
        questions: list[Callable[[], Awaitable[Any]]] = [
            lambda: cache.are_mutual_contacts(a, b),
            lambda: cache.mutual_contacts(a),
            lambda: cache.is_rtc_enabled(a),
            lambda: cache.is_rtc_enabled("0xnever"),  # never known either
        ]
        for ask in questions * 2:  # a failure is not remembered as an answer
            with pytest.raises(ApiError) as refused:
                await ask()
            assert (refused.value.code, refused.value.status) == ("unavailable", 503)


# --- 8. rtcctl contacts / rtc ---------------------------------------------------------------------


def test_rtcctl_contacts_and_rtc_switch(redis_server: RedisServer, tmp_path: Path) -> None:
    raw = redis_server.client()
    env = {
        "REDIS_URL": redis_server.url,
        "JWT_SECRET": "x" * 32,
        "RTC_RUN_DIR": str(tmp_path),
        "PATH": os.environ["PATH"],
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RTCCTL), *args], env=env, capture_output=True, text=True, timeout=30, check=False
        )

    def ok(*args: str) -> str:
        result = run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert ok("contacts", "add", "0xA", "0xB") == "0xa <-> 0xb added\n"
    assert raw.smembers("rtc:contacts:0xa") == {b"0xb"}
    assert raw.smembers("rtc:contacts:0xb") == {b"0xa"}
    assert ok("contacts", "list", "0xa") == "0xb\n"
    assert ok("contacts", "list", "0xB") == "0xa\n"

    raw.sadd("rtc:contacts:0xa", "0xc")  # one direction only: not listed
    assert ok("contacts", "list", "0xa") == "0xb\n"

    assert ok("contacts", "remove", "0xa", "0xB") == "0xa <-> 0xb removed\n"
    assert raw.smembers("rtc:contacts:0xa") == {b"0xc"}
    assert raw.exists("rtc:contacts:0xb") == 0
    assert ok("contacts", "list", "0xa") == ""

    same = run("contacts", "add", "0xa", "0xA")
    assert same.returncode == 2
    assert "two different wallets" in same.stderr
    bad = run("contacts", "add", "0xa", "not:a:wallet")
    assert bad.returncode == 2
    assert "not a valid wallet" in bad.stderr

    assert ok("rtc", "status", "0xa") == "0xa\tenabled\n"
    assert ok("rtc", "disable", "0xA") == "RTC disabled for 0xa\n"
    assert raw.smembers("rtc:rtc_disabled") == {b"0xa"}
    assert ok("rtc", "status", "0xa") == "0xa\tdisabled\n"
    assert ok("rtc", "enable", "0xa") == "RTC enabled for 0xa\n"
    assert raw.exists("rtc:rtc_disabled") == 0
    assert ok("rtc", "status", "0xa") == "0xa\tenabled\n"

    redis_server.kill()
    down = run("rtc", "status", "0xa")
    assert down.returncode == 1
    assert down.stderr.startswith("directory unavailable (")
    assert "Traceback" not in down.stderr
