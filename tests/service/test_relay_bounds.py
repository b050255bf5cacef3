"""What one sender can make the relay store hold: bytes per queue, a sender's share of a
recipient's queue (released on ack and on expiry), and how long idempotency keys live.

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
    ack,
    assert_error,
    enqueue,
    pull,
    pulled,
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
