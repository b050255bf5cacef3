"""ice-service's HTTP API as the contract states it, and its OpenAPI document kept true."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import IceClientFactory
from helpers import app_routes, documented_routes
from ice_service.app import create_app
from ice_service.settings import IceSettings
from prometheus_client import REGISTRY
from rtc_common.settings import load_settings
from rtc_testkit.contract import ADMIN_TOKEN, JWT_SECRET, make_token
from rtc_testkit.stack import set_flag

OPENAPI = json.loads(
    (Path(__file__).resolve().parents[2] / "services/ice/ice_service/openapi.json").read_text()
)
PATHS = ["/api/v1/rtc/ice", "/api/rtc/ice", "/api/rtc/v1/ice"]


def schema(name: str) -> dict[str, Any]:
    # Resolve $refs against the whole document.
    return {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}


def bearer(wallet: str = "0xabc") -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(wallet)}"}


def assert_error(body: dict[str, Any], code: str) -> None:
    jsonschema.validate(body, schema("Error"))
    assert body["error"] == code


@pytest.mark.parametrize("path", PATHS)
async def test_ice_paths_with_bearer(ice_client: IceClientFactory, path: str) -> None:
    client = await ice_client()
    response = await client.get(path, headers=bearer())
    body = await response.json()
    assert response.status == 200, body
    jsonschema.validate(body, schema("IceResponse"))
    assert response.headers["Cache-Control"] == "private, no-store"
    assert response.headers["Vary"] == "Cookie, Authorization"
    assert response.headers["RateLimit-Limit"] == "10"
    assert response.headers["RateLimit-Remaining"] == "9"
    assert body["serverTime"] < body["expiresAt"]


async def test_ice_with_cookie_and_csrf(ice_client: IceClientFactory) -> None:
    client = await ice_client()
    cookies = {"access_token": make_token("0xdef"), "csrf_token": "c5rf-value"}
    ok = await client.get(
        "/api/v1/rtc/ice", cookies=cookies, headers={"X-CSRF-Token": "c5rf-value"}
    )
    assert ok.status == 200
    username = (await ok.json())["iceServers"][-1]["username"]
    assert username.endswith(":0xdef")
    refused = await client.get("/api/v1/rtc/ice", cookies=cookies)
    assert refused.status == 403
    assert_error(await refused.json(), "csrf_failed")


async def test_cache_max_age(ice_client: IceClientFactory) -> None:
    client = await ice_client(ICE_CACHE_MAX_AGE="30")
    response = await client.get("/api/v1/rtc/ice", headers=bearer())
    assert response.headers["Cache-Control"] == "private, max-age=30"


async def test_rate_limit_headers_on_refusals(ice_client: IceClientFactory) -> None:
    client = await ice_client(ICE_RATE_LIMIT_PER_MIN="2")
    statuses = [(await client.get("/api/v1/rtc/ice", headers=bearer())).status for _ in range(2)]
    assert statuses == [200, 200]
    limited = await client.get("/api/v1/rtc/ice", headers=bearer())
    assert limited.status == 429
    assert_error(await limited.json(), "rate_limited")
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(limited.headers["Retry-After"]) <= 30
    assert limited.headers["Cache-Control"] == "private, no-store"


async def test_anonymous_is_off_by_default(ice_client: IceClientFactory) -> None:
    client = await ice_client()
    response = await client.get("/api/v1/rtc/ice")
    assert response.status == 401
    assert_error(await response.json(), "unauthorized")


async def test_anonymous_when_allowed(ice_client: IceClientFactory) -> None:
    client = await ice_client(ICE_ALLOW_ANONYMOUS="true", ICE_RATE_LIMIT_PER_MIN="3")
    bodies = []
    for _ in range(3):
        response = await client.get("/api/v1/rtc/ice")
        assert response.status == 200
        bodies.append(await response.json())
    assert bodies[0]["iceServers"][-1]["username"].endswith(":anon")
    # Anonymous requests share the client address's budget; a bad token is never anonymous.
    assert (await client.get("/api/v1/rtc/ice")).status == 429
    junk = await client.get("/api/v1/rtc/ice", headers={"Authorization": "Bearer junk"})
    assert junk.status == 401


async def test_feature_flag_disabled(ice_client: IceClientFactory, redis_server: Any) -> None:
    set_flag(redis_server, enabled=False)
    client = await ice_client()
    response = await client.get("/api/v1/rtc/ice", headers=bearer())
    assert response.status == 403
    assert_error(await response.json(), "feature_disabled")
    assert response.headers["RateLimit-Limit"] == "10"


async def test_unconfigured_provider_is_ice_unavailable(ice_client: IceClientFactory) -> None:
    client = await ice_client(RTC_PROVIDER="coturn", TURN_SECRET="", TURN_URIS="")
    response = await client.get("/api/v1/rtc/ice", headers=bearer())
    assert response.status == 503
    assert_error(await response.json(), "ice_unavailable")
    # Ready: ice_unavailable is its answer (the contract's revised readiness).
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["degraded"] == ["provider"]


async def test_unknown_query_parameters_are_ignored(ice_client: IceClientFactory) -> None:
    client = await ice_client()
    response = await client.get(
        "/api/v1/rtc/ice?ttl=999999&provider=twilio&x=%00", headers=bearer()
    )
    body = await response.json()
    assert response.status == 200
    assert body["ttl"] == 600 and body["provider"] == "coturn"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer " + "A" * 7000},
        {"Authorization": "Bearer a.b.c"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Cookie": "access_token=%%%; csrf_token=x", "X-CSRF-Token": "x"},
    ],
)
async def test_junk_credentials_are_401(
    ice_client: IceClientFactory, headers: dict[str, str]
) -> None:
    client = await ice_client()
    response = await client.get("/api/v1/rtc/ice", headers=headers)
    assert response.status == 401
    assert_error(await response.json(), "unauthorized")


async def test_oversized_header_is_a_clear_4xx(ice_client: IceClientFactory) -> None:
    client = await ice_client()
    response = await client.get("/api/v1/rtc/ice", headers={"X-Junk": "x" * 20000, **bearer()})
    assert 400 <= response.status < 500


async def test_method_not_allowed_and_not_found(ice_client: IceClientFactory) -> None:
    client = await ice_client()
    response = await client.post("/api/v1/rtc/ice", headers=bearer())
    assert response.status == 405
    assert_error(await response.json(), "method_not_allowed")
    missing = await client.get("/api/v1/rtc/nothing", headers=bearer())
    assert missing.status == 404
    assert_error(await missing.json(), "not_found")


def _transport_count(transport: str, candidate: str, forced: str) -> float:
    value = REGISTRY.get_sample_value(
        "rtc_transport_messages_total",
        {"transport": transport, "candidate_type": candidate, "forced": forced},
    )
    return value or 0.0


async def test_telemetry(ice_client: IceClientFactory) -> None:
    client = await ice_client(TELEMETRY_RATE_LIMIT_PER_MIN="4", ICE_RATE_LIMIT_PER_MIN="1")
    before = _transport_count("relay", "relay", "true")
    ok = await client.post(
        "/api/v1/rtc/telemetry",
        json={"transport": "relay", "candidateType": "relay", "forced": True},
        headers=bearer(),
    )
    assert ok.status == 204
    assert _transport_count("relay", "relay", "true") == before + 1
    for bad in (
        {"transport": "carrier-pigeon"},
        {"candidateType": "host"},
        {"transport": "rtc", "forced": "yes"},
    ):
        response = await client.post("/api/v1/rtc/telemetry", json=bad, headers=bearer())
        assert response.status == 400
        assert_error(await response.json(), "invalid_payload")
    # Its own budget (4, all used above): ICE is not charged, telemetry is refused.
    assert (await client.get("/api/v1/rtc/ice", headers=bearer())).status == 200
    refused = await client.post("/api/v1/rtc/telemetry", data=b"not json", headers=bearer())
    assert refused.status == 429
    assert (await client.post("/api/v1/rtc/telemetry", json={"transport": "rtc"})).status == 401


async def test_telemetry_rejects_non_json(ice_client: IceClientFactory) -> None:
    client = await ice_client()
    response = await client.post("/api/v1/rtc/telemetry", data=b"\xff\xfe", headers=bearer())
    assert response.status == 400
    assert_error(await response.json(), "invalid_payload")


async def test_openapi_matches_routes(ice_client: IceClientFactory) -> None:
    client = await ice_client()
    served = await client.get("/api/v1/rtc/openapi.json")
    assert served.status == 200
    assert await served.json() == OPENAPI
    # The admin routes exist only with ADMIN_TOKEN; the document lists them.
    settings = load_settings(IceSettings, {"JWT_SECRET": JWT_SECRET, "ADMIN_TOKEN": ADMIN_TOKEN})
    assert app_routes(create_app(settings)) == documented_routes(OPENAPI)
    plain = load_settings(IceSettings, {"JWT_SECRET": JWT_SECRET})
    assert app_routes(create_app(plain)) == documented_routes(OPENAPI) - {
        ("/api/v1/rtc/admin/revoke", "post"),
        ("/api/v1/rtc/admin/revoke", "delete"),
    }
    jsonschema.Draft202012Validator.check_schema(schema("IceResponse"))


async def test_health_ready_metrics(ice_client: IceClientFactory) -> None:
    client = await ice_client()
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    # Required: only the revoked set (it answers without Redis, the directory or a provider).
    assert await ready.json() == {
        "status": "ready",
        "checks": {"revocations": "ok"},
        "degraded": [],
    }
    deps = await (await client.get("/healthz/deps")).json()
    assert deps["ready"] is True
    assert {name: (d["state"], d["required"]) for name, d in deps["dependencies"].items()} == {
        "redis": ("up", False),
        "revocations": ("up", True),
        "directory": ("up", False),
        "provider": ("up", False),
    }
    await client.get("/api/v1/rtc/ice", headers=bearer())
    metrics = await (await client.get("/metrics")).text()
    assert 'rtc_ice_issued_total{provider="coturn"}' in metrics
    assert "rtc_http_requests_total" in metrics


def test_startup_fails_fast_naming_the_variable(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "JWT_SECRET": "do-not-print-this-secret",
        "TURN_CRED_TTL": "ten minutes",
        "TURN_SECRET": "nor-this-one",
    }
    result = subprocess.run(
        [sys.executable, "-m", "ice_service"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "TURN_CRED_TTL" in result.stderr
    assert "ten minutes" not in result.stderr
    assert "do-not-print-this-secret" not in result.stderr + result.stdout
    assert "nor-this-one" not in result.stderr + result.stdout
