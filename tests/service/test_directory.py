"""The directory of feature flags: Redis for real, MongoDB through mockupdb, the flag cache,
ice-service's `rtc.ice` check, and the `rtcctl flags` / `rtcctl token` commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
import redis
from bson import ObjectId
from conftest import IceClientFactory
from helpers import directory_settings, opened
from mockupdb import MockupDB, OpMsg
from prometheus_client import REGISTRY
from pymongo.errors import OperationFailure
from rtc_common.directory import (
    REDIS_FLAGS_KEY,
    Directory,
    FlagCache,
    MongoDirectory,
    RedisDirectory,
)
from rtc_common.errors import ApiError
from rtc_testkit.contract import JWT_SECRET, make_token
from rtc_testkit.processes import RedisServer, wait_for_async
from rtc_testkit.stack import set_flag

T = TypeVar("T")

ICE_PATH = "/api/v1/rtc/ice"
RTCCTL = Path(sys.executable).with_name("rtcctl")
CLI_SECRET = "cli-test-secret-fedcba9876543210fedcba98765"


# --- a MongoDB stand-in ---------------------------------------------------------------------


class MongoStub:
    """A mockupdb server. `serve_flags()` makes it answer flag reads from `self.flags`."""

    def __init__(self) -> None:
        self.server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
        self.port: int = self.server.run()
        self.flags: dict[str, bool] = {}
        self.finds: list[dict[str, Any]] = []  # the find commands answered by serve_flags
        self.gate = threading.Event()  # cleared: flag reads are held until it is set
        self.gate.set()
        self._stopped = False

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def serve_flags(self, db: str = "rtc", collection: str = "featureflags") -> None:
        def answer(request: Any) -> bool:
            self.finds.append(dict(request.doc))
            if not self.gate.wait(timeout=10):
                raise AssertionError("the test never released the held flag read")
            key = request.doc["filter"]["key"]
            batch = [{"enabled": self.flags[key]}] if key in self.flags else []
            ns = f"{db}.{collection}"
            return bool(request.replies(cursor={"id": 0, "firstBatch": batch, "ns": ns}))

        self.server.autoresponds(OpMsg("find", collection, namespace=db), answer)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.server.stop()


@pytest.fixture
def mongo() -> Iterator[MongoStub]:
    stub = MongoStub()
    yield stub
    stub.gate.set()
    stub.stop()


async def exchange(
    stub: MongoStub, call: Awaitable[T], expect: OpMsg, **reply: Any
) -> tuple[dict[str, Any], T]:
    """Run `call`, receive the one command it sends (must match `expect`), answer `reply`."""
    task = asyncio.ensure_future(call)
    try:
        request = await asyncio.to_thread(stub.server.receives, expect, timeout=5)
        request.replies(**reply)
        return dict(request.doc), await task
    finally:
        if not task.done():
            task.cancel()


def cursor(ns: str, *docs: dict[str, Any]) -> dict[str, Any]:
    return {"id": 0, "firstBatch": list(docs), "ns": ns}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- 1. Redis backend -----------------------------------------------------------------------


async def test_redis_directory_get_set_list(redis_server: RedisServer) -> None:
    raw = redis_server.client()
    async with opened(directory_settings(REDIS_URL=redis_server.url)) as directory:
        assert isinstance(directory, RedisDirectory)
        assert directory.backend == "redis"
        await directory.ping()
        assert await directory.get_flag("rtc.ice") is None
        assert await directory.list_flags() == {}

        await directory.set_flag("rtc.ice", True)
        assert await directory.get_flag("rtc.ice") is True
        assert raw.hget(REDIS_FLAGS_KEY, "rtc.ice") == b"1"

        await directory.set_flag("rtc.ice", False)
        assert await directory.get_flag("rtc.ice") is False
        assert raw.hget(REDIS_FLAGS_KEY, "rtc.ice") == b"0"

        set_flag(redis_server, "beta.feature")  # written by another client
        assert await directory.list_flags() == {"rtc.ice": False, "beta.feature": True}
        assert await directory.get_flag("not.there") is None


async def test_directory_url_takes_precedence_over_redis_url(redis_server: RedisServer) -> None:
    settings = directory_settings(
        REDIS_URL=redis_server.url, DIRECTORY_URL=f"redis://127.0.0.1:{redis_server.port}/3"
    )
    async with opened(settings) as directory:
        await directory.set_flag("rtc.ice", True)
    with redis.Redis(port=redis_server.port, db=3) as db3:
        assert db3.hget(REDIS_FLAGS_KEY, "rtc.ice") == b"1"
    assert redis_server.client().exists(REDIS_FLAGS_KEY) == 0


# --- 2. MongoDB backend (mockupdb) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "db", "collection"),
    [
        ({}, "rtc", "featureflags"),
        ({"MONGO_DB": "app", "MONGO_FLAGS_COLLECTION": "flags"}, "app", "flags"),
    ],
)
async def test_mongo_get_flag_sends_exact_find(
    mongo: MongoStub, env: dict[str, str], db: str, collection: str
) -> None:
    settings = directory_settings(DIRECTORY_URL=mongo.url, **env)
    expected = {
        "find": collection,
        "filter": {"key": "rtc.ice"},
        "projection": {"_id": 0, "enabled": 1},
        "limit": 1,
        "singleBatch": True,
        "$db": db,
    }
    ns = f"{db}.{collection}"
    async with opened(settings) as directory:
        assert isinstance(directory, MongoDirectory)
        assert directory.backend == "mongodb"
        for docs, answer in [
            ([{"enabled": True}], True),
            ([{"enabled": False}], False),
            ([], None),
        ]:
            command, value = await exchange(
                mongo,
                directory.get_flag("rtc.ice"),
                OpMsg("find", collection, namespace=db),
                cursor=cursor(ns, *docs),
            )
            assert next(iter(command)) == "find"  # the command name comes first
            assert command == expected
            assert value is answer


async def test_mongo_set_flag_upserts(mongo: MongoStub) -> None:
    async with opened(directory_settings(DIRECTORY_URL=mongo.url)) as directory:
        cases: list[tuple[bool, dict[str, Any]]] = [
            (True, {"n": 1, "nModified": 0, "upserted": [{"index": 0, "_id": ObjectId()}]}),
            (False, {"n": 1, "nModified": 1}),
        ]
        for enabled, reply in cases:
            command, _ = await exchange(
                mongo,
                directory.set_flag("rtc.ice", enabled),
                OpMsg("update", "featureflags", namespace="rtc"),
                **reply,
            )
            assert command == {
                "update": "featureflags",
                "ordered": True,
                "$db": "rtc",
                "updates": [
                    {
                        "q": {"key": "rtc.ice"},
                        "u": {"$set": {"enabled": enabled}},
                        "multi": False,
                        "upsert": True,
                    }
                ],
            }


async def test_mongo_list_flags(mongo: MongoStub) -> None:
    async with opened(directory_settings(DIRECTORY_URL=mongo.url)) as directory:
        command, flags = await exchange(
            mongo,
            directory.list_flags(),
            OpMsg("find", "featureflags", namespace="rtc"),
            cursor=cursor(
                "rtc.featureflags",
                {"key": "rtc.ice", "enabled": True},
                {"key": "beta", "enabled": False},
                {"enabled": True},  # no key: not a flag
            ),
        )
    assert command == {
        "find": "featureflags",
        "filter": {},
        "projection": {"_id": 0, "key": 1, "enabled": 1},
        "$db": "rtc",
    }
    assert flags == {"rtc.ice": True, "beta": False}


async def test_mongo_error_reply_is_raised(mongo: MongoStub) -> None:
    async with opened(directory_settings(DIRECTORY_URL=mongo.url)) as directory:
        task = asyncio.ensure_future(directory.get_flag("rtc.ice"))
        request = await asyncio.to_thread(
            mongo.server.receives, OpMsg("find", "featureflags"), timeout=5
        )
        request.command_err(code=13, errmsg="not authorized")
        with pytest.raises(OperationFailure, match="not authorized"):
            await task


# --- 3. FlagCache ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    directory: Directory
    store: Callable[[str, bool], None]  # set a flag behind the directory's back
    reads: Callable[[], int]  # flag reads the backend has answered so far
    fail: Callable[[], Awaitable[None]]  # take the backend down


@contextlib.asynccontextmanager
async def flag_backend(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The directory of `kind` on its server (started only for the backend under test)."""
    if kind == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        raw = redis_server.client()

        def hget_calls() -> int:
            stats: dict[str, Any] = raw.info("commandstats")
            return int(stats.get("cmdstat_hget", {}).get("calls", 0))

        async def kill_redis() -> None:
            redis_server.kill()

        async with opened(directory_settings(REDIS_URL=redis_server.url)) as directory:
            yield Backend(
                directory,
                lambda key, enabled: set_flag(redis_server, key, enabled=enabled),
                hget_calls,
                kill_redis,
            )
    else:
        mongo: MongoStub = request.getfixturevalue("mongo")
        mongo.serve_flags()

        async def stop_mongo() -> None:
            await asyncio.to_thread(mongo.stop)

        async with opened(directory_settings(DIRECTORY_URL=mongo.url)) as directory:
            yield Backend(directory, mongo.flags.__setitem__, lambda: len(mongo.finds), stop_mongo)


BACKENDS = pytest.mark.parametrize("kind", ["redis", "mongodb"])


@BACKENDS
async def test_cache_answers_for_ttl_then_rereads(
    kind: str, request: pytest.FixtureRequest
) -> None:
    clock = FakeClock()
    async with flag_backend(kind, request) as backend:
        backend.store("rtc.ice", True)
        cache = FlagCache(backend.directory, ttl=5, stale_max=60, clock=clock)
        reads = backend.reads()
        assert await cache.is_enabled("rtc.ice") is True
        assert backend.reads() == reads + 1

        backend.store("rtc.ice", False)
        clock.advance(4.9)
        assert await cache.is_enabled("rtc.ice") is True  # cached, backend not asked
        assert backend.reads() == reads + 1

        clock.advance(0.2)
        assert await cache.is_enabled("rtc.ice") is False  # ttl over: re-read
        assert backend.reads() == reads + 2
        assert await cache.is_enabled("rtc.ice") is False
        assert backend.reads() == reads + 2

        assert await cache.is_enabled("never.set") is False  # a missing flag is off
        assert backend.reads() == reads + 3


async def test_cache_concurrent_misses_share_one_read(mongo: MongoStub) -> None:
    mongo.serve_flags()
    mongo.flags["rtc.ice"] = True
    async with opened(directory_settings(DIRECTORY_URL=mongo.url)) as directory:
        cache = FlagCache(directory, ttl=5, stale_max=60, clock=FakeClock())
        mongo.gate.clear()  # hold the read in the server
        tasks = [asyncio.create_task(cache.is_enabled("rtc.ice")) for _ in range(20)]

        async def read_arrived() -> bool:
            return len(mongo.finds) == 1

        await wait_for_async(read_arrived, timeout=10, what="the flag read at the server")
        assert not any(task.done() for task in tasks)  # all 20 wait on the one read
        tasks[0].cancel()  # a caller going away does not cancel the read the others share
        mongo.gate.set()
        assert await asyncio.gather(*tasks[1:]) == [True] * 19
        assert tasks[0].cancelled()
        assert len(mongo.finds) == 1


@BACKENDS
async def test_cache_serves_last_known_value_until_stale_max(
    kind: str, request: pytest.FixtureRequest
) -> None:
    clock = FakeClock()
    async with flag_backend(kind, request) as backend:
        backend.store("rtc.ice", True)
        cache = FlagCache(backend.directory, ttl=1, stale_max=10, clock=clock)
        assert await cache.is_enabled("rtc.ice") is True
        await backend.fail()

        errors = metric("rtc_directory_errors_total", backend=kind)
        stale = metric("rtc_flag_stale_served_total")
        clock.advance(2)
        assert await cache.is_enabled("rtc.ice") is True  # read failed: last known value
        assert metric("rtc_directory_errors_total", backend=kind) == errors + 1
        assert metric("rtc_flag_stale_served_total") == stale + 1

        clock.advance(0.5)  # the failed attempt is not retried within the ttl
        assert await cache.is_enabled("rtc.ice") is True
        assert metric("rtc_directory_errors_total", backend=kind) == errors + 1
        assert metric("rtc_flag_stale_served_total") == stale + 2

        clock.advance(7.6)  # 10.1 s since the last successful read
        with pytest.raises(ApiError) as refused:
            await cache.is_enabled("rtc.ice")
        assert (refused.value.code, refused.value.status) == ("unavailable", 503)
        assert metric("rtc_directory_errors_total", backend=kind) == errors + 2

        clock.advance(0.1)  # still unavailable from the cached failure, no new attempt
        with pytest.raises(ApiError) as refused:
            await cache.is_enabled("rtc.ice")
        assert refused.value.code == "unavailable"


@BACKENDS
async def test_cache_never_known_and_backend_down_is_unavailable(
    kind: str, request: pytest.FixtureRequest
) -> None:
    async with flag_backend(kind, request) as backend:
        cache = FlagCache(backend.directory, ttl=5, stale_max=60, clock=FakeClock())
        await backend.fail()
        for _ in range(2):  # and it is not remembered as "disabled"
            with pytest.raises(ApiError) as refused:
                await cache.is_enabled("rtc.ice")
            assert (refused.value.code, refused.value.status) == ("unavailable", 503)


async def test_cache_error_reply_counts_as_failure(mongo: MongoStub) -> None:
    """A directory that answers with an error (not just a dead one) is a failure too."""
    mongo.serve_flags()
    mongo.flags["rtc.ice"] = True
    clock = FakeClock()
    async with opened(directory_settings(DIRECTORY_URL=mongo.url)) as directory:
        cache = FlagCache(directory, ttl=1, stale_max=10, clock=clock)
        assert await cache.is_enabled("rtc.ice") is True
        mongo.server.autoresponds(
            OpMsg("find", "featureflags"), lambda request: request.command_err(13)
        )
        clock.advance(2)
        assert await cache.is_enabled("rtc.ice") is True  # last known value
        clock.advance(9)
        with pytest.raises(ApiError) as refused:
            await cache.is_enabled("rtc.ice")
        assert refused.value.code == "unavailable"


# --- 4. ice-service and the rtc.ice flag --------------------------------------------------------


def bearer(wallet: str = "0xabc") -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(wallet)}"}


def assert_envelope(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error", "message", "requestId"}
    assert body["error"] == code
    assert body["message"] and body["requestId"]


async def test_ice_follows_the_redis_flag(
    ice_client: IceClientFactory, redis_server: RedisServer
) -> None:
    set_flag(redis_server, enabled=False)
    client = await ice_client(FLAG_CACHE_SECONDS="0.5", ICE_RATE_LIMIT_PER_MIN="10000")
    refused = await client.get(ICE_PATH, headers=bearer())
    assert refused.status == 403
    assert refused.headers["Content-Type"].startswith("application/json")
    assert_envelope(await refused.json(), "feature_disabled")

    async def status_is(expected: int) -> bool:
        return (await client.get(ICE_PATH, headers=bearer())).status == expected

    set_flag(redis_server, enabled=True)
    await wait_for_async(lambda: status_is(200), timeout=5, what="ICE after enabling rtc.ice")
    body = await (await client.get(ICE_PATH, headers=bearer())).json()
    assert body["provider"] == "coturn" and body["iceServers"]

    set_flag(redis_server, enabled=False)
    await wait_for_async(lambda: status_is(403), timeout=5, what="403 after disabling rtc.ice")


async def test_ice_flag_answer_is_cached(
    ice_client: IceClientFactory, redis_server: RedisServer
) -> None:
    set_flag(redis_server, enabled=False)
    client = await ice_client(FLAG_CACHE_SECONDS="300")
    assert (await client.get(ICE_PATH, headers=bearer())).status == 403
    set_flag(redis_server, enabled=True)
    assert (await client.get(ICE_PATH, headers=bearer())).status == 403  # within the window


async def test_ice_flag_from_mongo_survives_an_outage_then_unavailable(
    ice_client: IceClientFactory, mongo: MongoStub
) -> None:
    mongo.flags["rtc.ice"] = True
    mongo.serve_flags()
    stale_max = 3.0
    client = await ice_client(
        DIRECTORY_URL=mongo.url,
        FLAG_CACHE_SECONDS="0.2",
        FLAG_STALE_MAX_SECONDS=str(stale_max),
        ICE_RATE_LIMIT_PER_MIN="10000",
    )
    first_read = time.monotonic()  # the flag's last successful read is no earlier than this
    assert (await client.get(ICE_PATH, headers=bearer())).status == 200
    assert [find["filter"] for find in mongo.finds] == [{"key": "rtc.ice"}]

    stale = metric("rtc_flag_stale_served_total")
    stopping = asyncio.ensure_future(asyncio.to_thread(mongo.stop))
    answers: list[tuple[int, float, dict[str, Any]]] = []

    async def unavailable() -> bool:
        response = await client.get(ICE_PATH, headers=bearer())
        answers.append((response.status, time.monotonic(), await response.json()))
        return response.status == 503

    try:
        await wait_for_async(unavailable, timeout=20, what="503 after the stale window")
    finally:
        await stopping
    statuses = [status for status, _, _ in answers]
    assert set(statuses[:-1]) <= {200}, statuses
    assert metric("rtc_flag_stale_served_total") > stale  # 200s from the last known value
    _, at, body = answers[-1]
    assert at - first_read >= stale_max
    assert_envelope(body, "unavailable")

    # Ready all the same: it answers (503 per request), and every instance shares the directory.
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["degraded"] == ["directory"]
    deps = await (await client.get("/healthz/deps")).json()
    assert deps["dependencies"]["directory"]["state"] == "down"


# --- 5. rtcctl ---------------------------------------------------------------------------------


def rtcctl(run_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        "RTC_RUN_DIR": str(run_dir),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **env,
    }
    return subprocess.run(
        [str(RTCCTL), *args], env=full_env, capture_output=True, text=True, timeout=30, check=False
    )


def test_rtcctl_flags(redis_server: RedisServer, tmp_path: Path) -> None:
    raw = redis_server.client()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return rtcctl(tmp_path, "flags", *args, REDIS_URL=redis_server.url, JWT_SECRET=CLI_SECRET)

    def ok(*args: str) -> str:
        result = run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert ok("list") == "(no flags set)\n"
    assert ok("enable", "rtc.ice") == "rtc.ice enabled\n"
    assert raw.hget(REDIS_FLAGS_KEY, "rtc.ice") == b"1"
    assert ok("list") == "rtc.ice\tenabled\n"

    assert ok("disable", "rtc.ice") == "rtc.ice disabled\n"
    assert raw.hget(REDIS_FLAGS_KEY, "rtc.ice") == b"0"

    assert ok("enable", "rtc.ice", "--if-missing") == "rtc.ice already set, left as it is\n"
    assert raw.hget(REDIS_FLAGS_KEY, "rtc.ice") == b"0"
    assert ok("enable", "beta", "--if-missing") == "beta enabled\n"
    assert raw.hgetall(REDIS_FLAGS_KEY) == {b"rtc.ice": b"0", b"beta": b"1"}
    assert ok("list") == "beta\tenabled\nrtc.ice\tdisabled\n"

    missing_key = run("enable")
    assert missing_key.returncode == 2
    assert "needs a KEY" in missing_key.stderr

    redis_server.kill()
    down = run("list")
    assert down.returncode == 1
    assert down.stderr.startswith("directory unavailable (")
    assert "Traceback" not in down.stderr


def test_rtcctl_reads_the_run_folder_env_file(redis_server: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "env").write_text(f"REDIS_URL={redis_server.url}\nJWT_SECRET={CLI_SECRET}\n")
    result = rtcctl(tmp_path, "flags", "enable", "rtc.ice")
    assert result.returncode == 0, result.stderr
    assert redis_server.client().hget(REDIS_FLAGS_KEY, "rtc.ice") == b"1"


def test_rtcctl_token(tmp_path: Path) -> None:
    result = rtcctl(tmp_path, "token", "0xABC", JWT_SECRET=CLI_SECRET)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    claims = jwt.decode(token, CLI_SECRET, algorithms=["HS256"])
    assert claims["wallet"] == "0xabc"
    assert claims["sub"] == "0xabc"
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 60
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, JWT_SECRET, algorithms=["HS256"])

    short = rtcctl(tmp_path, "token", "0xABC", "--ttl", "60", JWT_SECRET=CLI_SECRET)
    claims = jwt.decode(short.stdout.strip(), CLI_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 60

    no_secret = rtcctl(tmp_path, "token", "0xABC")
    assert no_secret.returncode == 2
    assert "JWT_SECRET" in no_secret.stderr
