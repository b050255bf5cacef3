"""The gateway's edge, through real nginx configured both ways (rtcctl's local stack and the
image's entrypoint, one renderer: rtc_gateway): the client address behind a load balancer
(GATEWAY_REAL_IP_FROM), the headers every proxied location sends (Socket.IO included), the demo
page's headers and switch (GATEWAY_DEMO), and JSON answers to requests nginx cannot parse.

The upstream is a small in-process aiohttp app that records the headers it is sent.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from rtc_gateway import TEMPLATE as GATEWAY_TEMPLATE
from rtc_gateway import GatewayLimits
from rtc_testkit.processes import REPO_ROOT, Gateway, HttpServer, ProcessGroup, free_port, wait_for
from rtcctl.local import WEB_ROOT

SPOOFED = {"X-Forwarded-For": "198.51.100.66", "X-Real-IP": "198.51.100.66"}
REQUEST_ID = "hardening-trace-0001"
CSP = "default-src 'self'; frame-ancestors 'none'"


@dataclass
class Recorder:
    """The upstream of every service: answers 200 (or a websocket) and keeps what it was sent."""

    port: int = 0
    seen: list[tuple[str, Mapping[str, str]]] = field(default_factory=list)

    def last(self, prefix: str) -> Mapping[str, str]:
        found = [headers for path, headers in self.seen if path.startswith(prefix)]
        assert found, f"nothing reached the upstream under {prefix}: {self.seen}"
        return found[-1]


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()

    async def handle(request: web.Request) -> web.StreamResponse:
        rec.seen.append((request.path, request.headers.copy()))
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str("open")
            await ws.close()
            return ws
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    try:
        yield rec
    finally:
        await runner.cleanup()


class ImageGateway(HttpServer):
    """gateway/entrypoint.py itself (the image's, run as the image runs it: no site-packages),
    exec'ing the real nginx on a free port; no re-resolving loop."""

    def __init__(self, workdir: Path, upstream_port: int, env: Mapping[str, str]):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        upstream = f"127.0.0.1:{upstream_port}"
        full = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "GATEWAY_TEMPLATE": str(GATEWAY_TEMPLATE),
            "GATEWAY_RUN_DIR": str(workdir),
            "GATEWAY_RESOLVE_SECONDS": "0",
            "NGINX": shutil.which("nginx") or "/usr/sbin/nginx",
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "GATEWAY_WORKERS": "1",
            "GATEWAY_WEB_ROOT": str(WEB_ROOT),
            "ICE_UPSTREAM": upstream,
            "SIGNAL_UPSTREAM": upstream,
            "RELAY_UPSTREAM": upstream,
            **env,
        }
        super().__init__(
            f"image-gateway:{self.port}",
            [sys.executable, "-S", str(REPO_ROOT / "gateway" / "entrypoint.py")],
            workdir / "gateway.log",
            full,
        )


@pytest.fixture
def group() -> Iterator[ProcessGroup]:
    with ProcessGroup() as processes:
        yield processes


def local_gateway(
    group: ProcessGroup, workdir: Path, rec: Recorder, limits: GatewayLimits | None = None
) -> Gateway:
    return group.start(
        Gateway(workdir, ice=[rec.port], signal=[rec.port], relay=[rec.port], limits=limits)
    )


async def fetch(
    url: str, *, local_addr: str | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, Mapping[str, str], Any]:
    connector = aiohttp.TCPConnector(local_addr=(local_addr, 0)) if local_addr else None
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers=headers, allow_redirects=False) as response,
    ):
        text = await response.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        return response.status, response.headers, body


def assert_envelope(
    status: int, headers: Mapping[str, str], body: Any, expected: int, code: str
) -> None:
    assert status == expected, body
    assert headers["Content-Type"].startswith("application/json"), headers
    assert isinstance(body, dict) and set(body) == {"error", "message", "requestId"}, body
    assert body["error"] == code, body


# -- the client address behind a load balancer --------------------------------------------------


async def test_real_ip_from_a_trusted_balancer(
    tmp_path: Path, group: ProcessGroup, recorder: Recorder
) -> None:
    """Behind a balancer at 127.0.0.1: the client in its X-Forwarded-For is the address the
    services are told, the limits count and the access log shows; from any other peer the
    header is ignored."""
    limits = GatewayLimits(rate_limit=1, rate_burst=1, real_ip_from=("127.0.0.1/32",))
    gw = local_gateway(group, tmp_path / "gw", recorder, limits)
    api = gw.url + "/api/v1/rtc/probe"

    status, _, _ = await fetch(api, headers={"X-Forwarded-For": "203.0.113.7"})
    assert status == 200
    seen = recorder.last("/api/v1/rtc/probe")
    assert (seen["X-Forwarded-For"], seen["X-Real-IP"]) == ("203.0.113.7", "203.0.113.7")
    # A client's own entries come first; the balancer appends the address it saw.
    await fetch(api, headers={"X-Forwarded-For": "198.51.100.66, 203.0.113.8"})
    assert recorder.last("/api/v1/rtc/probe")["X-Forwarded-For"] == "203.0.113.8"
    wait_for(
        lambda: {"203.0.113.7", "203.0.113.8"} <= {e["remote"] for e in gw.access_entries()},
        5,
        what="the real client addresses in the access log",
    )

    # Per-address limit: one client address exhausts its own budget, not another's.
    for _ in range(10):
        if (await fetch(api, headers={"X-Forwarded-For": "203.0.113.9"}))[0] == 429:
            break
    else:
        raise AssertionError("203.0.113.9 was never limited")
    assert (await fetch(api, headers={"X-Forwarded-For": "203.0.113.10"}))[0] == 200

    # A peer that is not the balancer cannot pick its address.
    await fetch(api, local_addr="127.0.0.2", headers={"X-Forwarded-For": "203.0.113.11"})
    assert recorder.last("/api/v1/rtc/probe")["X-Forwarded-For"] == "127.0.0.2"


async def test_without_real_ip_from_the_client_header_is_ignored(
    tmp_path: Path, group: ProcessGroup, recorder: Recorder
) -> None:
    gw = local_gateway(group, tmp_path / "gw", recorder, GatewayLimits(rate_limit=1, rate_burst=1))
    api = gw.url + "/api/v1/rtc/probe"
    assert (await fetch(api, headers={"X-Forwarded-For": "203.0.113.7"}))[0] == 200
    seen = recorder.last("/api/v1/rtc/probe")
    assert (seen["X-Forwarded-For"], seen["X-Real-IP"]) == ("127.0.0.1", "127.0.0.1")
    for _ in range(10):
        if (await fetch(api, headers={"X-Forwarded-For": "203.0.113.9"}))[0] == 429:
            break
    else:
        raise AssertionError("the client was never limited")
    # Another forwarded address is the same client: the same (exhausted) budget.
    assert (await fetch(api, headers={"X-Forwarded-For": "203.0.113.10"}))[0] == 429


@pytest.mark.parametrize(
    ("real_ip_from", "expected"), [("127.0.0.0/8", "203.0.113.7"), ("", "127.0.0.1")]
)
async def test_image_real_ip_from(
    tmp_path: Path, group: ProcessGroup, recorder: Recorder, real_ip_from: str, expected: str
) -> None:
    gw = group.start(ImageGateway(tmp_path, recorder.port, {"GATEWAY_REAL_IP_FROM": real_ip_from}))
    status, _, _ = await fetch(
        gw.url + "/api/v1/rtc/probe", headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert status == 200
    seen = recorder.last("/api/v1/rtc/probe")
    assert (seen["X-Forwarded-For"], seen["X-Real-IP"]) == (expected, expected)


# -- what every proxied location sends --------------------------------------------------------


async def test_socket_io_gets_the_gateway_headers(
    tmp_path: Path, group: ProcessGroup, recorder: Recorder
) -> None:
    """A Socket.IO handshake (polling, then websocket) with a forged X-Forwarded-For reaches
    signal-service with the gateway's client address and the request id."""
    gw = local_gateway(group, tmp_path / "gw", recorder)
    sent = {**SPOOFED, "X-Request-ID": REQUEST_ID}
    status, _, _ = await fetch(gw.url + "/socket.io/?EIO=4&transport=polling", headers=sent)
    assert status == 200
    polling = recorder.last("/socket.io/")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(gw.url + "/socket.io/?EIO=4&transport=websocket", headers=sent) as ws,
    ):
        assert (await ws.receive_str(timeout=5)) == "open"
    websocket = recorder.last("/socket.io/")
    assert websocket["Upgrade"].lower() == "websocket"
    for seen in (polling, websocket):
        assert seen["X-Forwarded-For"] == "127.0.0.1", seen
        assert seen["X-Real-IP"] == "127.0.0.1", seen
        assert seen["X-Request-ID"] == REQUEST_ID, seen
        assert seen["X-Forwarded-Proto"] == "http", seen
        assert seen["Host"] == "127.0.0.1", seen  # $host: the name, without the port


async def test_only_socket_io_is_upgraded(
    tmp_path: Path, group: ProcessGroup, recorder: Recorder
) -> None:
    gw = local_gateway(group, tmp_path / "gw", recorder)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", **SPOOFED}
    for path in ("/api/v1/rtc/probe", "/api/v1/signal/probe", "/api/v1/relay/probe"):
        assert (await fetch(gw.url + path, headers=headers))[0] == 200
        seen = recorder.last(path)
        assert "Upgrade" not in seen and "Connection" not in seen, seen
        assert seen["X-Forwarded-For"] == "127.0.0.1", seen


def test_no_location_sets_its_own_proxy_headers() -> None:
    """nginx inherits the server's proxy_set_header only into locations that have none."""
    depth, in_location, offenders = 0, 0, []
    for number, line in enumerate(GATEWAY_TEMPLATE.read_text().splitlines(), 1):
        code = line.split("#", 1)[0].strip()
        if re.match(r"location\b", code):
            in_location = depth + 1
        if in_location and code.startswith("proxy_set_header"):
            offenders.append(number)
        depth += code.count("{") - code.count("}")
        if in_location and depth < in_location:
            in_location = 0
    assert not offenders, f"proxy_set_header inside a location, lines {offenders}"
    assert GATEWAY_TEMPLATE.read_text().count("proxy_set_header X-Forwarded-For") == 1


# -- the demo page ----------------------------------------------------------------------------


def assert_demo_headers(headers: Mapping[str, str]) -> None:
    assert headers["Content-Security-Policy"] == CSP
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_demo_headers_and_switch_local(
    tmp_path: Path, group: ProcessGroup, recorder: Recorder
) -> None:
    gw = local_gateway(group, tmp_path / "on", recorder)  # the local stack: on by default
    for path in ("/demo/", "/demo/demo.js", "/demo/rtc-sdk.js", "/demo/demo.css"):
        status, headers, _ = await fetch(gw.url + path)
        assert status == 200, path
        assert_demo_headers(headers)
    status, headers, body = await fetch(gw.url + "/demo/missing.js")
    assert_envelope(status, headers, body, 404, "not_found")
    off = local_gateway(group, tmp_path / "off", recorder, GatewayLimits(demo=False))
    for path in ("/demo", "/demo/", "/demo/demo.js"):
        status, headers, body = await fetch(off.url + path)
        assert_envelope(status, headers, body, 404, "not_found")


@pytest.mark.parametrize("demo", [None, "false", "true", "TRUE"])
async def test_demo_switch_image(
    tmp_path: Path, group: ProcessGroup, recorder: Recorder, demo: str | None
) -> None:
    """The image serves /demo/ only when GATEWAY_DEMO is true."""
    env = {} if demo is None else {"GATEWAY_DEMO": demo}
    gw = group.start(ImageGateway(tmp_path, recorder.port, env))
    status, headers, body = await fetch(gw.url + "/demo/")
    if demo in ("true", "TRUE"):
        assert status == 200 and "<html" in body
        assert_demo_headers(headers)
    else:
        assert_envelope(status, headers, body, 404, "not_found")


def test_demo_page_needs_nothing_the_csp_blocks() -> None:
    """default-src 'self': no inline script, style or handler, no eval, nothing from elsewhere
    (the page itself is driven in Chromium by test_browser_e2e.py)."""
    html = (WEB_ROOT / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>", html, re.I)
    assert scripts and all(re.search(r"\bsrc=", attrs) for attrs in scripts), scripts
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=|javascript:", html, re.I)
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", html, re.I)
    for name in ("demo.js", "rtc-sdk.js", "vendor/socket.io.esm.min.js"):
        text = (WEB_ROOT / name).read_text()
        assert not re.search(r"\beval\(|new Function\(|setAttribute\(\s*['\"]style", text), name
    assert "url(" not in (WEB_ROOT / "demo.css").read_text()


# -- requests nginx cannot parse --------------------------------------------------------------


MALFORMED = [
    (b"GET /demo/..%2f..%2fetc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request"),
    (b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request"),
    (b"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request"),
    (b"GET /demo/%00 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request"),
    (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request"),
    (b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request"),
    (b"GET http://[bad/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request"),
    (b"GARBAGE\r\n\r\n", 400, "malformed request"),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "malformed request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "malformed request"),
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505, "unsupported HTTP version"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request line too long"),
]


def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str], Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().title()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body)


async def test_malformed_requests_get_a_json_answer(
    tmp_path: Path, group: ProcessGroup, recorder: Recorder
) -> None:
    """Raw over a socket: a request line or header nginx refuses is a JSON error, never the
    500 of a failed error page."""
    gw = local_gateway(group, tmp_path / "gw", recorder)
    for data, status, message in MALFORMED:
        code, headers, body = raw_request(gw.port, data)
        assert_envelope(code, headers, body, status, "invalid_payload")
        assert body["message"] == message, data[:60]
    assert not recorder.seen  # nothing reached a service
    assert "empty URI" not in gw.log_text()


async def test_malformed_request_through_the_image(
    tmp_path: Path, group: ProcessGroup, recorder: Recorder
) -> None:
    gw = group.start(ImageGateway(tmp_path, recorder.port, {}))
    code, raw_headers, body = raw_request(gw.port, MALFORMED[0][0])
    assert_envelope(code, raw_headers, body, 400, "invalid_payload")
    # The internal error locations are not routes.
    status, headers, body = await fetch(gw.url + "/_rtc/bad-request")
    assert_envelope(status, headers, body, 404, "not_found")
