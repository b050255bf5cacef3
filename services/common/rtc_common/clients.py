"""Clients of shared infrastructure, built in `cleanup_ctx` and closed with the app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web
from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .keys import add_dependency
from .redis_address import remembering_options

REDIS_KEY = web.AppKey("rtc_redis", Redis)
CONNECT_TIMEOUT_SECONDS = 1.5


def as_text(value: bytes | str) -> str:
    """A Redis reply item as text (clients here do not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value


def make_redis(url: str) -> Redis:
    """A Redis client that fails fast when Redis is down (callers have fallbacks or answer 503)."""
    return Redis.from_url(
        url,
        # Room for one lost DNS answer asked again after 1 s (compose's dns_opt timeout:1).
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=2.0,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        health_check_interval=15,
        **remembering_options(url),
    )


def redis_context(
    key: web.AppKey[Redis], url: str, name: str = "redis", *, required: bool
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The client at `key`, and its ping as the dependency `name` (rtc_common.health)."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        client = make_redis(url)
        app[key] = client

        async def ping() -> None:
            await client.ping()

        add_dependency(app, name, ping, required=required)
        yield
        await client.aclose()

    return context
