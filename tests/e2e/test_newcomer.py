"""The newcomer path: `make up`, the README curl as written, TURN allocation, `make down`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from aioice.turn import create_turn_endpoint
from rtc_testkit.processes import REPO_ROOT, http_status, wait_for

README = REPO_ROOT / "README.md"


def readme_curl_command() -> str:
    for line in README.read_text().splitlines():
        if line.startswith("curl ") and "rtcctl token" in line and "/api/v1/rtc/ice" in line:
            return line
    raise AssertionError("README.md has no `curl ... rtcctl token ... /api/v1/rtc/ice` line")


def port_is_free(port: int) -> bool:
    """Nothing listens there (a connect check: TIME_WAIT leftovers do not count)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def test_make_up_readme_curl_turn_allocation_make_down(tmp_path: Path) -> None:
    for port in (8080, 6390, 8101, 8201, 8202):
        if not port_is_free(port):
            pytest.fail(f"port {port} is taken: stop the local stack (make down) before make test")
    run_dir = tmp_path / "run"
    env = {**os.environ, "RTC_RUN_DIR": str(run_dir)}
    try:
        up = subprocess.run(
            ["make", "up"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert up.returncode == 0, up.stdout + up.stderr
        assert "http://127.0.0.1:8080" in up.stdout

        curl = subprocess.run(
            ["bash", "-c", readme_curl_command()],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert curl.returncode == 0, curl.stderr
        body = json.loads(curl.stdout)
        assert body["provider"] == "coturn"
        turn = body["iceServers"][-1]
        assert turn["username"].endswith(":0xabc")

        async def allocate() -> None:
            uri = turn["urls"][0]
            host, port = re.match(r"turn:([\d.]+):(\d+)", uri).groups()  # type: ignore[union-attr]
            transport, _ = await create_turn_endpoint(
                asyncio.DatagramProtocol,
                server_addr=(host, int(port)),
                username=turn["username"],
                password=turn["credential"],
                transport="udp",
            )
            transport.close()

        asyncio.run(allocate())

        # A full run's logs: the request line is there, no credential, JWT or secret is.
        logs = {
            path.name: path.read_text(errors="replace") for path in (run_dir / "logs").iterdir()
        }
        assert any('"path":"/api/v1/rtc/ice","status":200' in text for text in logs.values())
        generated = dict(
            line.split("=", 1)
            for line in (run_dir / "secrets.env").read_text().splitlines()
            if "=" in line
        )
        for name, text in logs.items():
            assert turn["credential"] not in text, name
            for secret in generated.values():
                assert secret not in text, name
            assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", text), name
    finally:
        down = subprocess.run(
            ["make", "down"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert down.returncode == 0, down.stdout + down.stderr
    wait_for(
        lambda: http_status("http://127.0.0.1:8080/healthz") == 0, timeout=10, what="gateway gone"
    )
    wait_for(
        lambda: all(port_is_free(p) for p in (6390, 8101, 8201, 8202)),
        timeout=10,
        what="processes gone",
    )
