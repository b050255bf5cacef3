"""What one sender can make the relay store hold: bytes per queue, a sender's share of a
recipient's queue (released on ack and on expiry), how long idempotency keys live, and the
sender's rate limit when the store's own script decides it.

In-process relay-service on real redis-servers (the relay store with its append-only file).
"""

from __future__ import annotations

from typing import Any

from conftest import RelayFactory
from rtc_testkit.contract import relay_message
from rtc_testkit.processes import RedisServer, wait_for_async
from rtc_testkit.stack import add_contacts
from test_relay import (
    A,
    B,
    C,
    D,
    ack,
    assert_error,
    enqueue,
    pull,
    pulled,
    queue_length,
)

WEEK_MS = 7 * 24 * 3600 * 1000


async def test_one_sender_holds_at_most_its_share(
    relay_client: RelayFactory, redis_server: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    add_contacts(redis_server, C, B)
    # A quarter of 8 messages: 2 per sender.
    client = await relay_client(RELAY_MAX_QUEUE="8")
    first = await enqueue(client, A, relay_message(A, B, "share-0"))
    assert first.status == 202
    assert (await enqueue(client, A, relay_message(A, B, "share-1"))).status == 202
    over = await enqueue(client, A, relay_message(A, B, "share-2"))
    assert_error(over, 507, "queue_full")
    assert "share" in over.body["message"]
    # Another sender still has room in the same queue.
    assert (await enqueue(client, C, relay_message(C, B, "from-c"))).status == 202
    # Delivered (acked) messages give the share back; nothing was evicted meanwhile.
    assert (await ack(client, B, [first.body["id"]])).body == {"acked": 1}
    assert (await enqueue(client, A, relay_message(A, B, "share-2"))).status == 202
    assert [m["messageId"] for m in await pulled(client, B)] == ["share-1", "from-c", "share-2"]


async def test_queue_bytes_are_bounded(
    relay_client: RelayFactory, redis_server: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    add_contacts(redis_server, C, B)
    client = await relay_client(RELAY_MAX_QUEUE_BYTES="1000", RELAY_MAX_SENDER_SHARE="0.5")
    # UTF-8 bytes count, not characters: 250 x "é" is 500 bytes, all of A's share.
    assert (await enqueue(client, A, relay_message(A, B, "b-0", "é" * 250))).status == 202
    assert_error(await enqueue(client, A, relay_message(A, B, "b-1", "x")), 507, "queue_full")
    c0 = await enqueue(client, C, relay_message(C, B, "c-0", "y" * 400))
    assert c0.status == 202
    # The queue's own bound: 900 of 1000 bytes are held, 101 more do not fit.
    assert_error(await enqueue(client, C, relay_message(C, B, "c-1", "z" * 101)), 507, "queue_full")
    assert (await enqueue(client, C, relay_message(C, B, "c-1", "z" * 100))).status == 202
    assert (await ack(client, B, [c0.body["id"]])).body == {"acked": 1}
    assert (await enqueue(client, C, relay_message(C, B, "c-2", "w" * 400))).status == 202


async def test_expiry_releases_the_share(
    relay_client: RelayFactory, redis_server: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    client = await relay_client(RELAY_MAX_QUEUE="4", RELAY_TTL_SECONDS="1")
    assert (await enqueue(client, A, relay_message(A, B, "e-0"))).status == 202
    assert_error(await enqueue(client, A, relay_message(A, B, "e-1")), 507, "queue_full")

    async def admitted() -> bool:
        return (await enqueue(client, A, relay_message(A, B, "e-1"))).status == 202

    await wait_for_async(admitted, 10, what="the expired message to release its place")
    assert [m["messageId"] for m in await pulled(client, B)] == ["e-1"]


async def test_idempotency_key_outlives_the_ack_only_briefly(
    relay_client: RelayFactory, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    client = await relay_client(RELAY_IDEMPOTENCY_SECONDS="1")
    stored = await enqueue(client, A, relay_message(A, B, "idem"))
    assert stored.status == 202
    key = f"relay:idem:{A}:idem"
    # While queued: as long as the message may live.
    assert relay_redis.client().pttl(key) > WEEK_MS - 60_000
    body: Any = (await pull(client, B)).body
    assert (await ack(client, B, [m["id"] for m in body["messages"]])).body == {"acked": 1}
    assert 0 < relay_redis.client().pttl(key) <= 1000
    repeat = await enqueue(client, A, relay_message(A, B, "idem"))
    assert repeat.status == 200 and repeat.body["duplicate"] is True

    async def forgotten() -> bool:
        return relay_redis.client().exists(key) == 0

    await wait_for_async(forgotten, 10, what="the idempotency key to expire after the ack")
    again = await enqueue(client, A, relay_message(A, B, "idem"))
    assert again.status == 202 and again.body["id"] != stored.body["id"]


def script_keys(server: RedisServer) -> list[list[str]]:
    """The keys of each script call Redis logged (the slow log, logging every command)."""
    calls = []
    for entry in server.client().slowlog_get(1000):
        words = entry["command"].decode(errors="replace").split(" ")
        if words[0].upper() == "EVALSHA":
            calls.append(words[3 : 3 + int(words[2])])
    return calls


async def test_the_enqueue_script_decides_the_rate_limit_when_it_shares_the_redis(
    relay_client: RelayFactory, redis_server: RedisServer
) -> None:
    # Limiter, store and directory on one Redis: one script call per enqueue, limit included.
    add_contacts(redis_server, A, B)
    client = await relay_client(RELAY_REDIS_URL=redis_server.url, RELAY_RATE_LIMIT_PER_MIN="2")
    redis_server.client().config_set("slowlog-log-slower-than", 0)
    redis_server.client().config_set("slowlog-max-len", 1000)
    for n in range(2):
        stored = await enqueue(client, A, relay_message(A, B, f"f-{n}"))
        assert stored.status == 202
        assert stored.headers["RateLimit-Remaining"] == str(1 - n)
    limited = await enqueue(client, A, relay_message(A, B, "f-2"))
    assert_error(limited, 429, "rate_limited")
    assert limited.headers["RateLimit-Limit"] == "2"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    bucket = f"rl:relay:wallet:{A}"
    with_bucket = [keys for keys in script_keys(redis_server) if bucket in keys]
    # No call of the limiter's own script: each call with the bucket is an enqueue (a first
    # call may be logged twice: refused NOSCRIPT, then run).
    assert with_bucket and all(f"relay:q:{B}" in keys for keys in with_bucket), with_bucket
    assert {keys[0] for keys in with_bucket} == {f"relay:idem:{A}:f-{n}" for n in range(3)}
    assert queue_length(redis_server, B) == 2
    # A repeat of a stored message counts too, and is refused without being looked at.
    assert_error(await enqueue(client, A, relay_message(A, B, "f-0")), 429, "rate_limited")


async def test_the_limit_comes_before_each_directory_read(
    relay_client: RelayFactory, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    # Limiter and store on one Redis, the directory elsewhere: a message to a wallet whose
    # answer is not cached is limited before the directory is asked (the hostile account that
    # writes to many strangers), and a cached answer leaves the limit to the script.
    client = await relay_client(
        REDIS_URL=relay_redis.url,
        RELAY_REDIS_URL=relay_redis.url,
        DIRECTORY_URL=redis_server.url,
        RELAY_RATE_LIMIT_PER_MIN="3",
    )
    strangers = [f"0x5{n:04x}" for n in range(8)]
    statuses = [
        (await enqueue(client, A, relay_message(A, to, "hello"))).status for to in strangers
    ]
    assert statuses == [403] * 3 + [429] * 5

    add_contacts(redis_server, C, D)
    first = await enqueue(client, C, relay_message(C, D, "c-0"))  # not cached: limited first
    assert first.status == 202
    for n in (1, 2):  # cached: the script decides, in the same bucket
        assert (await enqueue(client, C, relay_message(C, D, f"c-{n}"))).status == 202
    assert_error(await enqueue(client, C, relay_message(C, D, "c-3")), 429, "rate_limited")
    assert queue_length(relay_redis, D) == 3
