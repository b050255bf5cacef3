"""Real components for the tests: redis-server, coturn, nginx and service processes.

Each starts on free loopback ports in a temporary folder, is waited for on a condition with a
deadline (never a fixed sleep), and is stopped (with its process) by the fixture that made it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import jwt
import redis
from aioice import stun
from aioice.turn import create_turn_endpoint
from rtc_common.directory import Directory, open_directory
from rtc_common.settings import CommonSettings, load_settings
from rtcctl.local import (
    GATEWAY_TEMPLATE,
    GatewayLimits,
    StackPorts,
    render_gateway,
    turnserver_conf,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"
TURN_SECRET = "test-turn-secret-abcdef"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


async def wait_for_async(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 15.0,
    what: str = "condition",
    interval: float = 0.02,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def http_status(url: str, headers: Mapping[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def make_token(
    wallet: str | None = "0xabc",
    *,
    secret: str = JWT_SECRET,
    expires_in: float = 3600,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"exp": int(time.time() + expires_in), **claims}
    if wallet is not None:
        payload["wallet"] = wallet
    return jwt.encode(payload, secret, algorithm=algorithm)


def turn_credentials(secret: str, wallet: str, expiry: int) -> tuple[str, str]:
    """Independent of the service's code: coturn's documented REST-API credential scheme."""
    username = f"{expiry}:{wallet}"
    password = base64.b64encode(
        hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    ).decode()
    return username, password


class Process:
    """A child process with its output in a log file; stopped by `stop()`."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None
    ):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ensure_alive(self) -> None:
        if not self.running:
            raise RuntimeError(f"{self.name} exited early:\n{self.log_text()[-3000:]}")


P = TypeVar("P", bound=Process)


class ProcessGroup:
    """The processes a fixture or a test starts, stopped in reverse order however it ends.

    `with ProcessGroup() as group: redis = group.start(RedisServer(...))`. A process is recorded
    before its start() runs, so one that was launched but never became ready is stopped too.
    """

    def __init__(self) -> None:
        self.processes: list[Process] = []

    def start(self, process: P) -> P:
        self.processes.append(process)
        process.start()
        return process

    def stop(self) -> None:
        while self.processes:
            self.processes.pop().stop()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class RedisServer(Process):
    def __init__(self, workdir: Path, *, appendonly: bool = False):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.workdir = workdir
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            # The relay's durability rule: what Redis acknowledged is on disk (kill -9 safe).
            "--appendfsync", "always",
            "--dir", str(workdir), "--logfile", "",
        ]  # fmt: skip
        super().__init__(f"redis:{self.port}", argv, workdir / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        super().start()
        wait_for(lambda: self.ensure_alive() or self.ping(), what=self.name)


class Coturn(Process):
    def __init__(self, workdir: Path, secret: str = TURN_SECRET, previous: str | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.secret = secret
        self.conf = workdir / "turnserver.conf"
        self.conf.write_text(turnserver_conf(workdir, self.port, secret, previous))
        conf = self.conf
        super().__init__(
            f"coturn:{self.port}", ["turnserver", "-c", str(conf)], workdir / "turn.log"
        )

    def start(self) -> None:
        super().start()

        def listening() -> bool:
            self.ensure_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(listening, what=self.name)

    @property
    def uris(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp,turn:127.0.0.1:{self.port}?transport=tcp"


async def allocate_relay(coturn: Coturn, username: str, password: str) -> tuple[str, int]:
    """Allocate a relay on the real coturn, released at once; returns the relayed address.
    A refusal raises aioice's `stun.TransactionFailed`."""
    transport, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol,
        server_addr=("127.0.0.1", coturn.port),
        username=username,
        password=password,
        transport="udp",
    )
    try:
        relayed: tuple[str, int] = transport.get_extra_info("sockname")
        return relayed
    finally:
        transport.close()


async def allocation_error(coturn: Coturn, username: str, password: str) -> int | None:
    """None when coturn allocates a relay with these credentials, else its STUN error code."""
    try:
        await allocate_relay(coturn, username, password)
    except stun.TransactionFailed as exc:
        return int(exc.response.attributes["ERROR-CODE"][0])
    return None


def base_env(redis_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_url,
        "JWT_SECRET": JWT_SECRET,
        "ALLOW_BEARER_AUTH": "true",
        "RTC_PROVIDER": "coturn",
        "TURN_SECRET": TURN_SECRET,
        "TURN_URIS": "turn:127.0.0.1:3478?transport=udp",
        "LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


class HttpServer(Process):
    """A process listening on `port`, started when `ready_path` answers 200."""

    port: int
    ready_path = "/healthz"
    ready_timeout = 15.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        wait_for(
            lambda: self.ensure_alive() or http_status(self.url + self.ready_path) == 200,
            self.ready_timeout,
            what=f"{self.name}{self.ready_path}",
        )


class ServiceProcess(HttpServer):
    """`python -m <module>` with exactly the given environment (plus PATH), started when ready."""

    ready_path = "/readyz"

    def __init__(self, module: str, workdir: Path, env: Mapping[str, str], name: str | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env, "PORT": str(self.port)}
        name = name or f"{module}:{self.port}"
        super().__init__(
            name,
            [sys.executable, "-m", module],
            workdir / f"{name.replace(':', '-')}.log",
            full_env,
        )


def write_nginx_conf(workdir: Path, conf: str) -> Path:
    """`conf` as workdir/nginx.conf, with the logs/ and nginx-tmp/ folders it writes into."""
    for sub in ("logs", "nginx-tmp"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


def nginx_test(workdir: Path, conf: str) -> subprocess.CompletedProcess[str]:
    """nginx's own verdict on a config (`nginx -t`), written as workdir/nginx.conf."""
    path = write_nginx_conf(workdir, conf)
    return subprocess.run(
        ["nginx", "-t", "-q", "-e", "stderr", "-c", str(path), "-p", f"{workdir}/"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def entrypoint_render(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """gateway/docker-entrypoint.sh (the image's) rendering into `tmp_path` with `env` and only
    PATH besides; nginx itself replaced by `true`, upstream names that never resolve."""
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GATEWAY_TEMPLATE": str(GATEWAY_TEMPLATE),
        "GATEWAY_RUN_DIR": str(tmp_path),
        "GATEWAY_RESOLVE_SECONDS": "0",
        "NGINX": shutil.which("true") or "/bin/true",
        "ICE_UPSTREAM": "ice.invalid:1",
        "SIGNAL_UPSTREAM": "signal.invalid:2",
        "RELAY_UPSTREAM": "relay.invalid:3",
        **env,
    }
    return subprocess.run(
        ["sh", str(REPO_ROOT / "gateway" / "docker-entrypoint.sh")],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class Gateway(HttpServer):
    def __init__(
        self,
        workdir: Path,
        *,
        ice: list[int],
        signal: list[int] | None = None,
        relay: list[int] | None = None,
        limits: GatewayLimits | None = None,
    ):
        self.port = free_port()
        ports = StackPorts(
            gateway=self.port, ice=ice, signal=signal or [free_port()], relay=relay or [free_port()]
        )
        conf = write_nginx_conf(workdir, render_gateway(workdir, ports, limits=limits))
        super().__init__(
            f"gateway:{self.port}",
            ["nginx", "-c", str(conf), "-p", f"{workdir}/"],
            workdir / "logs" / "gateway.log",
        )
        self.access_log = workdir / "logs" / "gateway-access.log"


NODE_DIR = REPO_ROOT / "tests" / "node"


def signal_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """signal-service env for tests: fast presence heartbeats so kill -9 tests stay short."""
    env = base_env(redis_url)
    env.update(
        {
            "PRESENCE_HEARTBEAT_SECONDS": "0.5",
            "PRESENCE_INSTANCE_TTL_SECONDS": "2",
            "FLAG_CACHE_SECONDS": "0.2",
        }
    )
    env.update(overrides)
    return env


def add_contacts(server: RedisServer, a: str, b: str) -> None:
    """Mutual contacts in the Redis directory (what `rtcctl contacts add` writes)."""
    client = server.client()
    client.sadd(f"rtc:contacts:{a}", b)
    client.sadd(f"rtc:contacts:{b}", a)


def metric_value(base_url: str, name: str, labels: str = "") -> float:
    """A sample from a running service's /metrics (0 when absent)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=2) as response:
        text = response.read().decode()
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def directory_settings(**env: str) -> CommonSettings:
    """Settings for opening the directory directly (DIRECTORY_URL, MONGO_* ...)."""
    return load_settings(CommonSettings, {"JWT_SECRET": JWT_SECRET, **env})


@contextlib.asynccontextmanager
async def opened(settings: CommonSettings) -> AsyncIterator[Directory]:
    directory = open_directory(settings)
    try:
        yield directory
    finally:
        await directory.close()


def access_entries(gateway: Gateway) -> list[dict[str, Any]]:
    """The gateway's JSON access log, parsed."""
    if not gateway.access_log.exists():
        return []
    return [json.loads(line) for line in gateway.access_log.read_text().splitlines() if line]


async def upstream_of(gateway: Gateway, addr: str) -> str:
    """The signal instance the gateway's `hash $remote_addr` picks for a source address."""
    probe = f"/api/v1/signal/probe-{uuid.uuid4().hex[:8]}"
    connector = aiohttp.TCPConnector(local_addr=(addr, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(gateway.url + probe) as response,
    ):
        await response.read()
    found: list[str] = []

    def logged() -> bool:
        found[:] = [e["upstream"] for e in access_entries(gateway) if e["path"] == probe]
        return bool(found)

    wait_for(logged, 5, what=f"access log line for {probe}")
    assert found[0] != "-", "the probe did not reach a signal instance"
    return found[0]


async def spread_addresses(gateway: Gateway) -> tuple[str, str, str, str]:
    """Two loopback source addresses that the gateway sends to different signal instances:
    (address 1, its upstream, address 2, its upstream)."""
    seen: dict[str, str] = {}
    for last in range(2, 60):
        addr = f"127.0.0.{last}"
        upstream = await upstream_of(gateway, addr)
        for other_addr, other in seen.items():
            if other != upstream:
                return other_addr, other, addr, upstream
        seen[addr] = upstream
    raise AssertionError(f"every address hashed to one instance: {seen}")


def app_routes(app: Any) -> set[tuple[str, str]]:
    """(path, method) of every route an aiohttp app serves (HEAD aside)."""
    return {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def documented_routes(openapi: dict[str, Any]) -> set[tuple[str, str]]:
    """(path, method) of every operation an OpenAPI document describes."""
    return {(path, method) for path, item in openapi["paths"].items() for method in item}
