"""A full end-to-end run, then every log line of every process is scanned for secrets.

The stack: redis, coturn, a Twilio stand-in (rtc_testkit.twilio, in this process), two
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
import re
from pathlib import Path
from typing import Any

import aiohttp
from rtc_testkit.contract import JWT_SECRET, TURN_SECRET, allocate_relay, make_token
from rtc_testkit.peer import open_peers
from rtc_testkit.stack import StackSpec, start_stack_async
from rtc_testkit.twilio import TwilioStub

A, B = "0xa5ca11", "0xb5ca11"
FORGED_SECRET = "forged-secret-0123456789abcdef-0123"
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}")


async def test_no_secret_in_any_log_of_a_full_run(tmp_path: Path, twilio: TwilioStub) -> None:
    stub = twilio
    seen: set[str] = {JWT_SECRET, TURN_SECRET, stub.api_secret}
    seen.add(base64.b64encode(f"{stub.api_key}:{stub.api_secret}".encode()).decode())
    spec = StackSpec(
        ice=1,
        signal=1,
        relay=1,
        coturn=True,
        env={"LOG_LEVEL": "DEBUG", "ALLOWED_ORIGINS": "http://app.example"},
        ice_env={"RTC_PROVIDER": "twilio", "RTC_PROVIDER_FALLBACK": "coturn", **stub.env()},
        contacts=((A, B),),
    )
    async with start_stack_async(spec, tmp_path) as stack, open_peers() as peers:
        gateway, coturn = stack.gateway, stack.coturn
        # A second ice-service on coturn only, asked directly (the Twilio token above is reused
        # while half its life remains, so the fallback would not be reached through the first).
        ice_coturn = await asyncio.to_thread(stack.start_service, "ice", "ice-coturn", stack.env())

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
            await allocate_relay(coturn, turn["username"], turn["credential"])
            seen.add(turn["credential"])
            for issued in stub.issued:
                seen.update((issued.username, issued.credential))
            status, _ = await call(
                "POST", "/api/v1/rtc/telemetry", json={"transport": "relay"}, headers=bearer(A)
            )
            assert status == 204

            # Signaling between two sockets, and the relay with its push.
            sockets = [
                await peers.connect(gateway.url, wallet, auth={"token": token(wallet)})
                for wallet in (A, B)
            ]
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

            await sockets[1].wait_event("relay:message")
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
            await peers().try_connect(gateway.url, auth={"token": token(A, expires_in=-30)})

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
