"""relay-service as the contract states it: enqueue, pull and ack (with the OpenAPI document kept
true), the online push through signal-service, authorization, limits, the store going down, and
hostile input.

Real components throughout: redis-server for the shared Redis (rate limits, pub/sub, directory),
a second redis-server with an append-only file as the relay store, relay-service in process (or
as a process for the hypothesis run) and signal-service processes for the push.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp.test_utils import TestClient
from helpers import app_routes, documented_routes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDictProxy
from prometheus_client import REGISTRY
from relay_service.app import create_app
from relay_service.settings import RelaySettings
from rtc_common.settings import load_settings
from rtc_testkit.contract import bearer, conv_id, make_token, relay_message
from rtc_testkit.peer import Peers
from rtc_testkit.processes import RedisServer, ServiceProcess, wait_for_async
from rtc_testkit.stack import add_contacts, base_env

OPENAPI = json.loads(
    (Path(__file__).resolve().parents[2] / "services/relay/relay_service/openapi.json").read_text()
)
V1 = "/api/v1/relay"
LEGACY = "/api/relay"
A, B, C, D = "0xa11ce", "0xb0b", "0xc0ffee", "0xd00d"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
STREAM_ID = re.compile(r"^\d+-\d+$")
# The contract's error codes and their HTTP statuses (written out here, not imported).
STATUS_OF_CODE = {
    "unauthorized": 401,
    "csrf_failed": 403,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "invalid_payload": 400,
    "payload_too_large": 413,
    "rate_limited": 429,
    "queue_full": 507,
    "unavailable": 503,
}
KNOWN_CODES = set(OPENAPI["components"]["schemas"]["Error"]["properties"]["error"]["enum"])

RelayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


# -- helpers ---------------------------------------------------------------------------------


def with_components(schema: dict[str, Any]) -> dict[str, Any]:
    # Resolve $refs against the whole document.
    return {**schema, "components": OPENAPI["components"]}


def schema(name: str) -> dict[str, Any]:
    return with_components({"$ref": f"#/components/schemas/{name}"})


def check_documented(path: str, method: str, status: int, body: Any) -> None:
    """The answer is one the OpenAPI document lists for the operation, and has its schema."""
    responses = OPENAPI["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path}: undocumented {status}: {body!r}"
    response = responses[str(status)]
    if "$ref" in response:
        response = OPENAPI["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    content = response.get("content")
    if content:
        jsonschema.validate(body, with_components(content["application/json"]["schema"]))
    if status >= 400:
        assert body["error"] in KNOWN_CODES
        assert STATUS_OF_CODE[body["error"]] == status, body
        assert body["message"] and body["requestId"]


def expected_queued_at(stream_id: str) -> str:
    ms = int(stream_id.split("-")[0])
    stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def id_key(stream_id: str) -> tuple[int, int]:
    left, right = stream_id.split("-")
    return int(left), int(right)


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]


_UNSET: Any = object()


async def call(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    wallet: str | None = None,
    *,
    body: Any = _UNSET,
    data: bytes | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request; its answer is checked against the OpenAPI document before it is returned."""
    all_headers = {**(bearer(wallet) if wallet else {}), **(headers or {})}
    kwargs: dict[str, Any] = {"headers": all_headers, "params": params}
    if body is not _UNSET:
        kwargs["data"] = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    elif data is not None:
        kwargs["data"] = data
    response = await client.request(method, path, **kwargs)
    answer = await response.json()
    check_documented(path, method.lower(), response.status, answer)
    return Reply(response.status, answer, response.headers)


async def enqueue(client: TestClient[Any, Any], sender: str, body: Any, prefix: str = V1) -> Reply:
    return await call(client, "POST", f"{prefix}/enqueue", sender, body=body)


async def pull(
    client: TestClient[Any, Any], wallet: str, limit: int | str | None = None, prefix: str = V1
) -> Reply:
    params = None if limit is None else {"limit": str(limit)}
    return await call(client, "GET", f"{prefix}/pull", wallet, params=params)


async def pulled(client: TestClient[Any, Any], wallet: str) -> list[dict[str, Any]]:
    reply = await pull(client, wallet, 100)
    assert reply.status == 200, reply.body
    messages: list[dict[str, Any]] = reply.body["messages"]
    return messages


async def ack(client: TestClient[Any, Any], wallet: str, ids: Any, prefix: str = V1) -> Reply:
    return await call(client, "POST", f"{prefix}/ack", wallet, body={"ids": ids})


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    jsonschema.validate(reply.body, schema("Error"))
    assert reply.body["error"] == code, reply.body


def queue_length(store: RedisServer, wallet: str) -> int:
    return int(store.client().xlen(f"relay:q:{wallet}"))


def enqueued_metric(result: str, forced: str) -> float:
    value = REGISTRY.get_sample_value(
        "rtc_relay_enqueued_total", {"result": result, "forced": forced}
    )
    return value or 0.0


# -- fixtures --------------------------------------------------------------------------------


# -- 1. enqueue, duplicate, force, order, pull, ack, aliases, OpenAPI -------------------------


async def test_enqueue_pull_ack_round_trip(
    relay_client: RelayFactory, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    add_contacts(redis_server, C, B)
    client = await relay_client()

    first = await enqueue(client, A, relay_message(A, B, "m-1", "hello"))
    assert first.status == 202, first.body
    jsonschema.validate(first.body, schema("Enqueued"))
    assert first.body["ok"] is True
    assert first.body["messageId"] == "m-1"
    assert first.body["forced"] is False
    assert "duplicate" not in first.body
    assert STREAM_ID.match(first.body["id"])
    assert ISO_MS.match(first.body["queuedAt"])
    assert first.body["queuedAt"] == expected_queued_at(first.body["id"])
    queued = datetime.strptime(first.body["queuedAt"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs(queued.replace(tzinfo=UTC).timestamp() - time.time()) < 30

    # The same sender and messageId again (even with another payload): the first id, 200.
    again = await enqueue(client, A, relay_message(A, B, "m-1", "changed"))
    assert again.status == 200, again.body
    assert again.body["id"] == first.body["id"]
    assert again.body["duplicate"] is True
    assert again.body["queuedAt"] == first.body["queuedAt"]
    assert queue_length(relay_redis, B) == 1

    # force: true is echoed and counted; a repeat reports the stored value.
    stored_forced = enqueued_metric("stored", "true")
    duplicate_forced = enqueued_metric("duplicate", "true")
    forced = await enqueue(client, C, relay_message(C, B, "f-1", "forced one", force=True))
    assert forced.status == 202, forced.body
    assert forced.body["forced"] is True
    assert enqueued_metric("stored", "true") == stored_forced + 1
    forced_again = await enqueue(client, C, relay_message(C, B, "f-1", "forced one", force=False))
    assert forced_again.status == 200
    assert forced_again.body["forced"] is True and forced_again.body["duplicate"] is True
    assert enqueued_metric("stored", "true") == stored_forced + 1
    assert enqueued_metric("duplicate", "true") == duplicate_forced + 1

    # Interleaved senders, one through the legacy alias: pulled oldest first.
    ids = [first.body["id"], forced.body["id"]]
    for sender, message_id, prefix in [(A, "m-2", V1), (C, "c-2", LEGACY), (A, "m-3", V1)]:
        reply = await enqueue(
            client, sender, relay_message(sender, B, message_id, message_id), prefix
        )
        assert reply.status == 202, reply.body
        ids.append(reply.body["id"])
    assert ids == sorted(ids, key=id_key) and len(set(ids)) == 5
    assert queue_length(relay_redis, B) == 5

    page = await pull(client, B, 2)
    assert page.status == 200
    assert [m["id"] for m in page.body["messages"]] == ids[:2]
    assert page.body["more"] is True

    everything = await pull(client, B)
    assert everything.body["more"] is False
    messages = everything.body["messages"]
    assert [(m["from"], m["messageId"]) for m in messages] == [
        (A, "m-1"), (C, "f-1"), (A, "m-2"), (C, "c-2"), (A, "m-3"),
    ]  # fmt: skip
    assert messages[0] == {
        "id": first.body["id"],
        "from": A,
        "convId": conv_id(A, B),
        "messageId": "m-1",
        "payload": "hello",  # the first payload: the repeat stored nothing
        "queuedAt": first.body["queuedAt"],
        "forced": False,
    }
    assert messages[1]["forced"] is True and messages[1]["convId"] == conv_id(B, C)
    assert all(not m["forced"] for m in messages[2:])
    # Pulling does not consume: at-least-once until acked.
    assert [m["id"] for m in (await pull(client, B, 2)).body["messages"]] == ids[:2]

    acked = await ack(client, B, [*ids[:2], ids[0], "1-1", "not-an-id"])
    assert acked.status == 200 and acked.body == {"acked": 2}
    rest = await pull(client, B, prefix=LEGACY)
    assert [m["id"] for m in rest.body["messages"]] == ids[2:]
    assert (await ack(client, B, ids[2:], prefix=LEGACY)).body == {"acked": 3}
    empty = await pull(client, B)
    assert empty.body == {"messages": [], "more": False}
    assert queue_length(relay_redis, B) == 0
    assert (await ack(client, B, ids)).body == {"acked": 0}


async def test_openapi_matches_routes(relay_client: RelayFactory) -> None:
    client = await relay_client()
    served = await client.get("/api/v1/relay/openapi.json")
    assert served.status == 200
    assert await served.json() == OPENAPI
    settings = load_settings(RelaySettings, {"JWT_SECRET": "x" * 40})
    assert app_routes(create_app(settings)) == documented_routes(OPENAPI)
    for name in ("Enqueued", "RelayMessage", "Error", "EnqueueRequest"):
        jsonschema.Draft202012Validator.check_schema(schema(name))
    # A well-formed request (force included) is valid under the documented request schema.
    request_schema = OPENAPI["paths"]["/api/v1/relay/enqueue"]["post"]["requestBody"]
    jsonschema.validate(
        relay_message(A, B, "x", force=True),
        with_components(request_schema["content"]["application/json"]["schema"]),
    )


# -- 2. online push across instances ---------------------------------------------------------


async def test_online_push_across_instances(
    signal_cluster: Callable[..., list[ServiceProcess]],
    relay_client: RelayFactory,
    redis_server: RedisServer,
    relay_redis: RedisServer,
    peers: Peers,
) -> None:
    add_contacts(redis_server, A, B)
    add_contacts(redis_server, C, A)
    first_instance, second_instance = signal_cluster(2, RELAY_REDIS_URL=relay_redis.url)
    client = await relay_client()

    phone = await peers.connect(second_instance.url, B)  # B's sockets on both instances
    laptop = await peers.connect(first_instance.url, B)
    bystander = await peers.connect(second_instance.url, C)

    sent = await enqueue(client, A, relay_message(A, B, "push-1", "over the socket", force=True))
    assert sent.status == 202, sent.body
    pushed = await phone.next("relay:message", 10)
    on_laptop = await laptop.next("relay:message", 10)
    jsonschema.validate(pushed, schema("RelayMessage"))
    assert pushed == on_laptop

    queued = await pulled(client, B)
    assert queued == [pushed]  # the same fields as pull
    assert pushed["id"] == sent.body["id"] and pushed["from"] == A and pushed["forced"] is True

    # Someone else's ack through the socket touches nothing; B's own acks it.
    assert await bystander.call("relay:ack", {"ids": [pushed["id"]]}, timeout=10) == {"acked": 0}
    assert not bystander.unread("relay:message")
    assert await phone.call("relay:ack", {"ids": [pushed["id"]]}, timeout=10) == {"acked": 1}
    assert await pulled(client, B) == []
    assert queue_length(relay_redis, B) == 0
    assert await laptop.call("relay:ack", {"ids": [pushed["id"]]}, timeout=10) == {"acked": 0}


def pushed_metric() -> float:
    return REGISTRY.get_sample_value("rtc_relay_pushed_total") or 0.0


async def test_pushes_leave_in_stored_order_and_are_counted(
    signal_cluster: Callable[..., list[ServiceProcess]],
    relay_client: RelayFactory,
    redis_server: RedisServer,
    relay_redis: RedisServer,
    peers: Peers,
) -> None:
    """Pushes leave after the answer, batched: one per stored message, in the order of the 202s."""
    add_contacts(redis_server, A, B)
    (instance,) = signal_cluster(1, RELAY_REDIS_URL=relay_redis.url)
    client = await relay_client()
    phone = await peers.connect(instance.url, B)
    pushed_before = pushed_metric()

    # Concurrent enqueues share batches (limiter, store, publish); then one at a time.
    burst = await asyncio.gather(
        *(enqueue(client, A, relay_message(A, B, f"burst-{i}")) for i in range(40))
    )
    assert all(reply.status == 202 for reply in burst), [r.body for r in burst]
    for i in range(5):
        assert (await enqueue(client, A, relay_message(A, B, f"single-{i}"))).status == 202
    duplicate = await enqueue(client, A, relay_message(A, B, "single-0"))
    assert duplicate.status == 200  # a duplicate is not pushed again

    received = [await phone.next("relay:message", 10) for _ in range(45)]
    # Concurrent requests have no order between them; each stored message is pushed once.
    assert sorted(m["id"] for m in received[:40]) == sorted(reply.body["id"] for reply in burst)
    # A message stored after another's 202 is pushed after it.
    assert [m["messageId"] for m in received[40:]] == [f"single-{i}" for i in range(5)]
    assert pushed_metric() - pushed_before == 45
    assert sorted(m["id"] for m in await pulled(client, B)) == sorted(m["id"] for m in received)
    assert not phone.unread("relay:message")


# -- 3. offline recipient --------------------------------------------------------------------


async def test_offline_recipient_pulls_later(
    signal_cluster: Callable[..., list[ServiceProcess]],
    relay_client: RelayFactory,
    redis_server: RedisServer,
    relay_redis: RedisServer,
    peers: Peers,
) -> None:
    add_contacts(redis_server, A, B)
    (instance,) = signal_cluster(1, RELAY_REDIS_URL=relay_redis.url)
    client = await relay_client()

    sent = []
    for n in range(3):
        reply = await enqueue(client, A, relay_message(A, B, f"offline-{n}", f"payload {n}"))
        assert reply.status == 202, reply.body  # stored although nobody listens
        sent.append(reply.body["id"])

    socket = await peers.connect(instance.url, B)
    waiting = await pulled(client, B)
    assert [m["id"] for m in waiting] == sent
    assert [m["payload"] for m in waiting] == ["payload 0", "payload 1", "payload 2"]
    assert await socket.call("relay:ack", {"ids": sent[:1]}, timeout=10) == {"acked": 1}
    assert (await ack(client, B, sent)).body == {"acked": 2}
    assert await pulled(client, B) == []
    assert queue_length(relay_redis, B) == 0


# -- 4. authorization ------------------------------------------------------------------------


async def test_authorization(
    relay_client: RelayFactory, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    redis_server.client().sadd(f"rtc:contacts:{D}", B)  # D lists B, B does not list D
    client = await relay_client()
    ids = []
    for n in range(2):
        reply = await enqueue(client, A, relay_message(A, B, f"secret-{n}", "for B only"))
        assert reply.status == 202
        ids.append(reply.body["id"])

    # C sees only its own (empty) queue and cannot ack B's messages.
    assert (await pull(client, C)).body == {"messages": [], "more": False}
    assert (await ack(client, C, ids)).body == {"acked": 0}
    assert [m["id"] for m in await pulled(client, B)] == ids
    # A (the sender) cannot ack them from the recipient's queue either.
    assert (await ack(client, A, ids)).body == {"acked": 0}
    assert queue_length(relay_redis, B) == 2

    # Not contacts, or contacts in one direction only: forbidden and nothing stored.
    for sender, to in [(C, B), (B, C), (D, B), (B, D)]:
        refused = await enqueue(client, sender, relay_message(sender, to, "nope"))
        assert_error(refused, 403, "forbidden")
    assert queue_length(relay_redis, B) == 2
    assert queue_length(relay_redis, C) == 0 and queue_length(relay_redis, D) == 0
    assert list(relay_redis.client().scan_iter("relay:idem:*nope")) == []

    # Without (valid) credentials: 401 on every route, nothing stored or acked.
    expired = {"Authorization": f"Bearer {make_token(A, expires_in=-60)}"}
    wrong_key = {"Authorization": f"Bearer {make_token(A, secret='another-secret-' * 3)}"}
    for headers in [{}, {"Authorization": "Bearer junk"}, expired, wrong_key]:
        for method, path, body in [
            ("POST", f"{V1}/enqueue", relay_message(A, B, "anon")),
            ("GET", f"{V1}/pull", _UNSET),
            ("POST", f"{LEGACY}/ack", {"ids": ids}),
        ]:
            reply = await call(client, method, path, body=body, headers=headers)
            assert_error(reply, 401, "unauthorized")
    assert [m["id"] for m in await pulled(client, B)] == ids

    # Cookie auth needs the CSRF double-submit, GET included.
    cookies = {"Cookie": f"access_token={make_token(B)}; csrf_token=csrf-value"}
    refused = await call(client, "GET", f"{V1}/pull", headers=cookies)
    assert_error(refused, 403, "csrf_failed")
    with_csrf = await call(
        client, "GET", f"{V1}/pull", headers={**cookies, "X-CSRF-Token": "csrf-value"}
    )
    assert [m["id"] for m in with_csrf.body["messages"]] == ids


# -- 5. limits and validation ----------------------------------------------------------------


async def test_payload_limit_counts_utf8_bytes(
    relay_client: RelayFactory, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    client = await relay_client(RELAY_MAX_PAYLOAD_BYTES="100")
    cases = [
        ("x" * 100, 202),
        ("x" * 101, 413),
        ("é" * 50, 202),  # 50 characters, 100 bytes
        ("é" * 51, 413),  # 51 characters, 102 bytes
        ("€" * 34, 413),  # 34 characters, 102 bytes
        ("😀" * 25, 202),  # 25 characters, 100 bytes
        ("😀" * 26, 413),
        ("", 202),
    ]
    stored = 0
    for n, (payload, status) in enumerate(cases):
        reply = await enqueue(client, A, relay_message(A, B, f"size-{n}", payload))
        if status == 202:
            assert reply.status == 202, (len(payload), reply.body)
            stored += 1
        else:
            assert_error(reply, 413, "payload_too_large")
    assert queue_length(relay_redis, B) == stored
    # A body far over the limit is refused whole, with the same envelope.
    huge = await enqueue(client, A, relay_message(A, B, "huge", "x" * 2_000_000))
    assert_error(huge, 413, "payload_too_large")
    assert queue_length(relay_redis, B) == stored


async def test_queue_full_evicts_nothing(
    relay_client: RelayFactory, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    add_contacts(redis_server, C, B)
    client = await relay_client(RELAY_MAX_QUEUE="3", RELAY_MAX_SENDER_SHARE="1")
    ids = []
    for n in range(3):
        reply = await enqueue(client, A, relay_message(A, B, f"q-{n}"))
        assert reply.status == 202
        ids.append(reply.body["id"])
    for sender in (A, C):
        full = await enqueue(client, sender, relay_message(sender, B, "q-over"))
        assert_error(full, 507, "queue_full")
    # A repeat of a stored message is still answered as such.
    repeat = await enqueue(client, A, relay_message(A, B, "q-0"))
    assert repeat.status == 200 and repeat.body["id"] == ids[0]
    assert [m["messageId"] for m in await pulled(client, B)] == ["q-0", "q-1", "q-2"]
    # Other recipients' queues are not affected.
    assert (await enqueue(client, B, relay_message(B, A, "to-a"))).status == 202
    # The refused messageId was not remembered: once there is room, it is stored.
    assert (await ack(client, B, ids[:1])).body == {"acked": 1}
    retry = await enqueue(client, A, relay_message(A, B, "q-over"))
    assert retry.status == 202 and "duplicate" not in retry.body
    assert [m["messageId"] for m in await pulled(client, B)] == ["q-1", "q-2", "q-over"]


async def test_rate_limit_per_sender(
    relay_client: RelayFactory, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    add_contacts(redis_server, C, B)
    client = await relay_client(RELAY_RATE_LIMIT_PER_MIN="2")
    for n in range(2):
        assert (await enqueue(client, A, relay_message(A, B, f"r-{n}"))).status == 202
    limited = await enqueue(client, A, relay_message(A, B, "r-2"))
    assert_error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["RateLimit-Limit"] == "2"
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert queue_length(relay_redis, B) == 2
    # Per sender: C has its own budget.
    assert (await enqueue(client, C, relay_message(C, B, "r-c"))).status == 202
    assert [m["messageId"] for m in await pulled(client, B)] == ["r-0", "r-1", "r-c"]


async def test_ttl_expires_message_and_idempotency_key(
    relay_client: RelayFactory, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    client = await relay_client(RELAY_TTL_SECONDS="1")
    first = await enqueue(client, A, relay_message(A, B, "short-lived"))
    assert first.status == 202
    idem_key = f"relay:idem:{A}:short-lived"
    assert relay_redis.client().exists(idem_key) == 1
    assert 0 < relay_redis.client().pttl(idem_key) <= 1000

    async def pull_is_empty() -> bool:
        return await pulled(client, B) == []

    await wait_for_async(pull_is_empty, timeout=10, what="the message to expire")

    async def key_expired() -> bool:
        return relay_redis.client().exists(idem_key) == 0

    await wait_for_async(key_expired, timeout=10, what="the idempotency key to expire")
    # The messageId is new again: stored under a new id, not answered as a duplicate.
    again = await enqueue(client, A, relay_message(A, B, "short-lived"))
    assert again.status == 202, again.body
    assert "duplicate" not in again.body
    assert id_key(again.body["id"]) > id_key(first.body["id"])


async def test_invalid_enqueue(
    relay_client: RelayFactory, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    client = await relay_client()
    valid = relay_message(A, B, "m")

    def without(field: str) -> dict[str, Any]:
        return {k: v for k, v in valid.items() if k != field}

    raw_cases: list[tuple[str, bytes]] = [
        ("bad json", b'{"to": "0xb0b",'),
        ("empty body", b""),
        ("not utf-8", b"\xff\xfe\x00"),
        ("lone surrogate payload", json.dumps({**valid, "payload": "\ud800"}).encode()),
        ("deep nesting", b"[" * 100_000),
        ("deep object", b'{"a":' * 50_000),
    ]
    json_cases: list[tuple[str, Any]] = [
        ("array", [valid]),
        ("string", "hello"),
        ("number", 42),
        ("null", None),
        *[(f"missing {field}", without(field)) for field in ("to", "convId", "messageId")],
        ("missing payload", without("payload")),
        ("to not a string", {**valid, "to": 123}),
        ("convId null", {**valid, "convId": None}),
        ("messageId a number", {**valid, "messageId": 5}),
        ("payload an object", {**valid, "payload": {"text": "hi"}}),
        ("payload a list", {**valid, "payload": ["hi"]}),
        ("force a string", {**valid, "force": "yes"}),
        ("force a number", {**valid, "force": 1}),
        ("convId reversed", {**valid, "convId": f"{B}:{A}"}),
        ("convId not normalized", {**valid, "convId": f"{A.upper()}:{B}".replace("0X", "0x")}),
        ("convId of another pair", {**valid, "convId": conv_id(A, C)}),
        ("convId with a third part", {**valid, "convId": conv_id(A, B) + ":x"}),
        ("to the sender", {**valid, "to": A, "convId": f"{A}:{A}"}),
        ("to not a wallet", {**valid, "to": "b:ob", "convId": conv_id(A, "b:ob")}),
        ("to empty", {**valid, "to": "", "convId": conv_id(A, "")}),
        ("messageId over 128", {**valid, "messageId": "m" * 129}),
        ("messageId empty", {**valid, "messageId": ""}),
        ("messageId lone surrogate", {**valid, "messageId": "\udc00"}),
    ]
    cases = [(name, data) for name, data in raw_cases] + [
        (name, json.dumps(body).encode()) for name, body in json_cases
    ]
    for name, data in cases:
        reply = await call(
            client,
            "POST",
            f"{V1}/enqueue",
            A,
            data=data,
            headers={"Content-Type": "application/json"},
        )
        assert reply.status == 400, (name, reply.body)
        assert_error(reply, 400, "invalid_payload")
    assert queue_length(relay_redis, B) == 0
    assert list(relay_redis.client().scan_iter("relay:idem:*")) == []

    # The boundaries that are valid: a 128-character messageId, and a 0x wallet in capitals
    # (the server normalizes it; the convId is on the normalized wallets).
    longest = await enqueue(client, A, {**valid, "messageId": "m" * 128})
    assert longest.status == 202, longest.body
    capitals = await enqueue(client, A, {**valid, "to": "0xB0B", "messageId": "caps"})
    assert capitals.status == 202, capitals.body
    assert [m["messageId"] for m in await pulled(client, B)] == ["m" * 128, "caps"]


async def test_invalid_pull_and_ack(relay_client: RelayFactory, redis_server: RedisServer) -> None:
    add_contacts(redis_server, A, B)
    client = await relay_client()
    for limit in [
        "0",
        "101",
        "abc",
        "-1",
        "",
        "1.5",
        " 5",
        "5 ",
        "0x10",
        "\u00b2",
        "\u0661",
        "1" * 5000,
    ]:
        reply = await pull(client, B, limit)
        assert reply.status == 400, (limit[:20], reply.body)
        assert_error(reply, 400, "invalid_payload")
    for limit in ("1", "100", "007"):
        assert (await pull(client, B, limit)).status == 200

    stored = await enqueue(client, A, relay_message(A, B, "keep"))
    bad_bodies: list[Any] = [
        {"ids": "1-1"},
        {"ids": None},
        {"ids": [1]},
        {"ids": {"0": "1-1"}},
        {"ids": ["x" * 65]},
        {"ids": ["1-1"] * 1001},
        {},
        [stored.body["id"]],
        "ids",
    ]
    for body in bad_bodies:
        reply = await call(client, "POST", f"{V1}/ack", B, body=body)
        assert_error(reply, 400, "invalid_payload")
    for data in (b"{", b"", b"\xff", b'{"ids": ["\\ud800"]}'):
        reply = await call(client, "POST", f"{V1}/ack", B, data=data)
        assert_error(reply, 400, "invalid_payload")
    # Ids that are not stream ids (or out of range) are ignored, not errors.
    odd = await ack(client, B, [], prefix=LEGACY)
    assert odd.body == {"acked": 0}
    odd_ids = [
        "garbage",
        "99999999999999999999-1",
        "1-18446744073709551616",
        "-1",
        "1-",
        "\u0661-\u0661",
    ]
    odd = await ack(client, B, [*odd_ids, f"{stored.body['id']}\n"])
    assert odd.status == 200 and odd.body == {"acked": 0}
    assert [m["id"] for m in await pulled(client, B)] == [stored.body["id"]]


# -- 6. the store goes down and comes back ---------------------------------------------------


async def test_store_down_is_unavailable_then_recovers(
    relay_client: RelayFactory, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    client = await relay_client()
    before = await enqueue(client, A, relay_message(A, B, "before-crash"))
    assert before.status == 202
    assert (await client.get("/readyz")).status == 200

    relay_redis.kill()
    for _ in range(3):  # retries with the same messageId: never a 2xx while nothing is stored
        down = await enqueue(client, A, relay_message(A, B, "during-outage", "must not be lost"))
        assert_error(down, 503, "unavailable")
    assert_error(await pull(client, B), 503, "unavailable")
    assert_error(await ack(client, B, [before.body["id"]]), 503, "unavailable")
    ready = await client.get("/readyz")
    assert ready.status == 503
    body = await ready.json()
    assert body["error"] == "unavailable" and "relay_store" in body["message"]
    assert body["checks"]["relay_store"] != "ok"
    deps = await (await client.get("/healthz/deps")).json()
    assert deps["ready"] is False
    assert deps["dependencies"]["relay_store"]["state"] == "down"
    assert deps["dependencies"]["relay_store"]["required"] is True
    assert deps["dependencies"]["redis"]["state"] == "up"
    # Validation still answers first: a bad request is a 400, not a 503.
    assert_error(await pull(client, B, "0"), 400, "invalid_payload")

    relay_redis.start()  # same port, same data directory (append-only file)

    async def ready_again() -> bool:
        return (await client.get("/readyz")).status == 200

    await wait_for_async(ready_again, timeout=15, what="relay-service ready again")
    retried = await enqueue(client, A, relay_message(A, B, "during-outage", "must not be lost"))
    assert retried.status == 202, retried.body
    repeat = await enqueue(client, A, relay_message(A, B, "during-outage", "must not be lost"))
    assert repeat.status == 200 and repeat.body["id"] == retried.body["id"]
    messages = await pulled(client, B)
    # What was acknowledged before the kill survived it; the retried message is there once.
    assert [m["messageId"] for m in messages] == ["before-crash", "during-outage"]
    assert messages[0]["id"] == before.body["id"]
    assert (await ack(client, B, [m["id"] for m in messages])).body == {"acked": 2}
    assert await pulled(client, B) == []


# -- 7. hostile input ------------------------------------------------------------------------

_chars = st.characters(categories=["Cs", "Cc", "Lu", "Ll", "Nd", "No", "Zs", "So", "Po"])
_text = st.text(max_size=40) | st.text(_chars, max_size=40)
_huge = st.builds(
    lambda n, unit: unit * n, st.integers(1000, 120_000), st.sampled_from(["x", "é", "😀", "\\"])
)
_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | _text
)
json_values = st.recursive(
    _leaf | _huge,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=12,
)
_fieldish = st.sampled_from(["to", "convId", "messageId", "payload", "force", "ids"]) | _text
# Well-formed but for the free-form fields: stored (202), repeated (200) or refused (400, 413).
near_valid = st.fixed_dictionaries(
    {
        "to": st.sampled_from([B, "0xB0B", " 0xb0b "]),
        "convId": st.just(conv_id(A, B)),
        "messageId": st.uuids().map(str) | _text,
        "payload": st.text(_chars, max_size=20) | _text | _huge,
    },
    optional={"force": st.booleans() | json_values, "extra": json_values},
)
enqueue_bodies = st.one_of(
    near_valid,
    json_values,
    st.dictionaries(_fieldish, json_values, max_size=6),
    st.fixed_dictionaries(
        {},
        optional={
            "to": st.sampled_from([B, A, C, "0xB0B", "", "b:ob"]) | json_values,
            "convId": st.sampled_from([conv_id(A, B), f"{B}:{A}", conv_id(A, C)]) | json_values,
            "messageId": _text | json_values,
            "payload": _text | _huge | json_values,
            "force": st.booleans() | json_values,
        },
    ),
)
ack_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"ids": st.lists(st.from_regex(r"\A\d{1,22}-\d{1,22}\Z") | _text, max_size=20)}
    ),
    st.fixed_dictionaries({"ids": json_values}),
)

# Digits of any script (Nd) and other numerals like "²" (No), and numbers too long for int().
_digits = st.one_of(
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=4),
    st.integers(1, 6000).map(lambda n: "9" * n),
)


def _quote(text: str, safe: str = "") -> str:
    # Lone surrogates go out as their (invalid) UTF-8 bytes, percent-encoded.
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe=safe)


queries = st.one_of(
    st.dictionaries(st.sampled_from(["limit", "LIMIT", "cursor"]) | _text, _text, max_size=4).map(
        lambda params: "&".join(f"{_quote(k)}={_quote(v)}" for k, v in params.items())
    ),
    st.builds(lambda v: "limit=" + _quote(v), _text | st.integers().map(str) | _digits),
    _text.map(lambda raw: _quote(raw, safe="=&%+;")),
)
# Large random bodies, cheaper to make than st.binary of that size.
_big_junk = st.builds(
    lambda seed, size: random.Random(seed).randbytes(size),
    st.integers(0, 2**32),
    st.integers(60_000, 500_000),
)
# JSON nested deeper than a decoder's stack.
_nested = st.builds(
    lambda opener, depth: opener * depth,
    st.sampled_from([b"[", b'{"a":', b'{"ids":[']),
    st.integers(1, 200_000),
)
content_types = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", None]
)
HYPOTHESIS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def raw_request(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def assert_sound(port: int, method: str, path: str, body: bytes | None, headers: Any) -> int:
    status, raw = raw_request(port, method, path, body, headers)
    assert status < 500, (status, raw[:300])
    answer = json.loads(raw)
    check_documented(path.split("?", 1)[0], method.lower(), status, answer)
    return status


def test_hostile_input_never_500(
    tmp_path: Path, redis_server: RedisServer, relay_redis: RedisServer
) -> None:
    add_contacts(redis_server, A, B)
    env = base_env(
        redis_server.url,
        RELAY_REDIS_URL=relay_redis.url,
        RELAY_MAX_PAYLOAD_BYTES="1000",
        RELAY_RATE_LIMIT_PER_MIN="1000000",
    )
    relay = ServiceProcess("relay_service", tmp_path / "relay", env)
    relay.start()
    statuses: set[int] = set()
    try:
        auth_a = {"Authorization": f"Bearer {make_token(A)}"}
        auth_b = {"Authorization": f"Bearer {make_token(B)}"}

        def headers_for(auth: dict[str, str], content_type: str | None) -> dict[str, str]:
            return {**auth, **({"Content-Type": content_type} if content_type else {})}

        @HYPOTHESIS
        @given(body=enqueue_bodies, content_type=content_types)
        def hostile_enqueue(body: Any, content_type: str | None) -> None:
            data = json.dumps(body).encode("utf-8", "surrogatepass")
            headers = headers_for(auth_a, content_type)
            statuses.add(assert_sound(relay.port, "POST", f"{V1}/enqueue", data, headers))

        @HYPOTHESIS
        @given(body=ack_bodies, wallet=st.sampled_from([A, B]))
        def hostile_ack(body: Any, wallet: str) -> None:
            data = json.dumps(body).encode("utf-8", "surrogatepass")
            auth = auth_a if wallet == A else auth_b
            statuses.add(assert_sound(relay.port, "POST", f"{LEGACY}/ack", data, auth))

        @HYPOTHESIS
        @given(query=queries)
        def hostile_pull(query: str) -> None:
            path = f"{V1}/pull?{query}"
            statuses.add(assert_sound(relay.port, "GET", path, None, auth_b))

        @HYPOTHESIS
        @given(
            data=st.binary(max_size=3000) | _big_junk | _nested,
            path=st.sampled_from([f"{V1}/enqueue", f"{V1}/ack", f"{LEGACY}/enqueue"]),
            content_type=content_types,
        )
        def junk_bytes(data: bytes, path: str, content_type: str | None) -> None:
            statuses.add(
                assert_sound(relay.port, "POST", path, data, headers_for(auth_a, content_type))
            )

        hostile_enqueue()
        hostile_ack()
        hostile_pull()
        junk_bytes()
        relay.ensure_alive()
        # Some examples went through, others were refused (the run exercised both paths).
        assert {200, 202, 400, 413} <= statuses
        log = relay.log_text()
        assert "Traceback" not in log and "unhandled error" not in log
    finally:
        relay.stop()


async def test_contacts_checked_in_the_enqueue_script_when_the_directory_is_the_store(
    relay_client: RelayFactory, redis_server: RedisServer
) -> None:
    # One Redis for the directory and the store (the compose stack without MongoDB): the enqueue
    # script checks the contact sets itself, so a removed contact is refused at once, where
    # the directory cache would have kept the allow for FLAG_CACHE_SECONDS.
    client = await relay_client(RELAY_REDIS_URL=redis_server.url, FLAG_CACHE_SECONDS="300")
    add_contacts(redis_server, A, B)
    assert (await enqueue(client, A, relay_message(A, B, "fold-1"))).status == 202
    redis_server.client().srem(f"rtc:contacts:{B}", A)  # B drops A: one direction left
    refused = await enqueue(client, A, relay_message(A, B, "fold-2"))
    assert_error(refused, 403, "forbidden")
    assert refused.body["message"] == "sender and recipient are not mutual contacts"
    # Refused before anything is stored or remembered, retries of a stored id included.
    assert_error(await enqueue(client, A, relay_message(A, B, "fold-1")), 403, "forbidden")
    assert queue_length(redis_server, B) == 1
    assert list(redis_server.client().scan_iter("relay:idem:*fold-2")) == []
    for sender, to in [(C, B), (B, C)]:
        assert_error(
            await enqueue(client, sender, relay_message(sender, to, "x")), 403, "forbidden"
        )
    add_contacts(redis_server, A, B)
    assert (await enqueue(client, A, relay_message(A, B, "fold-3"))).status == 202
