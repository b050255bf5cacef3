from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from helpers import NodeClient, node_missing
from ice_service.app import create_app
from ice_service.settings import IceSettings
from relay_service.app import create_app as create_relay_app
from relay_service.settings import RelaySettings
from rtc_common.settings import load_settings
from rtc_testkit.peer import Peers, open_peers
from rtc_testkit.processes import Coturn, ProcessGroup, RedisServer, ServiceProcess
from rtc_testkit.stack import base_env, set_flag, signal_env
from rtc_testkit.twilio import TwilioStub

IceClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
RelayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    server = Coturn(tmp_path_factory.mktemp("coturn"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def twilio(aiohttp_server: Any) -> AsyncIterator[TwilioStub]:
    """The local Twilio Tokens API stand-in, on this test's loop; `stub.base_url` is set."""
    stub = TwilioStub()
    server = await aiohttp_server(stub.app())
    stub.base_url = str(server.make_url("/")).rstrip("/")
    yield stub
    # Handlers held on `release` (hang/hold) return now, before the server is closed.
    stub.release.set()


@pytest.fixture
def ice_env(redis_server: RedisServer) -> dict[str, str]:
    set_flag(redis_server)
    return base_env(redis_server.url)


@pytest.fixture
def ice_client(aiohttp_client: Any, ice_env: dict[str, str]) -> IceClientFactory:
    """An in-process ice-service on a real Redis; keyword arguments override env variables."""

    async def make(**overrides: str) -> TestClient[Any, Any]:
        settings = load_settings(IceSettings, {**ice_env, **overrides})
        client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
        return client

    return make


@pytest.fixture
def signal_cluster(
    tmp_path: Path, redis_server: RedisServer
) -> Iterator[Callable[..., list[ServiceProcess]]]:
    """Start N signal-service processes on the test redis: `signal_cluster(2, **env_overrides)`."""
    with ProcessGroup() as group:

        def start(count: int = 2, **overrides: str) -> list[ServiceProcess]:
            env = signal_env(redis_server.url, **overrides)
            batch = []
            for _ in range(count):
                name = f"signal{len(group.processes) + 1}"
                process = ServiceProcess(
                    "signal_service", tmp_path / name, {**env, "INSTANCE_ID": name}, name=name
                )
                batch.append(group.start(process))
            return batch

        yield start


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    """Socket.IO test peers (`peers(wallet)`, `await peers.connect(url, wallet)`), all closed at
    the end of the test."""
    async with open_peers() as made:
        yield made


@pytest.fixture
def relay_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """The relay store: its own redis-server with an append-only file."""
    server = RedisServer(tmp_path / "relay-redis", appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def relay_env(redis_server: RedisServer, relay_redis: RedisServer) -> dict[str, str]:
    return base_env(redis_server.url, RELAY_REDIS_URL=relay_redis.url)


@pytest.fixture
def relay_client(aiohttp_client: Any, relay_env: dict[str, str]) -> RelayFactory:
    """An in-process relay-service; keyword arguments override env variables."""

    async def make(**overrides: str) -> TestClient[Any, Any]:
        settings = load_settings(RelaySettings, {**relay_env, **overrides})
        client: TestClient[Any, Any] = await aiohttp_client(create_relay_app(settings))
        return client

    return make


LEVELS = ("unit", "service", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its level, the folder it lives in (`-m unit`, `-m "not e2e"`)."""
    for item in items:
        level = Path(str(item.fspath)).parent.name
        if level in LEVELS:
            item.add_marker(getattr(pytest.mark, level))


@pytest.fixture
async def node_clients() -> AsyncIterator[list[NodeClient]]:
    reason = node_missing()
    if reason:
        pytest.skip(reason)
    made: list[NodeClient] = []
    yield made
    for client in made:
        await client.close()
