"""Test-only helpers: what no one outside tests/ needs (the shared real components, tokens,
stack and Socket.IO peer are the test kit's, rtc_testkit)."""

from __future__ import annotations

import contextlib
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
