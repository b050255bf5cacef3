"""Rate limiting on a real Redis: GCRA shared by every process, per-process fallback without Redis.

Each test gets a fresh redis-server (the `redis_server` fixture). Timing assertions are bounds
that hold however slow the machine is; waits are conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import IceClientFactory
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from rtc_common.auth import allow_anonymous
from rtc_common.clients import REDIS_KEY, make_redis, redis_context
from rtc_common.errors import ApiError
from rtc_common.keys import SETTINGS_KEY, extra_headers
from rtc_common.ratelimit import RateLimiter
from rtc_common.settings import CommonSettings, load_settings
from rtc_common.web import client_ip, create_base_app
from rtc_testkit.contract import make_token
from rtc_testkit.processes import RedisServer, ServiceProcess, wait_for_async
from rtc_testkit.stack import base_env, set_flag

ICE = "/api/v1/rtc/ice"
LIMITED = "/api/v1/rtc/limited"
LIMITER_KEY = web.AppKey("test_limiter", RateLimiter)


def bearer(wallet: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(wallet)}"}


def fallback_count(scope: str = "ice") -> float:
    value = REGISTRY.get_sample_value("rtc_ratelimit_fallback_total", {"scope": scope})
    return value or 0.0


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = make_redis(redis_server.url)
    yield client
    await client.aclose()


# --- The limiter itself -------------------------------------------------------------------


async def test_concurrent_hits_admit_exactly_the_limit(redis_client: Redis) -> None:
    limiter = RateLimiter(redis_client, scope="test", limit=10)
    results = await asyncio.gather(*(limiter.hit("wallet:0xa") for _ in range(30)))
    admitted = [r for r in results if r.allowed]
    refused = [r for r in results if not r.allowed]
    assert len(admitted) == 10
    assert len(refused) == 20
    # Each admitted hit saw its own place in the budget: the script is atomic.
    assert sorted(r.remaining for r in admitted) == list(range(10))
    assert all(r.remaining == 0 and "Retry-After" in r.headers() for r in refused)
    assert await redis_client.exists("rl:test:wallet:0xa") == 1

    # Another key has its own budget, and another scope its own counters.
    other = await limiter.hit("wallet:0xb")
    assert other.allowed and other.remaining == 9
    other_scope = await RateLimiter(redis_client, scope="other", limit=10).hit("wallet:0xa")
    assert other_scope.allowed and other_scope.remaining == 9


async def test_headers_and_retry_after(redis_client: Redis) -> None:
    limiter = RateLimiter(redis_client, scope="test", limit=10, period=60.0)
    first = await limiter.hit("k")
    # One hit costs one emission interval (60 s / 10): that is how long until the budget is full.
    assert first.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "9",
        "RateLimit-Reset": "6",
    }
    for _ in range(9):
        last = await limiter.hit("k")
    assert last.allowed
    assert last.headers()["RateLimit-Remaining"] == "0"
    assert 59 <= int(last.headers()["RateLimit-Reset"]) <= 60

    refused = await limiter.hit("k")
    headers = refused.headers()
    assert not refused.allowed
    assert headers["RateLimit-Limit"] == "10"
    assert headers["RateLimit-Remaining"] == "0"
    assert 59 <= int(headers["RateLimit-Reset"]) <= 60
    # The next hit is allowed one emission interval after the burst began.
    assert 5 <= int(headers["Retry-After"]) <= 6
    with pytest.raises(ApiError) as error:
        refused.raise_if_limited()
    assert error.value.code == "rate_limited" and error.value.status == 429
    assert error.value.headers["Retry-After"] == headers["Retry-After"]


async def test_gcra_has_no_boundary_burst(redis_client: Redis) -> None:
    """10 per second: after a full burst, admissions go at most one per 100 ms, window or not.

    The burst is timed just before a wall-clock second boundary (Redis's TIME is wall clock), so
    a clock-aligned fixed window would hand out a second full burst during the polling below.
    """
    limiter = RateLimiter(redis_client, scope="gcra", limit=10, period=1.0)

    async def before_boundary() -> bool:
        return 0.6 <= time.time() % 1.0 <= 0.75

    await wait_for_async(before_boundary, timeout=5, what="the end of a wall-clock second")
    start = time.monotonic()
    burst = await asyncio.gather(*(limiter.hit("k") for _ in range(10)))
    assert all(r.allowed for r in burst)

    admitted = 0
    late_polls = 0
    while time.monotonic() - start < 0.5 or late_polls == 0:
        polled_at = time.monotonic() - start
        result = await limiter.hit("k")
        admitted += result.allowed
        if polled_at >= 0.2:
            late_polls += 1
    elapsed = time.monotonic() - start
    # Every admission after the burst needs 100 ms of emission time since the burst began.
    assert admitted <= elapsed / 0.1 + 1, (admitted, elapsed)
    # And the limiter does refill continuously (a poll after 200 ms must have got through).
    assert admitted >= 1


async def test_limiter_without_fallback_answers_unavailable(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    strict = RateLimiter(redis_client, scope="strict", limit=3, fallback=False)
    assert (await strict.hit("k")).allowed
    redis_server.kill()
    with pytest.raises(ApiError) as error:
        await strict.hit("k")
    assert error.value.code == "unavailable" and error.value.status == 503


async def test_fallback_limiter_directly(redis_server: RedisServer, redis_client: Redis) -> None:
    limiter = RateLimiter(redis_client, scope="direct-fallback", limit=3)
    redis_server.kill()
    before = fallback_count("direct-fallback")
    results = [await limiter.hit("k") for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert [r.remaining for r in results[:3]] == [2, 1, 0]
    assert 1 <= int(results[-1].headers()["Retry-After"]) <= 20
    assert fallback_count("direct-fallback") == before + 5
    assert (await limiter.hit("other")).allowed


# --- Through the shared web scaffolding (a bare app) --------------------------------------


@allow_anonymous
async def limited(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    verdict = await request.app[LIMITER_KEY].hit(
        f"ip:{client_ip(request, settings.trusted_proxies)}"
    )
    extra_headers(request).update(verdict.headers())
    verdict.raise_if_limited()
    return web.json_response({"ok": True})


def limited_app(redis_url: str, limit: int) -> web.Application:
    settings = load_settings(
        CommonSettings,
        {"JWT_SECRET": "x" * 32, "REDIS_URL": redis_url, "TRUSTED_PROXIES": "10.0.0.1"},
    )
    app = create_base_app(settings)
    app.cleanup_ctx.append(redis_context(REDIS_KEY, redis_url, required=False))

    async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
        app[LIMITER_KEY] = RateLimiter(app[REDIS_KEY], scope="bare", limit=limit)
        yield

    app.cleanup_ctx.append(limiter_ctx)
    app.router.add_get(LIMITED, limited)
    return app


async def test_bare_app_headers_and_429_envelope(
    aiohttp_client: Any, redis_server: RedisServer
) -> None:
    client = await aiohttp_client(limited_app(redis_server.url, limit=10))
    responses = await asyncio.gather(*(client.get(LIMITED) for _ in range(30)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 10 + [429] * 20
    for response in responses:
        assert response.headers["RateLimit-Limit"] == "10"
        assert int(response.headers["RateLimit-Remaining"]) in range(10)
        assert 1 <= int(response.headers["RateLimit-Reset"]) <= 60
        if response.status == 429:
            body = await response.json()
            assert body["error"] == "rate_limited"
            assert body["requestId"] == response.headers["X-Request-ID"]
            assert 5 <= int(response.headers["Retry-After"]) <= 6
        else:
            assert "Retry-After" not in response.headers
    assert redis_server.client().exists("rl:bare:ip:127.0.0.1") == 1


# --- Shared by processes ------------------------------------------------------------------


@pytest.fixture
def ice_processes(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    set_flag(redis_server)
    env = base_env(redis_server.url)
    processes = [
        ServiceProcess("ice_service", tmp_path / "ice", env, name=f"ice-{i}") for i in range(2)
    ]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.stop()


async def test_limit_is_shared_across_processes(ice_processes: list[ServiceProcess]) -> None:
    headers = bearer("0xAbCdEf01")

    async with aiohttp.ClientSession() as session:

        async def get(url: str, request_headers: dict[str, str]) -> tuple[int, Any, Any]:
            async with session.get(url + ICE, headers=request_headers) as response:
                return response.status, response.headers.copy(), await response.json()

        results = await asyncio.gather(*(get(ice_processes[i % 2].url, headers) for i in range(30)))
        ok = [r for r in results if r[0] == 200]
        limited = [r for r in results if r[0] == 429]
        assert len(ok) == 10, [r[0] for r in results]
        assert len(limited) == 20
        for _status, response_headers, body in limited:
            assert body["error"] == "rate_limited"
            assert 1 <= int(response_headers["Retry-After"]) <= 6
            assert response_headers["RateLimit-Remaining"] == "0"
        for _status, _headers, body in ok:
            assert body["iceServers"][-1]["username"].endswith(":0xabcdef01")

        # Another wallet is unaffected, on either process.
        for process in ice_processes:
            status, _headers, _body = await get(process.url, bearer("0xFeed"))
            assert status == 200

        # Neither process fell back to its local limiter.
        for process in ice_processes:
            async with session.get(process.url + "/metrics") as response:
                metrics = await response.text()
            for line in metrics.splitlines():
                if line.startswith('rtc_ratelimit_fallback_total{scope="ice"}'):
                    assert float(line.split()[-1]) == 0


# --- Redis down and back ------------------------------------------------------------------


async def test_redis_down_falls_back_per_process_then_recovers(
    ice_client: IceClientFactory, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rtc.ratelimit")
    # The flag cache must outlive the outage, or the flag (in the same Redis) would be unknown.
    client = await ice_client(FLAG_CACHE_SECONDS="60", ICE_RATE_LIMIT_PER_MIN="10")
    assert (await client.get(ICE, headers=bearer("0xa0"))).status == 200
    assert redis_server.client().exists("rl:ice:wallet:0xa0") == 1

    redis_server.kill()
    before = fallback_count()
    statuses = []
    for _ in range(10):
        response = await client.get(ICE, headers=bearer("0xb0"))
        statuses.append(response.status)
        body = await response.json()
        assert body["iceServers"][-1]["username"].endswith(":0xb0"), body
    assert statuses == [200] * 10
    refused = await client.get(ICE, headers=bearer("0xb0"))
    assert refused.status == 429
    assert (await refused.json())["error"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 6
    assert refused.headers["RateLimit-Limit"] == "10"
    assert fallback_count() == before + 11
    # Logged once per outage, not once per request.
    outage_logs = [
        r for r in caplog.records if r.name == "rtc.ratelimit" and "unreachable" in r.getMessage()
    ]
    assert len(outage_logs) == 1
    # Ready meanwhile (it answers, on the fallback limiter); /healthz/deps says Redis is down.
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert "redis" in (await ready.json())["degraded"]
    deps = await (await client.get("/healthz/deps")).json()
    assert deps["dependencies"]["redis"]["state"] == "down"

    redis_server.start()  # same port, empty data (and an empty script cache)
    set_flag(redis_server)
    probes = iter(range(1000))
    recovered_wallet = ""

    async def shared_limiter_used() -> bool:
        nonlocal recovered_wallet
        wallet = f"0xc{next(probes):03d}"
        count = fallback_count()
        response = await client.get(ICE, headers=bearer(wallet))
        if response.status != 200 or fallback_count() != count:
            return False
        recovered_wallet = wallet
        return bool(redis_server.client().exists(f"rl:ice:wallet:{wallet}"))

    await wait_for_async(shared_limiter_used, timeout=10, what="the shared limiter again")
    assert recovered_wallet
    settled = fallback_count()
    # The wallet refused by the fallback limiter starts afresh on the (restarted, empty) Redis,
    # and its hits are counted there: the local state is no longer consulted.
    response = await client.get(ICE, headers=bearer("0xb0"))
    assert response.status == 200
    assert response.headers["RateLimit-Remaining"] == "9"
    assert redis_server.client().exists("rl:ice:wallet:0xb0") == 1
    assert fallback_count() == settled
    assert any(
        r.name == "rtc.ratelimit" and "back on redis" in r.getMessage() for r in caplog.records
    )
