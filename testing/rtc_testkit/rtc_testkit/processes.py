"""Real components as child processes: redis-server, coturn, nginx (the gateway) and the services.

Each starts on free loopback ports in a folder of its own, is waited for on a condition with a
deadline (never a fixed sleep), and is stopped by whoever started it: a `ProcessGroup`, or the
stack (`rtc_testkit.stack`) that owns the group.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import redis
from rtc_gateway import GatewayLimits
from rtcctl.local import StackPorts, render_gateway, turnserver_conf

from .contract import TURN_CLI_PASSWORD, TURN_SECRET

REPO_ROOT = Path(__file__).resolve().parents[3]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free right now; taken for real only once a process binds it, so pick the next one
    after the previous process is up."""
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


async def until(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """`wait_for_async` for a synchronous check."""

    async def holds() -> bool:
        return check()

    await wait_for_async(holds, timeout, what)


def http_status(url: str, headers: Mapping[str, str] | None = None) -> int:
    """The status of a GET, 0 when nothing answers."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an HTTP URL: {url}")
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def metric_value(base_url: str, name: str, labels: str = "") -> float:
    """A sample from a running service's /metrics (0 when absent)."""
    if not base_url.startswith("http://"):
        raise ValueError(f"not an HTTP URL: {base_url}")
    with urllib.request.urlopen(base_url + "/metrics", timeout=2) as response:  # noqa: S310
        text = response.read().decode()
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


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

        def ready() -> bool:
            self.ensure_alive()
            return self.ping()

        wait_for(ready, what=self.name)


class Coturn(Process):
    """coturn on 127.0.0.1 (a free port), with its admin CLI on another (`cli_address`) and, given
    `tls` (certificate chain and key files), turns: on a third (`tls_port`)."""

    def __init__(
        self,
        workdir: Path,
        secret: str = TURN_SECRET,
        previous: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.cli_port = free_port()
        self.tls_port = free_port() if tls else None
        self.cli_password = TURN_CLI_PASSWORD
        self.secret = secret
        self.conf = workdir / "turnserver.conf"
        self.conf.write_text(
            turnserver_conf(
                workdir,
                self.port,
                secret,
                previous,
                cli_port=self.cli_port,
                cli_password=self.cli_password,
                tls=(self.tls_port, *tls) if tls and self.tls_port else None,
            )
        )
        super().__init__(
            f"coturn:{self.port}", ["turnserver", "-c", str(self.conf)], workdir / "turn.log"
        )

    def start(self) -> None:
        super().start()

        def listening() -> bool:
            self.ensure_alive()
            try:
                for port in (self.port, self.tls_port):
                    if port is not None:
                        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                            pass
            except OSError:
                return False
            return True

        wait_for(listening, what=self.name)

    @property
    def uris(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp,turn:127.0.0.1:{self.port}?transport=tcp"

    @property
    def cli_address(self) -> str:
        return f"127.0.0.1:{self.cli_port}"


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

        def ready() -> bool:
            self.ensure_alive()
            return http_status(self.url + self.ready_path) == 200

        wait_for(ready, self.ready_timeout, what=f"{self.name}{self.ready_path}")


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


class Gateway(HttpServer):
    """nginx with the product's gateway config (rtcctl's renderer) in front of the given ports;
    an upstream without a port gets one nothing listens on."""

    def __init__(
        self,
        workdir: Path,
        *,
        ice: list[int] | None = None,
        signal: list[int] | None = None,
        relay: list[int] | None = None,
        limits: GatewayLimits | None = None,
        port: int | None = None,
    ):
        self.port = port or free_port()
        self.workdir = workdir
        ports = StackPorts(
            gateway=self.port,
            ice=ice or [free_port()],
            signal=signal or [free_port()],
            relay=relay or [free_port()],
        )
        conf = write_nginx_conf(workdir, render_gateway(workdir, ports, limits=limits))
        super().__init__(
            f"gateway:{self.port}",
            ["nginx", "-c", str(conf), "-p", f"{workdir}/"],
            workdir / "logs" / "gateway.log",
        )
        self.access_log = workdir / "logs" / "gateway-access.log"

    def reload(self) -> None:
        """`nginx -s reload`: new workers with the same config, the old ones finish their work."""
        subprocess.run(
            [
                "nginx", "-c", str(self.workdir / "nginx.conf"), "-p", f"{self.workdir}/",
                "-s", "reload",
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )  # fmt: skip

    def worker_pids(self) -> set[int]:
        assert self.proc is not None
        pid = self.proc.pid
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}

    def access_entries(self) -> list[dict[str, Any]]:
        """The JSON access log, parsed."""
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]

    async def upstream_of(self, addr: str) -> str:
        """The signal instance `hash $remote_addr` picks for a local source address."""
        probe = f"/api/v1/signal/probe-{uuid.uuid4().hex[:8]}"
        connector = aiohttp.TCPConnector(local_addr=(addr, 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(self.url + probe) as response,
        ):
            await response.read()
        found: list[str] = []

        def logged() -> bool:
            found[:] = [e["upstream"] for e in self.access_entries() if e["path"] == probe]
            return bool(found)

        await until(logged, 5, what=f"access log line for {probe}")
        if found[0] == "-":
            raise AssertionError("the probe did not reach a signal instance")
        return found[0]

    async def spread_addresses(self) -> tuple[str, str, str, str]:
        """Two loopback source addresses the gateway sends to different signal instances:
        (address 1, its upstream, address 2, its upstream)."""
        seen: dict[str, str] = {}
        for last in range(2, 60):
            addr = f"127.0.0.{last}"
            upstream = await self.upstream_of(addr)
            for other_addr, other in seen.items():
                if other != upstream:
                    return other_addr, other, addr, upstream
            seen[addr] = upstream
        raise AssertionError(f"every address hashed to one instance: {seen}")
