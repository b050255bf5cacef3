"""Every answer of the services: `nosniff`, and `Cache-Control: no-store` on JSON (credentials,
relay messages and errors are private and must not be kept by a browser or proxy cache)."""

from __future__ import annotations

from conftest import IceClientFactory, RelayFactory
from rtc_testkit.contract import make_token
from rtc_testkit.processes import RedisServer
from rtc_testkit.stack import add_contacts


def bearer(wallet: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(wallet)}"}


async def test_private_json_is_never_cached(
    relay_client: RelayFactory, ice_client: IceClientFactory, redis_server: RedisServer
) -> None:
    relay = await relay_client()
    ice = await ice_client()
    add_contacts(redis_server, "0xa1", "0xb2")
    answers = [
        await relay.get("/api/v1/relay/pull", headers=bearer("0xb2")),
        await relay.post(
            "/api/v1/relay/enqueue",
            json={"to": "0xb2", "convId": "0xa1:0xb2", "messageId": "m1", "payload": "hi"},
            headers=bearer("0xa1"),
        ),
        await relay.get("/api/v1/relay/pull"),  # 401, an error envelope
        await ice.get("/api/v1/rtc/ice", headers=bearer("0xa1")),
    ]
    for response in answers:
        assert response.headers["Content-Type"].startswith("application/json")
        assert "no-store" in response.headers["Cache-Control"], response.url
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert [r.status for r in answers] == [200, 202, 401, 200]
    health = await ice.get("/healthz")
    assert health.headers["X-Content-Type-Options"] == "nosniff"
