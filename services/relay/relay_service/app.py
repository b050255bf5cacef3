"""relay-service: `create_app(settings)` and its handlers (enqueue, pull, ack)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rtc_common.auth import conv_id, get_identity, is_valid_wallet, normalize_wallet
from rtc_common.clients import REDIS_KEY, redis_context
from rtc_common.directory import (
    DIRECTORY_KEY,
    REDIS_CONTACTS_PREFIX,
    AccessCache,
    directory_context,
)
from rtc_common.errors import ApiError, invalid_payload, unavailable
from rtc_common.jsonbody import parse_body
from rtc_common.keys import SAMPLING_KEY, extra_headers
from rtc_common.ratelimit import RateLimiter
from rtc_common.relay_store import (
    QueueLimits,
    RelayMessage,
    RelayStore,
    queued_at_ms,
    sender_rate_key,
)
from rtc_common.responses import json_response
from rtc_common.revocation import revocations_context
from rtc_common.times import iso_ms
from rtc_common.web import create_base_app, serve_openapi

from .metrics import (
    ACKED,
    ENQUEUE_REFUSED,
    ENQUEUED,
    EXPIRED,
    OLDEST_AGE,
    PULLED,
    QUEUE_DEPTH,
    QUEUES,
    SAMPLE_TRUNCATED,
    TTL,
)
from .pusher import RelayPusher
from .settings import RelaySettings
from .storemem import store_memory_sampler

NOT_CONTACTS = "sender and recipient are not mutual contacts"
log = logging.getLogger("relay.app")

API_PREFIXES = ("/api/v1/relay", "/api/relay")
PULL_MAX = 100
PULL_DEFAULT = 50
# The queue gauges look at no more than this many queue keys per sample.
STATS_MAX_QUEUES = 10_000
# How long a graceful stop waits for queued online pushes.
DRAIN_SECONDS = 1.0

RELAY_SETTINGS_KEY = web.AppKey("relay_settings", RelaySettings)
RELAY_REDIS_KEY = web.AppKey("relay_redis", Redis)
STORE_KEY = web.AppKey("relay_store", RelayStore)
ACCESS_KEY = web.AppKey("relay_access", AccessCache)
LIMITER_KEY = web.AppKey("relay_limiter", RateLimiter)
PUSHER_KEY = web.AppKey("relay_pusher", RelayPusher)


class EnqueueRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    to: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    convId: Annotated[str, StringConstraints(min_length=3, max_length=300)]
    messageId: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    payload: str
    force: bool = False


class AckRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    ids: Annotated[list[Annotated[str, StringConstraints(max_length=64)]], Field(max_length=1000)]


def message_body(message: RelayMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "from": message.sender,
        "convId": message.conv_id,
        "messageId": message.message_id,
        "payload": message.payload,
        "queuedAt": iso_ms(message.queued_at_ms / 1000),
        "forced": message.forced,
    }


async def _check_rate(request: web.Request, sender: str) -> None:
    verdict = await request.app[LIMITER_KEY].hit(sender_rate_key(sender))
    extra_headers(request).update(verdict.headers())
    verdict.raise_if_limited()


async def enqueue(request: web.Request) -> web.Response:
    app = request.app
    settings = app[RELAY_SETTINGS_KEY]
    sender = get_identity(request).wallet
    store = app[STORE_KEY]
    # With the limiter's buckets in the store's Redis, the enqueue script decides the limit.
    limit_in_store = store.limiter is not None
    if not limit_in_store:
        await _check_rate(request, sender)

    body = await parse_body(request, EnqueueRequest)
    try:
        payload_bytes = len(body.payload.encode())
    except UnicodeEncodeError:  # JSON may escape a lone surrogate (\ud800): not UTF-8
        raise invalid_payload("invalid fields: payload") from None
    if payload_bytes > settings.relay_max_payload_bytes:
        raise ApiError(
            "payload_too_large", f"payload over {settings.relay_max_payload_bytes} bytes"
        )
    to = normalize_wallet(body.to)
    if not is_valid_wallet(to) or to == sender:
        raise invalid_payload("invalid fields: to")
    if body.convId != conv_id(sender, to):
        raise invalid_payload("convId is not the canonical pair of sender and recipient")
    # With a Redis directory in the store's Redis, the enqueue script checks it itself.
    if store.contacts_prefix is None:
        access = app[ACCESS_KEY]
        mutual = access.known_mutual_contacts(sender, to)
        if mutual is None:
            if limit_in_store:
                # The limit comes before a directory read: it bounds how many one account asks.
                await _check_rate(request, sender)
                limit_in_store = False
            mutual = await access.are_mutual_contacts(sender, to)
        if not mutual:
            raise ApiError("forbidden", NOT_CONTACTS)

    try:
        result = await store.enqueue(
            sender=sender,
            to=to,
            conv_id=body.convId,
            message_id=body.messageId,
            payload=body.payload,
            forced=body.force,
            rate_limit=limit_in_store,
        )
    except RedisError as exc:
        # Not stored, so never a 2xx: the client retries with the same messageId.
        ENQUEUE_REFUSED.labels("unavailable").inc()
        log.warning("relay store unavailable on enqueue", extra={"error": type(exc).__name__})
        raise unavailable("relay store unavailable, retry with the same messageId") from None
    if result.rate is not None:
        extra_headers(request).update(result.rate.headers())
        result.rate.raise_if_limited()
    EXPIRED.inc(result.expired)
    if result.status == "not_contacts":
        raise ApiError("forbidden", NOT_CONTACTS)
    if result.status == "queue_full":
        ENQUEUE_REFUSED.labels("queue_full").inc()
        raise ApiError(
            "queue_full",
            f"recipient queue is full ({settings.relay_max_queue} messages or"
            f" {settings.relay_max_queue_bytes} bytes)",
        )
    if result.status == "sender_share_full":
        ENQUEUE_REFUSED.labels("sender_share_full").inc()
        limits = app[STORE_KEY].limits
        raise ApiError(
            "queue_full",
            f"your messages fill your share of the recipient's queue ({limits.sender_max_messages}"
            f" messages or {limits.sender_max_bytes} bytes); they are released when delivered",
        )
    answer: dict[str, Any] = {
        "ok": True,
        "id": result.id,
        "messageId": body.messageId,
        "queuedAt": iso_ms(queued_at_ms(result.id) / 1000),
        "forced": result.forced,
    }
    if result.status == "duplicate":
        ENQUEUED.labels("duplicate", str(result.forced).lower()).inc()
        return json_response({**answer, "duplicate": True}, status=200)
    ENQUEUED.labels("stored", str(result.forced).lower()).inc()
    message = RelayMessage(
        result.id, sender, body.convId, body.messageId, body.payload, result.forced
    )
    # Published in the background: the answer does not wait for the push (best effort).
    app[PUSHER_KEY].push(to, "relay:message", message_body(message))
    return json_response(answer, status=202)


async def pull(request: web.Request) -> web.Response:
    wallet = get_identity(request).wallet
    raw_limit = request.query.get("limit", str(PULL_DEFAULT))
    # ASCII digits only ("²".isdigit() is true but int() refuses it), and short enough for int().
    if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 9) or not (
        1 <= int(raw_limit) <= PULL_MAX
    ):
        raise invalid_payload(f"limit must be an integer from 1 to {PULL_MAX}")
    try:
        pulled = await request.app[STORE_KEY].pull(wallet, int(raw_limit))
    except RedisError:
        raise unavailable("relay store unavailable") from None
    PULLED.inc(len(pulled.messages))
    EXPIRED.inc(pulled.expired)
    return json_response(
        {"messages": [message_body(m) for m in pulled.messages], "more": pulled.more}
    )


async def ack(request: web.Request) -> web.Response:
    wallet = get_identity(request).wallet
    body = await parse_body(request, AckRequest)
    try:
        acked = await request.app[STORE_KEY].ack(wallet, body.ids)
    except RedisError:
        raise unavailable("relay store unavailable") from None
    ACKED.inc(acked)
    return json_response({"acked": acked})


async def _relay_dependencies(app: web.Application) -> AsyncIterator[None]:
    settings = app[RELAY_SETTINGS_KEY]
    store_redis = app[RELAY_REDIS_KEY]
    # A per-process fallback while the limiter's Redis fails: whether the message can be stored
    # is the store's answer (503 when it is down), not the limiter's (a rolling restart once
    # turned a limiter hiccup into a 503 for a message the store would have taken).
    app[LIMITER_KEY] = RateLimiter(
        app[REDIS_KEY], scope="relay", limit=settings.relay_rate_limit_per_min
    )
    app[STORE_KEY] = RelayStore(
        store_redis,
        limits=QueueLimits(
            settings.relay_max_queue,
            settings.relay_max_queue_bytes,
            settings.relay_max_sender_share,
        ),
        ttl_seconds=settings.relay_ttl_seconds,
        idempotency_seconds=settings.relay_idempotency_seconds,
        # The same Redis holds the directory: its contact sets are read by the enqueue script.
        contacts_prefix=(
            REDIS_CONTACTS_PREFIX
            if settings.effective_directory_url == settings.effective_relay_redis_url
            else None
        ),
        # The limiter's buckets are in the store's Redis: one script decides both.
        limiter=(
            app[LIMITER_KEY] if settings.redis_url == settings.effective_relay_redis_url else None
        ),
    )
    app[ACCESS_KEY] = AccessCache(app[DIRECTORY_KEY], ttl=settings.flag_cache_seconds)
    pusher = RelayPusher(app[REDIS_KEY], channel=settings.socketio_channel)
    app[PUSHER_KEY] = pusher
    TTL.set(settings.relay_ttl_seconds)
    for reason in ("queue_full", "sender_share_full", "unavailable"):
        ENQUEUE_REFUSED.labels(reason)  # the series exist from the start (rate() needs that)

    async def sample_queues() -> None:
        stats = await app[STORE_KEY].stats(STATS_MAX_QUEUES)
        QUEUE_DEPTH.set(stats.depth)
        QUEUES.set(stats.queues)
        OLDEST_AGE.set(stats.oldest_age)
        SAMPLE_TRUNCATED.set(int(stats.truncated))

    app[SAMPLING_KEY].samplers.append(sample_queues)
    app[SAMPLING_KEY].samplers.append(store_memory_sampler(store_redis))
    yield
    # Before the Redis client closes (cleanup runs in reverse order).
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            await pusher.drain()
    except TimeoutError:
        log.warning("relay pushes still pending at stop")


async def _check_durability(app: web.Application) -> AsyncIterator[None]:
    """Warn (once, at start) when the store Redis could lose acknowledged writes."""
    try:
        config = await app[STORE_KEY].durability()
    except RedisError:
        config = {}
    if config and (config.get("appendonly") != "yes" or config.get("appendfsync") != "always"):
        log.warning(
            "relay store redis is not durable: set appendonly yes and appendfsync always, or a"
            " crash of redis loses messages that were answered 2xx",
            extra={
                "appendonly": config.get("appendonly"),
                "appendfsync": config.get("appendfsync"),
            },
        )
    yield


def create_app(settings: RelaySettings) -> web.Application:
    # Room for the largest payload JSON-escaped (up to 6 bytes a character) plus the envelope.
    app = create_base_app(
        settings, client_max_size=settings.relay_max_payload_bytes * 6 + 64 * 1024
    )
    app[RELAY_SETTINGS_KEY] = settings
    # Not required: the rate limit falls back to a per-process one while this Redis is down.
    app.cleanup_ctx.append(redis_context(REDIS_KEY, settings.redis_url, required=False))
    app.cleanup_ctx.append(revocations_context(REDIS_KEY))
    app.cleanup_ctx.append(
        redis_context(
            RELAY_REDIS_KEY, settings.effective_relay_redis_url, "relay_store", required=True
        )
    )
    app.cleanup_ctx.append(directory_context(settings))
    app.cleanup_ctx.append(_relay_dependencies)
    app.cleanup_ctx.append(_check_durability)
    for prefix in API_PREFIXES:
        app.router.add_post(f"{prefix}/enqueue", enqueue)
        app.router.add_get(f"{prefix}/pull", pull)
        app.router.add_post(f"{prefix}/ack", ack)
    serve_openapi(app, "relay_service", "/api/v1/relay/openapi.json")
    return app
