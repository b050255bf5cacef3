"""Auth across ice-service, relay-service and the signaling socket, through the real gateway.

One stack (redis, ice, relay, signal, nginx) whose services verify JWTs with a current key and a
previous one (JWT_SECRET_PREVIOUS: a rotation in progress), allow one browser origin, and accept
Bearer only under /api/v1/ (the legacy prefixes are outside the whitelist here). Every case is a
real request or a real Socket.IO handshake.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from rtc_gateway import GatewayLimits
from rtc_testkit.contract import JWT_SECRET, make_token, new_wallet
from rtc_testkit.peer import Peers
from rtc_testkit.stack import Stack, StackSpec, start_stack

OLD_SECRET = "jwt-secret-being-retired-0123456789abcdef"
ORIGIN = "http://app.example"
EVIL = "http://evil.example"
V1_ONLY = r"^/api/v1/(?:relay|signal|rtc)(?:/.*)?$"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    spec = StackSpec(
        ice=1,
        signal=1,
        relay=1,
        env={
            "JWT_SECRET_PREVIOUS": OLD_SECRET,
            "ALLOWED_ORIGINS": ORIGIN,
            "BEARER_ROUTE_WHITELIST": V1_ONLY,
        },
        ice_env={"ICE_ALLOW_ANONYMOUS": "true"},
        # The per-address rate and connection limits have their own tests
        # (test_gateway_limits); here a fast run sends more than their burst from one address.
        gateway_limits=GatewayLimits.off(),
    )
    with start_stack(spec, tmp_path_factory.mktemp("security")) as stack:
        yield stack


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tokens(wallet: str) -> dict[str, str]:
    """Every kind of token the matrix tries, for one wallet."""
    exp = int(time.time()) + 600
    header, _payload, signature = make_token(wallet).split(".")
    tampered = b64url(json.dumps({"wallet": wallet, "exp": exp + 3600, "admin": True}).encode())
    none_header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"wallet": wallet, "exp": exp}).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        hs512 = make_token(wallet, algorithm="HS512")
    return {
        "current_key": make_token(wallet),
        "previous_key": make_token(wallet, secret=OLD_SECRET),
        "unknown_key": make_token(wallet, secret="never-configured-secret-0123456789abcdef"),
        "expired": make_token(wallet, expires_in=-60),
        "expired_previous_key": make_token(wallet, secret=OLD_SECRET, expires_in=-60),
        "alg_none": f"{none_header}.{claims}.",
        "tampered_payload": f"{header}.{tampered}.{signature}",
        "hs512_not_pinned": hs512,
    }


ACCEPTED = {"current_key", "previous_key"}
KINDS = list(tokens("0xabc"))


async def request(
    stack: Stack,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    local_addr: str | None = None,
    base_url: str | None = None,
) -> tuple[int, Any, Any]:
    connector = aiohttp.TCPConnector(local_addr=(local_addr, 0)) if local_addr else None
    async with (
        aiohttp.ClientSession(connector=connector, cookies=cookies) as session,
        session.request(
            method,
            (base_url or stack.gateway.url) + path,
            json=body,
            headers=headers or {},
        ) as response,
    ):
        text = await response.text()
        return response.status, response.headers, json.loads(text) if text else None


def http_endpoints(stack: Stack, wallet: str, prefix: str = "/api/v1") -> list[tuple[str, ...]]:
    """(name, method, path, expected 2xx) for every HTTP route; bodies from `body_for`."""
    return [
        ("ice", "GET", f"{prefix}/rtc/ice", "200"),
        ("telemetry", "POST", f"{prefix}/rtc/telemetry", "204"),
        ("relay_enqueue", "POST", f"{prefix}/relay/enqueue", "202"),
        ("relay_pull", "GET", f"{prefix}/relay/pull", "200"),
        ("relay_ack", "POST", f"{prefix}/relay/ack", "200"),
    ]


def body_for(stack: Stack, name: str, wallet: str) -> Any:
    if name == "telemetry":
        return {"transport": "rtc"}
    if name == "relay_ack":
        return {"ids": ["1-0"]}
    if name == "relay_enqueue":
        peer = new_wallet()
        stack.add_contacts(wallet, peer)
        return {
            "to": peer,
            "convId": ":".join(sorted((wallet, peer))),
            "messageId": uuid.uuid4().hex,
            "payload": "hi",
        }
    return None


async def handshake(
    peers: Peers, url: str, *, auth: Any = None, headers: dict[str, str] | None = None
) -> str | None:
    """A new socket's handshake (no auth unless given): None when connected, else the code."""
    return await peers().try_connect(url, auth=auth, headers=headers)


# -- expired / forged / none / rotated keys, on every route and the socket ------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_token_matrix(stack: Stack, peers: Peers, kind: str) -> None:
    outcomes: dict[str, Any] = {}
    for name, method, path, ok in http_endpoints(stack, "unused"):
        wallet = new_wallet()
        token = tokens(wallet)[kind]
        status, _, body = await request(
            stack,
            method,
            path,
            body=body_for(stack, name, wallet),
            headers={"Authorization": f"Bearer {token}"},
        )
        if kind in ACCEPTED:
            outcomes[name] = status == int(ok) or (status, body)
        else:
            outcomes[name] = (status, body and body.get("error")) == (401, "unauthorized") or (
                status,
                body,
            )
    wallet = new_wallet()
    refusal = await handshake(peers, stack.gateway.url, auth={"token": tokens(wallet)[kind]})
    outcomes["socket"] = refusal is None if kind in ACCEPTED else refusal == "unauthorized"
    assert all(v is True for v in outcomes.values()), outcomes


async def test_no_credentials(stack: Stack, peers: Peers) -> None:
    for name, method, path, _ in http_endpoints(stack, "unused"):
        status, _, body = await request(stack, method, path, body=body_for(stack, name, "0xa"))
        if name == "ice":  # anonymous ICE is on in this stack: credentials for `anon`
            assert status == 200 and body["iceServers"][-1]["username"].endswith(":anon")
        else:
            assert (status, body["error"]) == (401, "unauthorized"), name
    assert await handshake(peers, stack.gateway.url) == "unauthorized"
    assert await handshake(peers, stack.gateway.url, auth={"token": 42}) == ("unauthorized")


# -- CSRF: cookie auth needs the double-submit header (HTTP) or an allowed Origin (socket) ----


async def test_csrf_on_every_route_and_the_socket(stack: Stack, peers: Peers) -> None:
    for name, method, path, ok in http_endpoints(stack, "unused"):
        wallet = new_wallet()
        cookies = {"access_token": make_token(wallet), "csrf_token": "csrf-abc"}
        for csrf_header in (None, "csrf-other", ""):
            headers: dict[str, str] = {} if csrf_header is None else {"X-CSRF-Token": csrf_header}
            status, _, body = await request(
                stack,
                method,
                path,
                body=body_for(stack, name, wallet),
                headers=headers,
                cookies=cookies,
            )
            assert (status, body["error"]) == (403, "csrf_failed"), (name, csrf_header)
        status, _, body = await request(
            stack,
            method,
            path,
            body=body_for(stack, name, wallet),
            headers={"X-CSRF-Token": "csrf-abc", "Origin": ORIGIN},
            cookies=cookies,
        )
        assert status == int(ok), (name, body)

    cookie = {"Cookie": f"access_token={make_token(new_wallet())}"}
    url = stack.gateway.url
    assert await handshake(peers, url, headers=cookie) == "csrf_failed"
    # A foreign page: engine.io refuses the origin before any Socket.IO packet.
    assert await handshake(peers, url, headers={**cookie, "Origin": EVIL}) == "refused"
    browser = peers()
    refusal = await browser.try_connect(url, auth=None, headers={**cookie, "Origin": ORIGIN})
    assert refusal is None, browser.connect_errors


# -- CORS preflight from an unknown origin --------------------------------------------------


async def test_cors_preflight_from_unknown_origin(stack: Stack) -> None:
    for name, _, path, _ in http_endpoints(stack, "unused"):
        preflight = {"Access-Control-Request-Method": "POST", "Origin": EVIL}
        status, headers, body = await request(stack, "OPTIONS", path, headers=preflight)
        assert (status, body["error"]) == (403, "forbidden"), name
        assert not any(h.lower().startswith("access-control-") for h in headers), name
        allowed = {**preflight, "Origin": ORIGIN, "Access-Control-Request-Headers": "X-CSRF-Token"}
        status, headers, _ = await request(stack, "OPTIONS", path, headers=allowed)
        assert status == 204, name
        assert headers["Access-Control-Allow-Origin"] == ORIGIN
        assert headers["Access-Control-Allow-Credentials"] == "true"
        assert "X-CSRF-Token" in headers["Access-Control-Allow-Headers"]
    # The socket's polling transport, the same rule (python-engineio's CORS).
    for origin, allowed_origin in ((EVIL, None), (ORIGIN, ORIGIN)):
        _, headers, _ = await request(
            stack,
            "OPTIONS",
            "/socket.io/?EIO=4&transport=polling",
            headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
        )
        assert headers.get("Access-Control-Allow-Origin") == allowed_origin


# -- Bearer outside the whitelist -----------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/api/rtc", "/api/relay", "/api/rtc/v1"])
async def test_bearer_outside_the_whitelist(stack: Stack, prefix: str) -> None:
    """The legacy prefixes are outside BEARER_ROUTE_WHITELIST here: Bearer is refused on them,
    cookie + CSRF works, and the same token works under /api/v1/."""
    routes = [
        (name, method, path.replace("/api/v1/rtc", "/api/rtc").replace("/api/v1/relay", prefix))
        for name, method, path, _ in http_endpoints(stack, "unused")
        if path.startswith("/api/v1/relay" if prefix == "/api/relay" else "/api/v1/rtc")
    ]
    if prefix == "/api/rtc/v1":
        routes = [(n, m, p.replace("/api/rtc/", "/api/rtc/v1/")) for n, m, p in routes]
    assert routes
    for name, method, path in routes:
        wallet = new_wallet()
        token = make_token(wallet)
        status, _, body = await request(
            stack,
            method,
            path,
            body=body_for(stack, name, wallet),
            headers={"Authorization": f"Bearer {token}"},
        )
        assert (status, body["error"]) == (401, "unauthorized"), path
        assert "not allowed on this route" in body["message"]
        status, _, body = await request(
            stack,
            method,
            path,
            body=body_for(stack, name, wallet),
            headers={"X-CSRF-Token": "c1"},
            cookies={"access_token": token, "csrf_token": "c1"},
        )
        assert status < 300, (path, body)


# -- X-Forwarded-For from a peer that is not a trusted proxy ----------------------------------


async def test_spoofed_forwarded_for_from_a_non_gateway_peer(stack: Stack) -> None:
    """Anonymous ICE is limited per client address (10 a minute). Straight to ice-service from
    127.0.0.2 (not in TRUSTED_PROXIES) a made-up X-Forwarded-For is ignored: every request is
    counted under 127.0.0.2. From 127.0.0.1 (the gateway's address) it is believed."""
    statuses = []
    for index in range(11):
        status, _, _ = await request(
            stack,
            "GET",
            "/api/v1/rtc/ice",
            headers={"X-Forwarded-For": f"203.0.113.{index}"},
            local_addr="127.0.0.2",
            base_url=stack.ice.url,
        )
        statuses.append(status)
    assert statuses == [200] * 10 + [429]
    # The same addresses are fresh budgets when a trusted proxy reports them.
    status, _, _ = await request(
        stack,
        "GET",
        "/api/v1/rtc/ice",
        headers={"X-Forwarded-For": "203.0.113.0"},
        local_addr="127.0.0.1",
        base_url=stack.ice.url,
    )
    assert status == 200


# -- one user reading or acking another's relay queue ----------------------------------------


async def test_relay_queue_is_private(stack: Stack, peers: Peers) -> None:
    a, b, c = new_wallet(), new_wallet(), new_wallet()
    stack.add_contacts(a, b)

    def bearer(wallet: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(wallet)}"}

    ids = []
    for n in range(2):
        status, _, body = await request(
            stack,
            "POST",
            "/api/v1/relay/enqueue",
            body={
                "to": b,
                "convId": ":".join(sorted((a, b))),
                "messageId": f"m{n}",
                "payload": "p",
            },
            headers=bearer(a),
        )
        assert status == 202
        ids.append(body["id"])
    # C (and A, the sender) can neither read nor ack B's queue, over HTTP or the socket.
    for intruder in (c, a):
        _, _, body = await request(stack, "GET", "/api/v1/relay/pull", headers=bearer(intruder))
        assert body == {"messages": [], "more": False}
        _, _, body = await request(
            stack, "POST", "/api/v1/relay/ack", body={"ids": ids}, headers=bearer(intruder)
        )
        assert body == {"acked": 0}
        socket = peers(intruder)
        assert await socket.try_connect(stack.gateway.url) is None
        assert await socket.call("relay:ack", {"ids": ids}) == {"acked": 0}
    # A `from`/`wallet` in the body or query never selects a queue.
    _, _, body = await request(
        stack, "GET", f"/api/v1/relay/pull?wallet={b}&to={b}", headers=bearer(c)
    )
    assert body["messages"] == []
    _, _, body = await request(stack, "GET", "/api/v1/relay/pull", headers=bearer(b))
    assert [m["id"] for m in body["messages"]] == ids
    _, _, body = await request(
        stack, "POST", "/api/v1/relay/ack", body={"ids": ids}, headers=bearer(b)
    )
    assert body == {"acked": 2}


# -- the logs of everything above ------------------------------------------------------------


def test_refused_tokens_never_reach_a_log(stack: Stack) -> None:
    """Runs last in this module: no JWT (accepted or refused) and no key in any log line."""
    logs = {
        "ice": stack.ice.log_text(),
        "relay": stack.relay.log_text(),
        "signal": stack.signal.log_text(),
        "gateway-access": stack.gateway.access_log.read_text(),
        "gateway-error": stack.gateway.log_text(),
        "redis": stack.redis.log_text(),
    }
    for name, text in logs.items():
        assert "eyJ" not in text, f"a JWT (or part of one) is in the {name} log"
        for secret in (JWT_SECRET, OLD_SECRET):
            assert secret not in text, name
        assert "Traceback" not in text, name
