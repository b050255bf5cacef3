"""Through the real nginx gateway: routing, forwarded addresses, JSON errors, and clean logs."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioice.turn import create_turn_endpoint
from helpers import entrypoint_render, nginx_test
from rtc_testkit.contract import JWT_SECRET, TURN_SECRET, make_token
from rtc_testkit.stack import Stack, StackSpec, start_stack
from rtcctl.local import StackPorts, render_gateway

PATHS = ["/api/v1/rtc/ice", "/api/rtc/ice", "/api/rtc/v1/ice"]


@dataclass
class GatewayStack:
    """The kit's stack (redis, coturn, one ice-service, the gateway) and every secret value this
    module saw, for the final log scan."""

    stack: Stack
    secrets_seen: set[str]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stack, name)

    def remember(self, *values: str) -> None:
        self.secrets_seen.update(v for v in values if v)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    spec = StackSpec(
        ice=1,
        coturn=True,
        env={"ICE_ALLOW_ANONYMOUS": "true", "ALLOWED_ORIGINS": "http://app.example"},
    )
    with start_stack(spec, tmp_path_factory.mktemp("stack")) as started:
        yield GatewayStack(started, {JWT_SECRET, TURN_SECRET})


async def get(stack: GatewayStack, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(stack.gateway.url + path, **kwargs) as response,
    ):
        text = await response.text()
        return response.status, response.headers, json.loads(text) if text else None


@pytest.mark.parametrize("path", PATHS)
async def test_ice_paths_through_gateway_with_bearer(stack: GatewayStack, path: str) -> None:
    token = make_token("0xB0B")
    stack.remember(token)
    status, headers, body = await get(stack, path, headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body
    assert body["provider"] == "coturn"
    turn = body["iceServers"][-1]
    stack.remember(turn["credential"])
    assert turn["username"].endswith(":0xb0b")
    assert headers["Cache-Control"] == "private, no-store"
    assert headers["RateLimit-Limit"] == "10"


async def test_cookie_auth_through_gateway_allocates_on_coturn(stack: GatewayStack) -> None:
    token = make_token("0xc00c1e")
    stack.remember(token)
    status, _, body = await get(
        stack,
        "/api/v1/rtc/ice",
        cookies={"access_token": token, "csrf_token": "abc123"},
        headers={"X-CSRF-Token": "abc123", "Origin": "http://app.example"},
    )
    assert status == 200, body
    turn = body["iceServers"][-1]
    stack.remember(turn["credential"])
    transport, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol,
        server_addr=("127.0.0.1", stack.coturn.port),
        username=turn["username"],
        password=turn["credential"],
        transport="udp",
    )
    transport.close()


async def test_cors_through_gateway(stack: GatewayStack) -> None:
    token = make_token("0xc0125")
    auth = {"Authorization": f"Bearer {token}"}
    _, allowed, _ = await get(
        stack, "/api/v1/rtc/ice", headers={**auth, "Origin": "http://app.example"}
    )
    assert allowed["Access-Control-Allow-Origin"] == "http://app.example"
    assert allowed["Access-Control-Allow-Credentials"] == "true"
    _, foreign, _ = await get(
        stack, "/api/v1/rtc/ice", headers={**auth, "Origin": "http://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in foreign


async def test_forwarded_for_cannot_be_spoofed(stack: GatewayStack) -> None:
    """Anonymous ICE is limited per client address; a client-made X-Forwarded-For is ignored."""
    statuses = []
    for index in range(12):
        status, _, body = await get(
            stack, "/api/rtc/v1/ice", headers={"X-Forwarded-For": f"203.0.113.{index}"}
        )
        statuses.append(status)
        if status == 200:
            stack.remember(body["iceServers"][-1]["credential"])
    assert statuses.count(200) == 10 and statuses[-2:] == [429, 429]


async def test_gateway_errors_are_json(stack: GatewayStack) -> None:
    status, _, body = await get(stack, "/nowhere")
    assert (status, body["error"]) == (404, "not_found")
    status, _, body = await get(stack, "/metrics")
    assert status == 404  # the services' metrics stay private
    status, _, body = await get(stack, "/api/v1/rtc/ice", cookies={"big": "x" * 20000})
    assert (status, body["error"]) == (431, "invalid_payload")
    status, _, body = await get(stack, "/api/v1/relay/pull")
    assert (status, body["error"]) == (503, "unavailable")  # relay-service is not running here
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.gateway.url + "/api/v1/rtc/telemetry", data=b"x" * 300_000) as response,
    ):
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"


async def test_request_id_end_to_end(stack: GatewayStack) -> None:
    token = make_token("0x1d")
    stack.remember(token)
    status, headers, body = await get(
        stack,
        "/api/v1/rtc/ice",
        headers={"X-Request-ID": "trace-me-12345", "Authorization": f"Bearer {token}"},
    )
    assert status == 200
    stack.remember(body["iceServers"][-1]["credential"])
    assert headers["X-Request-ID"] == "trace-me-12345"
    status, headers, body = await get(
        stack, "/api/v1/rtc/ice", headers={"Authorization": "Bearer nope"}
    )
    assert status == 401
    assert body["requestId"] == headers["X-Request-ID"]


def test_affinity_key_is_rendered(tmp_path: Path) -> None:
    ports = StackPorts(gateway=18080)
    assert "hash $remote_addr consistent;" in render_gateway(tmp_path, ports)
    conf = render_gateway(tmp_path, ports, affinity_key="$http_x_rtc_test_client")
    assert "hash $http_x_rtc_test_client consistent;" in conf
    done = nginx_test(tmp_path, conf)
    assert done.returncode == 0, done.stderr
    for bad in ("remote_addr", "$remote_addr; server evil:1", "$Remote", "$", "$a b"):
        with pytest.raises(ValueError):
            render_gateway(tmp_path, ports, affinity_key=bad)


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        (None, "$remote_addr"),
        ("", "$remote_addr"),
        ("$http_x_forwarded_for", "$http_x_forwarded_for"),
        ("$http_x_rtc_test_client", "$http_x_rtc_test_client"),
        ("http_x_forwarded_for", None),
        ("$remote_addr;", None),
        ("$remote_addr consistent; server 10.0.0.1:80", None),
        ("$X", None),
        ("$a\nb", None),
    ],
)
def test_image_entrypoint_affinity_key(
    tmp_path: Path, value: str | None, rendered: str | None
) -> None:
    """The image's entrypoint renders GATEWAY_AFFINITY_KEY, or refuses it before nginx."""
    done = entrypoint_render(tmp_path, {} if value is None else {"GATEWAY_AFFINITY_KEY": value})
    if rendered is None:
        assert done.returncode == 64, done.stderr
        assert "GATEWAY_AFFINITY_KEY must be one nginx variable" in done.stderr
        assert not (tmp_path / "nginx.conf").exists()
    else:
        assert done.returncode == 0, done.stderr
        assert f"hash {rendered} consistent;" in (tmp_path / "nginx.conf").read_text()


def test_logs_have_request_lines_and_no_secrets(stack: GatewayStack) -> None:
    """Runs last in this module: reads every log the stack wrote."""
    ice_log = stack.ice.log_text()
    access = stack.gateway.access_log.read_text()
    lines = [json.loads(line) for line in ice_log.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("msg") == "request"]
    assert any(
        line["path"] == "/api/v1/rtc/ice"
        and line["status"] == 200
        and line["requestId"] == "trace-me-12345"
        for line in requests
    )
    assert any(line["status"] == 401 for line in requests)
    assert '"requestId":"trace-me-12345"' in access
    everything = {
        "ice": ice_log,
        "gateway-access": access,
        "gateway-error": stack.gateway.log_text(),
        "coturn": stack.coturn.log_text(),
        "redis": stack.redis.log_text(),
    }
    assert len(stack.secrets_seen) > 5
    for name, text in everything.items():
        for secret in stack.secrets_seen:
            assert secret not in text, f"a secret or credential is in the {name} log"
        assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", text), f"a JWT is in the {name} log"
