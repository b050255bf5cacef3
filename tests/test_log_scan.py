"""A full end-to-end run, then every log line of every process is scanned for secrets.

The stack: redis, coturn, a Twilio stand-in (tests/twilio_stub.py, in this process), two
ice-services (Twilio with coturn as the fallback; coturn), signal-service, relay-service and the
nginx gateway, all at LOG_LEVEL=DEBUG. The run: ICE from Twilio and from coturn (Bearer and
cookie auth), a TURN allocation, offer/answer/candidate between two sockets, relay
enqueue/push/pull/ack, refused tokens (expired, forged, in a query string). No log may contain
a JWT, a TURN credential, the TURN secret, the JWT secret or the Twilio API secret (nor its
Basic header).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aioice.turn import create_turn_endpoint
from helpers import (
    JWT_SECRET,
    TURN_SECRET,
    Coturn,
    Gateway,
    RedisServer,
    ServiceProcess,
    add_contacts,
    base_env,
    make_token,
    signal_env,
    wait_for_async,
)
from rtc_common.directory import REDIS_FLAGS_KEY
from twilio_stub import TwilioStub

A, B = "0xa5ca11", "0xb5ca11"
FORGED_SECRET = "forged-secret-0123456789abcdef-0123"
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}")


async def test_no_secret_in_any_log_of_a_full_run(tmp_path: Path, aiohttp_server: Any) -> None:
    stub = TwilioStub()
    server = await aiohttp_server(stub.app())
    stub.base_url = str(server.make_url("/")).rstrip("/")
    seen: set[str] = {JWT_SECRET, TURN_SECRET, stub.api_secret}
    seen.add(base64.b64encode(f"{stub.api_key}:{stub.api_secret}".encode()).decode())
    started: list[Any] = []
    sockets: list[socketio.AsyncClient] = []
    try:
        redis = RedisServer(tmp_path / "redis")
        redis.start()
        started.append(redis)
        redis.client().hset(REDIS_FLAGS_KEY, "rtc.ice", "1")
        add_contacts(redis, A, B)
        coturn = Coturn(tmp_path / "coturn")
        coturn.start()
        started.append(coturn)
        common = {"LOG_LEVEL": "DEBUG", "ALLOWED_ORIGINS": "http://app.example"}
        ice = ServiceProcess(
            "ice_service",
            tmp_path / "ice",
            base_env(
                redis.url,
                RTC_PROVIDER="twilio",
                RTC_PROVIDER_FALLBACK="coturn",
                **stub.env(),
                TURN_URIS=coturn.uris,
                **common,
            ),
        )
        # A second ice-service on coturn only, asked directly (the Twilio token above is reused
        # while half its life remains, so the fallback would not be reached through the first).
        ice_coturn = ServiceProcess(
            "ice_service",
            tmp_path / "ice-coturn",
            base_env(redis.url, TURN_URIS=coturn.uris, **common),
        )
        signal = ServiceProcess(
            "signal_service", tmp_path / "signal", signal_env(redis.url, **common)
        )
        relay = ServiceProcess("relay_service", tmp_path / "relay", base_env(redis.url, **common))
        for process in (ice, ice_coturn, signal, relay):
            # Started without blocking the loop: the stub answers on this loop meanwhile.
            await asyncio.to_thread(process.start)
            started.append(process)
        gateway = Gateway(
            tmp_path / "gateway", ice=[ice.port], signal=[signal.port], relay=[relay.port]
        )
        await asyncio.to_thread(gateway.start)
        started.append(gateway)

        def token(wallet: str, **kwargs: Any) -> str:
            value = make_token(wallet, **kwargs)
            seen.add(value)
            return value

        async with aiohttp.ClientSession() as http:

            async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
                async with http.request(method, gateway.url + path, **kwargs) as response:
                    return response.status, await response.json(content_type=None)

            def bearer(wallet: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {token(wallet)}"}

            # ICE from Twilio (Bearer, then cookie + CSRF), then from coturn when Twilio fails.
            status, body = await call("GET", "/api/v1/rtc/ice", headers=bearer(A))
            assert status == 200 and body["provider"] == "twilio", body
            status, body = await call(
                "GET",
                "/api/rtc/ice",
                headers={
                    "X-CSRF-Token": "csrf-1",
                    "Cookie": f"access_token={token(B)}; csrf_token=csrf-1",
                },
            )
            assert status == 200, body
            async with http.get(ice_coturn.url + "/api/v1/rtc/ice", headers=bearer(A)) as resp:
                body = await resp.json()
            assert body["provider"] == "coturn", body
            turn = body["iceServers"][-1]
            transport, _ = await create_turn_endpoint(
                asyncio.DatagramProtocol,
                server_addr=("127.0.0.1", coturn.port),
                username=turn["username"],
                password=turn["credential"],
                transport="udp",
            )
            transport.close()
            seen.add(turn["credential"])
            for issued in stub.issued:
                seen.update((issued.username, issued.credential))
            status, _ = await call(
                "POST", "/api/v1/rtc/telemetry", json={"transport": "relay"}, headers=bearer(A)
            )
            assert status == 204

            # Signaling between two sockets, and the relay with its push.
            received: list[tuple[str, Any]] = []
            for wallet in (A, B):
                sio = socketio.AsyncClient(reconnection=False)
                sockets.append(sio)

                @sio.on("*")
                async def record(event: str, data: Any = None) -> None:
                    received.append((event, data))

                await sio.connect(
                    gateway.url,
                    auth={"token": token(wallet)},
                    transports=["websocket"],
                    wait_timeout=5,
                )
            conv = f"{A}:{B}"
            sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
            for event, data in (
                ("rtc:offer", {"sdp": {"type": "offer", "sdp": sdp}}),
                ("rtc:answer", {"sdp": {"type": "answer", "sdp": sdp}}),
                ("rtc:candidate", {"candidate": {"candidate": "", "sdpMid": "0"}}),
            ):
                ack = await sockets[0].call(event, {"convId": conv, "to": B, **data}, timeout=5)
                assert ack["ok"] is True, ack
            status, body = await call(
                "POST",
                "/api/v1/relay/enqueue",
                json={"to": B, "convId": conv, "messageId": "m1", "payload": "secret words"},
                headers=bearer(A),
            )
            assert status == 202, body

            async def pushed() -> bool:
                return any(event == "relay:message" for event, _ in received)

            await wait_for_async(pushed, 5, what="relay:message push")
            status, body = await call("GET", "/api/v1/relay/pull", headers=bearer(B))
            assert [m["messageId"] for m in body["messages"]] == ["m1"]
            ack = await sockets[1].call("relay:ack", {"ids": [body["messages"][0]["id"]]})
            assert ack == {"acked": 1}

            # Refused credentials: expired, forged, and a token in a query string.
            for headers in (
                {"Authorization": f"Bearer {token(A, expires_in=-30)}"},
                {"Authorization": f"Bearer {token(A, secret=FORGED_SECRET)}"},
            ):
                status, _ = await call("GET", "/api/v1/relay/pull", headers=headers)
                assert status == 401
            status, _ = await call("GET", f"/api/v1/rtc/ice?token={token(A)}&credential=x")
            assert status == 401
            refused = socketio.AsyncClient(reconnection=False)
            with contextlib.suppress(socketio.exceptions.ConnectionError):
                await refused.connect(
                    gateway.url,
                    auth={"token": token(A, expires_in=-30)},
                    transports=["websocket"],
                    wait_timeout=5,
                )
    finally:
        for sio in sockets:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sio.disconnect(), 5)
        for component in reversed(started):
            await asyncio.to_thread(component.stop)

    logs = {
        str(path.relative_to(tmp_path)): path.read_text(errors="replace")
        for path in tmp_path.rglob("*.log")
    }
    assert {"ice", "signal", "relay", "gateway", "coturn", "redis"} <= {
        name.split("/")[0] for name in logs
    }, sorted(logs)
    assert any('"path":"/api/v1/relay/enqueue"' in text for text in logs.values())
    assert len(seen) >= 10  # (equal tokens made in the same second count once)
    for name, text in logs.items():
        for secret in seen:
            assert secret not in text, f"a secret or credential is in {name}"
        match = JWT_SHAPE.search(text)
        assert match is None, f"a JWT is in {name}: {match.group(0)[:12]}..."
