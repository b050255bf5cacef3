"""The Twilio provider of ice-service against a local server that speaks Twilio's Tokens API.

The stub (`rtc_testkit.twilio`) is the only stand-in: the app, its Redis, its HTTP client, the
single-flight and the circuit breaker are the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from conftest import IceClientFactory
from ice_service.providers import TwilioProvider
from ice_service.settings import IceSettings
from prometheus_client import REGISTRY
from rtc_common.logs import JsonFormatter
from rtc_common.settings import SettingsError, load_settings
from rtc_testkit.contract import JWT_SECRET, make_token
from rtc_testkit.processes import wait_for_async
from rtc_testkit.twilio import ACCOUNT_SID, API_KEY, API_SECRET, TwilioStub

ICE = "/api/v1/rtc/ice"
TOKENS_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Tokens.json"
RESPONSE_KEYS = {"iceServers", "ttl", "provider", "serverTime", "expiresAt"}


async def twilio_client(
    ice_client: IceClientFactory, stub: TwilioStub, **overrides: str
) -> TestClient[Any, Any]:
    env = {
        "RTC_PROVIDER": "twilio",
        **stub.env(),
        "TWILIO_TIMEOUT_SECONDS": "5",
    }
    env.update(overrides)
    return await ice_client(**env)


def bearer(wallet: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(wallet)}"}


def iso_seconds(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def waiting_gauge() -> float:
    return REGISTRY.get_sample_value("rtc_ice_upstream_waiting") or 0.0


def assert_ice_unavailable(response: aiohttp.ClientResponse, body: dict[str, Any]) -> None:
    assert response.status == 503, body
    assert set(body) == {"error", "message", "requestId"}
    assert body["error"] == "ice_unavailable"
    assert body["message"] and isinstance(body["message"], str)
    assert body["requestId"] == response.headers["X-Request-ID"]
    assert response.headers["Cache-Control"] == "private, no-store"


def assert_no_twilio_secrets(text: str, headers: Any) -> None:
    basic = base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
    for secret in (ACCOUNT_SID, API_KEY, API_SECRET, basic):
        assert secret not in text
        assert all(secret not in value for value in headers.values())


async def get_ice(client: TestClient[Any, Any], wallet: str) -> tuple[int, dict[str, Any]]:
    async with client.get(ICE, headers=bearer(wallet)) as response:
        return response.status, await response.json()


# 1. The request Twilio documents, and the mapping of its answer.


async def test_tokens_request_and_mapping(ice_client: IceClientFactory, twilio: TwilioStub) -> None:
    def legacy_url_only(body: dict[str, Any]) -> None:
        del body["ice_servers"][3]["urls"]  # an entry carrying only the older `url` field

    twilio.shape = legacy_url_only
    client = await twilio_client(ice_client, twilio, TURN_CRED_TTL="900")
    before = time.time()
    async with client.get(ICE, headers=bearer("0xAbC")) as response:
        text = await response.text()
        headers = response.headers
        status = response.status
    after = time.time()
    assert status == 200, text

    [request] = twilio.requests
    assert request.method == "POST"
    assert request.path == TOKENS_PATH
    expected_auth = base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
    assert request.authorization == f"Basic {expected_auth}"
    assert request.content_type == "application/x-www-form-urlencoded"
    assert request.form == {"Ttl": ["900"]}
    assert request.status == 201

    [token] = twilio.issued
    body = json.loads(text)
    assert set(body) == RESPONSE_KEYS
    assert body["provider"] == "twilio"
    turn = {"username": token.username, "credential": token.credential}
    assert body["iceServers"] == [
        {"urls": "stun:global.stun.twilio.com:3478"},
        {"urls": "turn:global.turn.twilio.com:3478?transport=udp", **turn},
        {"urls": "turn:global.turn.twilio.com:3478?transport=tcp", **turn},
        {"urls": "turn:global.turn.twilio.com:443?transport=tcp", **turn},
    ]

    server_time, expires_at = iso_seconds(body["serverTime"]), iso_seconds(body["expiresAt"])
    assert before - 0.01 <= server_time <= after + 0.01
    assert before - 0.01 <= expires_at - 900 <= after + 0.01
    assert 899 <= body["ttl"] <= 900
    # ttl is what remains, rounded up; both instants are rendered to the millisecond.
    assert body["ttl"] - 1.002 < expires_at - server_time <= body["ttl"] + 0.002

    assert_no_twilio_secrets(text, headers)
    assert "account_sid" not in text and "password" not in text


# 2. The regional host.

TWILIO_ENV = {
    "JWT_SECRET": JWT_SECRET,
    "RTC_PROVIDER": "twilio",
    "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
    "TWILIO_API_KEY": API_KEY,
    "TWILIO_API_SECRET": API_SECRET,
}


@pytest.mark.parametrize(
    ("env", "base_url"),
    [
        ({}, "https://api.twilio.com"),
        ({"TWILIO_REGION": "us1"}, "https://api.twilio.com"),
        ({"TWILIO_REGION": "ie1", "TWILIO_EDGE": "dublin"}, "https://api.dublin.ie1.twilio.com"),
        ({"TWILIO_REGION": "ie1"}, "https://api.dublin.ie1.twilio.com"),
        ({"TWILIO_REGION": "au1"}, "https://api.sydney.au1.twilio.com"),
        (
            {"TWILIO_REGION": "us1", "TWILIO_EDGE": "umatilla"},
            "https://api.umatilla.us1.twilio.com",
        ),
        # Twilio's own clients default the region to us1 when only an edge is given.
        ({"TWILIO_EDGE": "sydney"}, "https://api.sydney.us1.twilio.com"),
        (
            {
                "TWILIO_REGION": "ie1",
                "TWILIO_EDGE": "dublin",
                "TWILIO_API_BASE_URL": "http://127.0.0.1:8089/twilio/",
            },
            "http://127.0.0.1:8089/twilio",
        ),
    ],
)
async def test_regional_host(env: dict[str, str], base_url: str) -> None:
    settings = load_settings(IceSettings, {**TWILIO_ENV, **env})
    assert settings.twilio_base_url == base_url
    async with aiohttp.ClientSession() as session:
        provider = TwilioProvider(settings, session)
        assert provider.url == f"{base_url}{TOKENS_PATH}"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        # The old edge-style ids are no processing regions: api.de1.twilio.com is gone.
        ({"TWILIO_REGION": "de1"}, "Unset TWILIO_REGION"),
        ({"TWILIO_REGION": "sg1"}, "singapore edge"),
        ({"TWILIO_REGION": "br1", "TWILIO_EDGE": "sao-paulo"}, "not a Twilio processing region"),
        ({"TWILIO_REGION": "jp1"}, "tokyo edge"),
        ({"TWILIO_REGION": "us2", "TWILIO_EDGE": "umatilla"}, "TWILIO_REGION=us2"),
        ({"TWILIO_REGION": "zz9"}, "us1, ie1 or au1"),
        ({"TWILIO_REGION": "ie1", "TWILIO_EDGE": "frankfurt"}, "set TWILIO_EDGE=dublin"),
        ({"TWILIO_REGION": "au1", "TWILIO_EDGE": "tokyo"}, "set TWILIO_EDGE=sydney"),
        ({"TWILIO_EDGE": "ie1"}, "set TWILIO_EDGE=dublin"),
        ({"TWILIO_EDGE": "mars"}, "not a Twilio edge"),
    ],
)
def test_regions_that_build_no_working_host_fail_at_load(env: dict[str, str], says: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(IceSettings, {**TWILIO_ENV, **env})
    assert says in str(refused.value), str(refused.value)
    assert API_SECRET not in str(refused.value)


def test_regions_without_network_traversal_are_warned() -> None:
    settings = load_settings(IceSettings, {**TWILIO_ENV, "TWILIO_REGION": "ie1"})
    warnings = [m for m, variables in settings.startup_warnings() if "TWILIO_REGION" in variables]
    assert len(warnings) == 1 and "Network Traversal" in warnings[0]
    plain = load_settings(IceSettings, TWILIO_ENV)
    assert not [v for _, v in plain.startup_warnings() if "TWILIO_REGION" in v]


# 3. Failures: 503 ice_unavailable, or the fallback's answer.

FAILURES = ["timeout", "http_401", "http_500", "garbage", "no_ice_servers", "empty_ice_servers"]


@pytest.mark.parametrize("fallback", [False, True], ids=["no_fallback", "coturn_fallback"])
@pytest.mark.parametrize("failure", FAILURES)
async def test_upstream_failure(
    ice_client: IceClientFactory, twilio: TwilioStub, failure: str, fallback: bool
) -> None:
    overrides = {"TWILIO_TIMEOUT_SECONDS": "0.5"}
    if failure == "timeout":
        twilio.mode = "hang"  # held on `release`, which the fixture sets at teardown
    elif failure == "http_401":
        overrides["TWILIO_API_SECRET"] = "not-the-api-secret"  # the stub answers 401 itself
    else:
        twilio.mode = failure
    if fallback:
        overrides["RTC_PROVIDER_FALLBACK"] = "coturn"
    client = await twilio_client(ice_client, twilio, **overrides)

    started = time.monotonic()
    async with client.get(ICE, headers=bearer("0xF00")) as response:
        body = await response.json()
        elapsed = time.monotonic() - started
        if fallback:
            assert response.status == 200, body
            assert body["provider"] == "coturn"
            assert body["iceServers"][-1]["username"].endswith(":0xf00")
            assert set(body) == RESPONSE_KEYS
        else:
            assert_ice_unavailable(response, body)

    # The stub was reached (the failure is Twilio's answer, not a skipped call) exactly once.
    assert twilio.token_calls == 1
    [request] = twilio.requests
    expected_status = {
        "timeout": None,
        "http_401": 401,
        "http_500": 500,
        "garbage": 201,
        "no_ice_servers": 201,
        "empty_ice_servers": 201,
    }[failure]
    assert request.status == expected_status
    if failure == "timeout":
        assert twilio.received.is_set()
        assert 0.45 <= elapsed < 5, elapsed  # bounded by TWILIO_TIMEOUT_SECONDS


async def test_failure_is_not_reused(ice_client: IceClientFactory, twilio: TwilioStub) -> None:
    twilio.mode = "http_500"
    client = await twilio_client(ice_client, twilio)
    status, _ = await get_ice(client, "0x01")
    assert status == 503
    twilio.mode = "ok"
    status, body = await get_ice(client, "0x01")
    assert status == 200, body
    assert body["provider"] == "twilio"
    assert twilio.token_calls == 2


@pytest.mark.parametrize(
    "missing", ["all", "TWILIO_ACCOUNT_SID", "TWILIO_API_KEY", "TWILIO_API_SECRET"]
)
async def test_twilio_unconfigured(
    ice_client: IceClientFactory, twilio: TwilioStub, missing: str
) -> None:
    names = ["TWILIO_ACCOUNT_SID", "TWILIO_API_KEY", "TWILIO_API_SECRET"]
    blanks = {name: "" for name in (names if missing == "all" else [missing])}
    client = await twilio_client(ice_client, twilio, **blanks)
    async with client.get(ICE, headers=bearer("0xabc")) as response:
        assert_ice_unavailable(response, await response.json())
    # Ready: ice_unavailable is its answer; /healthz/deps says why.
    async with client.get("/readyz") as ready:
        assert ready.status == 200
        report = await ready.json()
    assert report["degraded"] == ["provider"]
    async with client.get("/healthz/deps") as deps:
        dependencies = (await deps.json())["dependencies"]
    assert dependencies["provider"] == {
        "state": "down",
        "since": dependencies["provider"]["since"],
        "required": False,
        "error": "ProviderError",
    }
    assert dependencies["redis"]["state"] == "up"
    assert twilio.requests == []


async def test_twilio_unconfigured_with_fallback(
    ice_client: IceClientFactory, twilio: TwilioStub
) -> None:
    client = await ice_client(RTC_PROVIDER="twilio", RTC_PROVIDER_FALLBACK="coturn")
    status, body = await get_ice(client, "0xabc")
    assert status == 200, body
    assert body["provider"] == "coturn"
    async with client.get("/readyz") as ready:
        assert ready.status == 200
    assert twilio.requests == []


# 4. Single flight.


async def test_concurrent_requests_share_one_upstream_call(
    ice_client: IceClientFactory, twilio: TwilioStub
) -> None:
    twilio.mode = "hold"
    client = await twilio_client(ice_client, twilio, TWILIO_TIMEOUT_SECONDS="30")
    baseline = waiting_gauge()
    wallets = [f"0x{i:040x}" for i in range(1, 101)]
    tasks = [asyncio.create_task(get_ice(client, wallet)) for wallet in wallets]
    try:

        async def all_waiting() -> bool:
            for task in tasks:
                if task.done():
                    task.result()  # surface an early failure instead of waiting out the deadline
            return waiting_gauge() - baseline >= len(wallets)

        await wait_for_async(all_waiting, timeout=30, what="100 requests on the in-flight call")
        assert waiting_gauge() - baseline == len(wallets)
        assert twilio.token_calls == 1
        assert twilio.issued == []  # still held: nobody has been answered yet
        twilio.release.set()
        results = await asyncio.gather(*tasks)
    finally:
        twilio.release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert twilio.token_calls == 1
    [token] = twilio.issued
    assert [status for status, _ in results] == [200] * len(wallets)
    for _, body in results:
        assert body["provider"] == "twilio"
        assert body["iceServers"][-1]["username"] == token.username
    assert waiting_gauge() == baseline


# 5. Token reuse and the circuit breaker.


async def test_token_is_reused(ice_client: IceClientFactory, twilio: TwilioStub) -> None:
    client = await twilio_client(ice_client, twilio)
    status, first = await get_ice(client, "0xaaa")
    assert status == 200, first
    status, second = await get_ice(client, "0xbbb")
    assert status == 200, second
    assert twilio.token_calls == 1
    assert second["provider"] == "twilio"
    assert second["iceServers"] == first["iceServers"]
    # What remains of the one token: the same expiry, no longer a ttl.
    assert second["expiresAt"] == first["expiresAt"]
    assert second["ttl"] <= first["ttl"]
    remaining = iso_seconds(second["expiresAt"]) - iso_seconds(second["serverTime"])
    assert abs(remaining - second["ttl"]) <= 1


async def test_circuit_opens_after_three_failures(
    ice_client: IceClientFactory, twilio: TwilioStub
) -> None:
    twilio.mode = "http_500"
    client = await twilio_client(ice_client, twilio)
    for attempt in range(1, 4):
        async with client.get(ICE, headers=bearer("0xabc")) as response:
            assert_ice_unavailable(response, await response.json())
        assert twilio.token_calls == attempt
    twilio.mode = "ok"  # Twilio has recovered, but the open circuit does not ask it
    async with client.get(ICE, headers=bearer("0xabc")) as response:
        assert_ice_unavailable(response, await response.json())
    assert twilio.token_calls == 3


# 6. Logs.


async def test_logs_carry_no_secrets(
    ice_client: IceClientFactory, twilio: TwilioStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ok_client = await twilio_client(ice_client, twilio)
    status, body = await get_ice(ok_client, "0xabc")
    assert status == 200, body
    [token] = twilio.issued
    # Failures log; a fresh app (no cached token) sees a few of them, and the fallback's answer.
    twilio.mode = "garbage"
    failing_client = await twilio_client(ice_client, twilio)
    status, _ = await get_ice(failing_client, "0xabc")
    assert status == 503
    twilio.mode = "http_500"
    fallback_client = await twilio_client(ice_client, twilio, RTC_PROVIDER_FALLBACK="coturn")
    status, fallback = await get_ice(fallback_client, "0xabc")
    assert status == 200 and fallback["provider"] == "coturn"
    coturn_credential = fallback["iceServers"][-1]["credential"]

    messages = [record.getMessage() for record in caplog.records]
    assert any("twilio token request failed" in m for m in messages), messages
    assert any("using fallback" in m for m in messages), messages

    basic = base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
    formatter = JsonFormatter("ice-service")
    for record in caplog.records:
        rendered = " ".join(
            [formatter.format(record), repr(record.args), repr(vars(record)), record.getMessage()]
        )
        for secret in (API_SECRET, basic, token.credential, coturn_credential):
            assert secret not in rendered, record.name
    for secret in (API_SECRET, token.credential, coturn_credential):
        assert secret not in caplog.text
