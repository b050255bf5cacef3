"""The gateway's limits against real nginx: request rate and open connections per client address,
body and header sizes, slow clients; each configurable (GATEWAY_*), the per-address ones
switchable off. And the services' own JSON depth limit, through the gateway.

One redis + ice-service for the module; each test renders and starts its own gateway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import entrypoint_render, nginx_test
from rtc_common.directory import REDIS_FLAGS_KEY
from rtc_gateway import GatewayConfigError, GatewayLimits
from rtc_testkit.contract import make_token
from rtc_testkit.processes import Gateway, ProcessGroup, RedisServer, ServiceProcess, free_port
from rtc_testkit.stack import base_env
from rtcctl.local import WEB_ROOT, StackPorts, render_gateway

OPENAPI = "/api/v1/rtc/openapi.json"  # public, proxied to ice-service, no Redis budget


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("limits")
    with ProcessGroup() as group:
        redis = group.start(RedisServer(root / "redis"))
        redis.client().hset(REDIS_FLAGS_KEY, "rtc.ice", "1")
        ice = group.start(ServiceProcess("ice_service", root / "ice", base_env(redis.url)))
        relay = group.start(ServiceProcess("relay_service", root / "relay", base_env(redis.url)))
        yield {"ice": ice, "relay": relay, "redis": redis}


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def gateway(tmp_path: Path, services: dict[str, ServiceProcess]) -> Iterator[GatewayFactory]:
    with ProcessGroup() as group:

        def start(limits: GatewayLimits | None = None) -> Gateway:
            return group.start(
                Gateway(
                    tmp_path / f"gateway{len(group.processes)}",
                    ice=[services["ice"].port],
                    relay=[services["relay"].port],
                    limits=limits,
                )
            )

        yield start


async def get(
    gw: Gateway, path: str, *, local_addr: str | None = None, **kwargs: Any
) -> tuple[int, Any, Any]:
    connector = aiohttp.TCPConnector(local_addr=(local_addr, 0)) if local_addr else None
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(kwargs.pop("method", "GET"), gw.url + path, **kwargs) as response,
    ):
        text = await response.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        return response.status, response.headers, body


def assert_envelope(status: int, body: Any, expected: int, code: str) -> None:
    assert status == expected, body
    assert isinstance(body, dict) and set(body) == {"error", "message", "requestId"}, body
    assert body["error"] == code


# -- request rate per client address -------------------------------------------------------


async def test_request_rate_per_address(gateway: GatewayFactory) -> None:
    gw = gateway(GatewayLimits(rate_limit=2, rate_burst=4))
    statuses = []
    for _ in range(12):
        status, headers, body = await get(gw, OPENAPI)
        statuses.append(status)
        if status == 429:
            assert_envelope(status, body, 429, "rate_limited")
            assert headers["Retry-After"] == "1"
            assert headers["Content-Type"].startswith("application/json")
            assert "requests" in body["message"]
    # 1 + a burst of 4 pass at once (nodelay); the rest of a fast run is refused.
    assert statuses[:5] == [200] * 5 and statuses.count(429) >= 6, statuses
    # Another client address has its own budget; the gateway's /healthz is never limited.
    assert (await get(gw, OPENAPI, local_addr="127.0.0.2"))[0] == 200
    assert [(await get(gw, "/healthz"))[0] for _ in range(10)] == [200] * 10
    # The budget comes back at the configured rate (2 a second).
    deadline = time.monotonic() + 5
    while (await get(gw, OPENAPI))[0] != 200:
        assert time.monotonic() < deadline, "the rate limit never let a request through again"
        await asyncio.sleep(0.1)


async def test_request_rate_off(gateway: GatewayFactory) -> None:
    gw = gateway(GatewayLimits.off())
    statuses = await asyncio.gather(*(get(gw, OPENAPI) for _ in range(200)))
    assert {s for s, _, _ in statuses} == {200}


# -- open connections per client address ---------------------------------------------------


def open_slow_upload(gw: Gateway, path: str = "/api/v1/rtc/telemetry") -> socket.socket:
    """A request whose body never finishes: it holds one connection in the gateway."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{".encode()
    )
    return sock


async def test_connections_per_address(gateway: GatewayFactory) -> None:
    gw = gateway(GatewayLimits(rate_limit=None, conn_limit=2, client_body_timeout="30s"))
    held = [open_slow_upload(gw), open_slow_upload(gw)]
    try:

        async def refused() -> bool:
            return (await get(gw, OPENAPI))[0] == 429

        deadline = time.monotonic() + 5
        while not await refused():  # the two uploads reach the gateway's body phase
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        status, headers, body = await get(gw, OPENAPI)
        assert_envelope(status, body, 429, "rate_limited")
        assert "connections" in body["message"] and headers["Retry-After"] == "1"
        assert (await get(gw, OPENAPI, local_addr="127.0.0.2"))[0] == 200
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while (await get(gw, OPENAPI))[0] != 200:
        assert time.monotonic() < deadline, "closed connections were not released"
        await asyncio.sleep(0.02)


async def test_connections_off(gateway: GatewayFactory) -> None:
    gw = gateway(GatewayLimits(conn_limit=None, client_body_timeout="30s"))
    held = [open_slow_upload(gw) for _ in range(5)]
    try:
        assert (await get(gw, OPENAPI))[0] == 200
    finally:
        for sock in held:
            sock.close()


# -- slow clients ---------------------------------------------------------------------------


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the gateway closed `sock` (whatever it answered first)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_slow_headers_and_body_are_cut_off(gateway: GatewayFactory) -> None:
    gw = gateway(GatewayLimits(client_header_timeout="1s", client_body_timeout="1s"))
    # The whole header block must arrive within client_header_timeout.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        assert 0.5 < closed_within(sock, 10) < 5
    # client_body_timeout is between two reads of the body.
    with open_slow_upload(gw) as sock:  # never ends its body
        assert 0.5 < closed_within(sock, 10) < 5
    # A body trickled in slower than the timeout in total, but faster between two sends, is read.
    body = b'{"transport": "rtc"}'
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/rtc/telemetry HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            + f"Authorization: Bearer {make_token('0x510')}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for index in range(0, len(body), 5):
            time.sleep(0.35)  # the slow client itself: under the timeout between two sends
            sock.sendall(body[index : index + 5])
        assert sock.recv(4096).startswith(b"HTTP/1.1 204")


# -- sizes ----------------------------------------------------------------------------------


async def test_body_and_header_sizes_are_configurable(gateway: GatewayFactory) -> None:
    gw = gateway(GatewayLimits(max_body_size="1k", relay_max_body_size="2k", max_header_size="1k"))
    token = make_token("0x5123")
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, _, body = await get(
        gw, "/api/v1/rtc/telemetry", method="POST", data=b" " * 1500, headers=auth
    )
    assert_envelope(status, body, 413, "payload_too_large")
    # Under the relay's own limit (2k) the same body reaches relay-service (a 400 there).
    status, _, body = await get(
        gw, "/api/v1/relay/ack", method="POST", data=b" " * 1500, headers=auth
    )
    assert_envelope(status, body, 400, "invalid_payload")
    status, _, body = await get(
        gw, "/api/v1/relay/ack", method="POST", data=b" " * 3000, headers=auth
    )
    assert_envelope(status, body, 413, "payload_too_large")
    status, _, body = await get(gw, OPENAPI, headers={"X-Big": "x" * 1500})
    assert_envelope(status, body, 431, "invalid_payload")
    assert (await get(gw, OPENAPI, headers={"X-Big": "x" * 500}))[0] == 200


async def test_default_sizes(gateway: GatewayFactory) -> None:
    gw = gateway()
    token = make_token("0x5124")
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    status, _, body = await get(
        gw, "/api/v1/rtc/telemetry", method="POST", data=b" " * (129 * 1024), headers=auth
    )
    assert_envelope(status, body, 413, "payload_too_large")
    status, _, body = await get(gw, OPENAPI, headers={"X-Big": "x" * 9000})
    assert_envelope(status, body, 431, "invalid_payload")


async def test_large_bodies_and_answers_pass_in_memory(
    gateway: GatewayFactory, services: dict[str, Any]
) -> None:
    """Near the size limits, in both directions: nothing goes through nginx temp files (which
    its workers, running as another user under a root master, may not be able to write)."""
    gw = gateway()
    a, b = "0x1a96e0", "0x1a96e1"
    redis = services["redis"].client()
    redis.sadd(f"rtc:contacts:{a}", b)
    redis.sadd(f"rtc:contacts:{b}", a)
    for n in range(3):
        status, _, body = await get(
            gw,
            "/api/v1/relay/enqueue",
            method="POST",
            json={"to": b, "convId": f"{a}:{b}", "messageId": f"big-{n}", "payload": "\n" * 60000},
            headers={"Authorization": f"Bearer {make_token(a)}"},
        )  # 60,000 bytes, 120 KB JSON-escaped
        assert status == 202, body
    status, _, body = await get(
        gw, "/api/v1/relay/pull", headers={"Authorization": f"Bearer {make_token(b)}"}
    )
    assert status == 200 and len(body["messages"]) == 3, body


# -- the services' JSON depth limit, through the gateway -----------------------------------


def nested(depth: int) -> str:
    """JSON text: lists nested `depth` deep (made by hand: json.dumps recurses)."""
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("path", ["/api/v1/rtc/telemetry", "/api/v1/relay/ack"])
async def test_json_depth_limit(gateway: GatewayFactory, path: str) -> None:
    gw = gateway()
    auth = {"Authorization": f"Bearer {make_token('0xdee9')}"}
    base = '"transport": "rtc"' if "telemetry" in path else '"ids": []'
    headers = {**auth, "Content-Type": "application/json"}

    async def post(text: str) -> tuple[int, Any, Any]:
        return await get(gw, path, method="POST", data=text.encode(), headers=headers)

    assert (await post("{" + base + ', "x": ' + nested(31) + "}"))[0] in (200, 204)
    for depth in (33, 5000):
        status, _, body = await post("{" + base + ', "x": ' + nested(depth) + "}")
        assert_envelope(status, body, 400, "invalid_payload")
    status, _, body = await post("[" * 60_000)  # under ice-service's 64 KiB body limit
    assert_envelope(status, body, 400, "invalid_payload")


# -- configuration: the local stack and the image's entrypoint render the same -------------


LIMIT_LINES = (
    "client_max_body_size",
    "large_client_header_buffers",
    "client_header_timeout",
    "client_body_timeout",
    "send_timeout",
    "default ",
    "limit_req_zone",
    "limit_req ",
    "limit_conn ",
    "set_real_ip_from",
    "real_ip_",
)


def limit_lines(conf: str) -> list[str]:
    return [line.strip() for line in conf.splitlines() if line.strip().startswith(LIMIT_LINES)]


def render_both(tmp_path: Path, env: dict[str, str]) -> tuple[str, str]:
    """nginx.conf of the local stack's renderer (what `rtcctl local prepare` does with `env`)
    and of the image's entrypoint, for the same environment; the image's listen address,
    workers and web root set to the local stack's. GATEWAY_DEMO unset is on in the local stack,
    off in the image: the local stack's default is checked, then set to the image's."""
    port = free_port()
    limits = GatewayLimits.from_env(env)
    if not env.get("GATEWAY_DEMO", "").strip():
        assert limits.demo
        limits = dataclasses.replace(limits, demo=False)
    run_dir = tmp_path / "image"
    local = render_gateway(run_dir, StackPorts(gateway=port), limits=limits)
    done = entrypoint_render(
        run_dir,
        {
            **env,
            "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "GATEWAY_WORKERS": "1",
            "GATEWAY_WEB_ROOT": str(WEB_ROOT.resolve()),
        },
    )
    assert done.returncode == 0, done.stderr
    return local, (run_dir / "nginx.conf").read_text()


def assert_same_conf(local: str, image: str) -> None:
    """The whole config, but for the upstream servers (the local stack's ports on 127.0.0.1;
    the image's resolved names, here marked down)."""

    def split(conf: str) -> tuple[list[str], list[str]]:
        servers = [line for line in conf.splitlines() if re.match(r" *server [^{]*;", line)]
        return [line for line in conf.splitlines() if line not in servers], servers

    (local_rest, local_servers), (image_rest, image_servers) = split(local), split(image)
    assert local_rest == image_rest
    assert len(local_servers) == 4 and all(" 127.0.0.1:" in line for line in local_servers)
    assert len(image_servers) == 3 and all(" down;" in line for line in image_servers)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"GATEWAY_RATE_LIMIT": "off", "GATEWAY_CONN_LIMIT": "0"},
        {"GATEWAY_RATE_LIMIT": "0", "GATEWAY_CONN_LIMIT": "OFF"},
        {
            "GATEWAY_RATE_LIMIT": "7",
            "GATEWAY_RATE_BURST": "1",
            "GATEWAY_CONN_LIMIT": "3",
            "GATEWAY_MAX_BODY_SIZE": "1m",
            "GATEWAY_RELAY_MAX_BODY_SIZE": "2m",
            "GATEWAY_MAX_HEADER_SIZE": "16k",
            "GATEWAY_CLIENT_HEADER_TIMEOUT": "500ms",
            "GATEWAY_CLIENT_BODY_TIMEOUT": "2s",
            "GATEWAY_SEND_TIMEOUT": "1m",
        },
        {
            "GATEWAY_RATE_LIMIT": "1000000",
            "GATEWAY_RATE_BURST": " 0100 ",
            "GATEWAY_CONN_LIMIT": "007",
            "GATEWAY_MAX_BODY_SIZE": "1234567K",
            "GATEWAY_RELAY_MAX_BODY_SIZE": "9999999",
            "GATEWAY_MAX_HEADER_SIZE": "1M",
            "GATEWAY_CLIENT_HEADER_TIMEOUT": "9999999MS",
            "GATEWAY_CLIENT_BODY_TIMEOUT": "30",
            "GATEWAY_SEND_TIMEOUT": "2M",
        },
        {"GATEWAY_REAL_IP_FROM": " 10.0.0.0/8, 192.168.1.7,,2001:DB8::/32 ", "GATEWAY_DEMO": "on"},
        {"GATEWAY_REAL_IP_FROM": "127.0.0.1", "GATEWAY_DEMO": "FALSE"},
        {"GATEWAY_REAL_IP_FROM": "", "GATEWAY_DEMO": "1"},
        {"GATEWAY_DEMO": " "},
    ],
    ids=[
        "defaults",
        "off",
        "zero",
        "custom",
        "bounds-and-case",
        "real-ip",
        "real-ip-demo-off",
        "empty-demo-1",
        "blank-demo",
    ],
)
def test_local_and_image_render_the_same_conf(tmp_path: Path, env: dict[str, str]) -> None:
    local, image = render_both(tmp_path, env)
    assert_same_conf(local, image)
    real_ip = [e.strip().lower() for e in env.get("GATEWAY_REAL_IP_FROM", "").split(",")]
    expected = [f"set_real_ip_from {e};" for e in real_ip if e]
    assert [line for line in limit_lines(image) if "set_real_ip_from" in line] == expected
    assert ("real_ip_header X-Forwarded-For;" in image) == bool(expected)
    assert ("real_ip_recursive on;" in image) == bool(expected)
    assert "{{" not in image.replace("{{...}}", "")
    off = env.get("GATEWAY_RATE_LIMIT", "").lower() in ("off", "0")
    assert ('default "";' in image) == off
    # Numbers as nginx reads them, units in lower case.
    assert all(line == line.lower() for line in limit_lines(image) if "_size" in line)
    # nginx itself accepts the rendered config.
    check = nginx_test(tmp_path, local)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_RATE_LIMIT", "5;x"),
        ("GATEWAY_RATE_LIMIT", "-1"),
        ("GATEWAY_RATE_LIMIT", "5000000"),
        ("GATEWAY_RATE_LIMIT", "1000001"),
        ("GATEWAY_RATE_LIMIT", "00"),
        ("GATEWAY_RATE_LIMIT", "\u0665"),  # a digit to str.isdigit, not to nginx
        ("GATEWAY_CONN_LIMIT", "many"),
        ("GATEWAY_CONN_LIMIT", "12345678"),
        ("GATEWAY_RATE_BURST", "off"),
        ("GATEWAY_RATE_BURST", "0"),
        ("GATEWAY_RATE_BURST", "1000001"),
        ("GATEWAY_MAX_BODY_SIZE", "0k"),
        ("GATEWAY_MAX_BODY_SIZE", "1g"),
        ("GATEWAY_MAX_BODY_SIZE", "12345678k"),
        ("GATEWAY_MAX_BODY_SIZE", "01k"),
        ("GATEWAY_RELAY_MAX_BODY_SIZE", "1 m"),
        ("GATEWAY_MAX_HEADER_SIZE", "8k; deny all"),
        ("GATEWAY_SEND_TIMEOUT", "1h"),
        ("GATEWAY_SEND_TIMEOUT", "12345678s"),
        ("GATEWAY_CLIENT_HEADER_TIMEOUT", "0s"),
        ("GATEWAY_CLIENT_BODY_TIMEOUT", "s"),
        ("GATEWAY_DEMO", "maybe"),
        ("GATEWAY_REAL_IP_FROM", "10.0.0.1/8"),  # host bits: a mistyped mask trusts more
        ("GATEWAY_REAL_IP_FROM", "0.0.0.0/0"),  # every client could pick its address
        ("GATEWAY_REAL_IP_FROM", "::/0"),
        ("GATEWAY_REAL_IP_FROM", "10.0.0.0/33"),
        ("GATEWAY_REAL_IP_FROM", "10.0.0.0/8; real_ip_header X-Evil"),
        ("GATEWAY_REAL_IP_FROM", "10.0.0.0/8 192.168.0.0/16"),
        ("GATEWAY_REAL_IP_FROM", "10.0.0.0/+8"),
        ("GATEWAY_REAL_IP_FROM", "10.0.0.0/"),
        ("GATEWAY_REAL_IP_FROM", "010.0.0.1"),
        ("GATEWAY_REAL_IP_FROM", "256.0.0.1"),
        ("GATEWAY_REAL_IP_FROM", "10.0.0"),
        ("GATEWAY_REAL_IP_FROM", "lb.example"),
        ("GATEWAY_REAL_IP_FROM", "unix:"),
        ("GATEWAY_REAL_IP_FROM", "10.0.0.0/8,fe80::1/10"),
        ("GATEWAY_REAL_IP_FROM", "::ffff:10.0.0.1"),
        ("GATEWAY_REAL_IP_FROM", "fe80::1%eth0"),
        ("GATEWAY_REAL_IP_FROM", "1:2:3:4:5:6:7:8:9"),
        ("GATEWAY_REAL_IP_FROM", "1::2::3"),
        ("GATEWAY_REAL_IP_FROM", "12345::"),
        ("GATEWAY_REAL_IP_FROM", "1:2:3:4:5:6:7::/112"),  # nginx cannot parse it
        ("GATEWAY_REAL_IP_FROM", "::2:3:4:5:6:7:8"),
        ("GATEWAY_REAL_IP_FROM", "2001:db8::/129"),
    ],
)
def test_malformed_limits_are_refused_by_both(tmp_path: Path, variable: str, value: str) -> None:
    """Refused by the local stack and by the image (exit 64, before nginx), with one message
    that names the variable."""
    with pytest.raises(GatewayConfigError, match=variable) as refused:
        GatewayLimits.from_env({variable: value})
    assert refused.value.variable == variable
    done = entrypoint_render(tmp_path, {variable: value})
    assert done.returncode == 64, done.stderr
    assert done.stderr.splitlines() == [f"gateway: {refused.value}"]
    assert not (tmp_path / "nginx.conf").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_WORKERS", "2; daemon on"),
        ("GATEWAY_WORKERS", "0"),
        ("GATEWAY_LISTEN", "8080 ssl"),
        ("GATEWAY_LISTEN", "70000"),
        ("GATEWAY_LISTEN", "127.0.0.1:8080;"),
        ("GATEWAY_RESOLVE_SECONDS", "soon"),
        ("GATEWAY_RESOLVE_SECONDS", "-1"),
        ("GATEWAY_RUN_DIR", "/tmp/gw; include /etc/passwd"),
        ("GATEWAY_WEB_ROOT", "/srv/$host"),
        ("ICE_UPSTREAM", "ice-service"),
        ("SIGNAL_UPSTREAM", "signal-service:8201 backup"),
        ("RELAY_UPSTREAM", "relay-service:0"),
    ],
)
def test_malformed_image_settings_are_refused(tmp_path: Path, variable: str, value: str) -> None:
    """What only the image reads from its environment is checked as strictly (it is pasted into
    the config too); the local stack passes its own values, through the same checks."""
    done = entrypoint_render(tmp_path, {variable: value})
    assert done.returncode == 64, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"gateway: {variable} must be ") and line.endswith(f"got: {value!r}")
    assert not (tmp_path / "nginx.conf").exists()


def test_local_renderer_checks_what_it_pastes(tmp_path: Path) -> None:
    ports = StackPorts(gateway=free_port())
    with pytest.raises(GatewayConfigError, match="GATEWAY_RUN_DIR"):
        render_gateway(tmp_path / "a b", ports)
    with pytest.raises(GatewayConfigError, match="GATEWAY_WEB_ROOT"):
        render_gateway(tmp_path, ports, web_root=tmp_path / "web;")
    with pytest.raises(GatewayConfigError, match="GATEWAY_WORKERS"):
        render_gateway(tmp_path, ports, workers=0)


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.0/8",
        "192.168.1.7",
        "192.168.1.7/32",
        "100.64.0.0/10",
        "0.0.0.0/1",
        "::1",
        "2001:db8::/32",
        "2001:DB8:0:0:0:0:0:0/64",
        "fe80::/10",
        "1:2:3:4:5:6::/96",
        "::3:4:5:6:7:8",
        "2001:db8::8000/113",
        "10.0.0.0/08",
    ],
)
def test_real_ip_from_accepted_by_both(tmp_path: Path, value: str) -> None:
    """Both accept the same addresses and networks, rendered as given (lower case)."""
    local, image = render_both(tmp_path, {"GATEWAY_REAL_IP_FROM": value, "GATEWAY_DEMO": "true"})
    assert f"    set_real_ip_from {value.lower()};" in local.splitlines()
    assert_same_conf(local, image)
    check = nginx_test(tmp_path, local)
    assert check.returncode == 0, check.stderr


def test_local_stack_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`rtcctl local prepare` (make run / make up) renders the GATEWAY_* of its environment."""
    from rtcctl.local import prepare

    monkeypatch.setenv("GATEWAY_RATE_LIMIT", "off")
    monkeypatch.setenv("GATEWAY_CONN_LIMIT", "off")
    monkeypatch.setenv("GATEWAY_SEND_TIMEOUT", "45s")
    monkeypatch.setenv("GATEWAY_REAL_IP_FROM", "10.1.0.0/16")
    monkeypatch.setenv("GATEWAY_DEMO", "false")
    prepare(tmp_path / "run", StackPorts(gateway=free_port()))
    conf = (tmp_path / "run" / "nginx.conf").read_text()
    assert conf.count('default "";') == 2 and "send_timeout 45s;" in conf
    assert "set_real_ip_from 10.1.0.0/16;" in conf and "default off;" in conf
