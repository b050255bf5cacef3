"""Test-only helpers: what no one outside tests/ needs (the shared real components, tokens,
stack and Socket.IO peer are the test kit's, rtc_testkit)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from rtc_common.directory import Directory, open_directory
from rtc_common.settings import CommonSettings, load_settings
from rtc_gateway import TEMPLATE as GATEWAY_TEMPLATE
from rtc_testkit.contract import JWT_SECRET
from rtc_testkit.processes import REPO_ROOT, write_nginx_conf

NODE_DIR = REPO_ROOT / "tests" / "node"


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
    """gateway/entrypoint.py (the image's) rendering into `tmp_path` with `env` and only PATH
    besides; nginx itself replaced by `true`, upstream names that never resolve. Run as the
    image runs it: no site-packages (-S), the library found next to the script."""
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
        [sys.executable, "-S", str(REPO_ROOT / "gateway" / "entrypoint.py")],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


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


SDK_SCRIPT = NODE_DIR / "sdk_session.mjs"


def node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        return "tests/node/node_modules is missing (make test runs npm ci)"
    return None


class NodeClient:
    """tests/node/sdk_session.mjs: one web SDK client; its events as JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, url: str, token: str, fresh_token: str | None = None) -> NodeClient:
        """`fresh_token`: what the client's token provider answers (None: no provider)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "URL": url, "TOKEN": token}
        if fresh_token is not None:
            env["FRESH_TOKEN"] = fresh_token
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(SDK_SCRIPT),
            cwd=str(NODE_DIR),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def next(self, event: str, timeout: float = 15.0) -> dict[str, Any]:
        """The next line of this event (the other lines on the way are kept in `events`)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"node exited: {await self.stderr()}")
                line: dict[str, Any] = json.loads(raw)
                self.events.append(line)
                if line["event"] == event:
                    return line

    async def command(self, text: str, answer: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.next(answer)

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")[-2000:]

    async def close(self) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(ConnectionError):
                self.proc.stdin.write(b"exit\n")
                await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
