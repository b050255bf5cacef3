"""A Redis client by host name looks the name up once, not once per new connection, and again
after a connect to the remembered address fails (rtc_common.redis_address)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions
from redis.asyncio import Redis
from rtc_common.clients import make_redis
from rtc_common.redis_address import remembering_options
from rtc_testkit.processes import RedisServer

NAME = "localhost"


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every look-up of NAME (asyncio's default loop calls socket.getaddrinfo at each)."""
    seen: list[str] = []
    real = socket.getaddrinfo

    def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == NAME:
            seen.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    yield seen


def connections(server: RedisServer) -> int:
    # By address: the test server's own client() would look NAME up too.
    return len(redis.Redis(host="127.0.0.1", port=server.port).client_list())


@pytest.fixture
async def named(tmp_path: Path, lookups: list[str]) -> AsyncIterator[tuple[RedisServer, Redis]]:
    """A Redis server and a client of it by NAME, nothing looked up yet by the client."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    lookups.clear()  # the server's readiness ping looked NAME up
    client = make_redis(f"redis://{NAME}:{server.port}/0")
    yield server, client
    await client.aclose()
    server.stop()


async def test_new_connections_reuse_the_first_lookup(
    named: tuple[RedisServer, Redis], lookups: list[str]
) -> None:
    server, client = named
    await client.ping()
    assert len(lookups) == 1
    # Twenty commands that each hold a connection for 50 ms: twenty new connections.
    await asyncio.gather(*(client.blpop([f"empty:{i}"], timeout=0.05) for i in range(20)))
    assert connections(server) >= 20
    assert len(lookups) == 1


async def test_a_failed_connect_forgets_the_address(
    named: tuple[RedisServer, Redis], lookups: list[str]
) -> None:
    server, client = named
    await client.ping()
    server.stop()
    # The first ping finds its connection closed; the second has to connect, and is refused.
    for _ in range(2):
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
    before = len(lookups)
    server.start()
    del lookups[before:]
    await client.ping()
    assert len(lookups) > before, "the name was not looked up again after a failed connect"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://[::1]:6379/0",
        "rediss://cache.example:6380/0",
        "unix:///run/redis.sock",
    ],
)
def test_urls_that_need_no_memo_keep_redis_py_connections(url: str) -> None:
    assert remembering_options(url) == {}


def test_each_client_has_its_own_memo() -> None:
    first = remembering_options("redis://redis:6379/0")["connection_class"]
    second = remembering_options("redis://redis:6379/0")["connection_class"]
    assert first.memo is not second.memo
