"""coturn credentials from ice-service are accepted by a real coturn (a TURN allocation)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aioice import stun
from conftest import IceClientFactory
from rtc_testkit.contract import allocate_relay, make_token, turn_credentials
from rtc_testkit.processes import Coturn


async def fetch_ice(ice_client: IceClientFactory, coturn: Coturn, wallet: str = "0xAbC") -> Any:
    client = await ice_client(TURN_URIS=coturn.uris, TURN_SECRET=coturn.secret)
    response = await client.get(
        "/api/v1/rtc/ice", headers={"Authorization": f"Bearer {make_token(wallet)}"}
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def test_issued_credentials_allocate_a_relay(
    ice_client: IceClientFactory, coturn: Coturn
) -> None:
    body = await fetch_ice(ice_client, coturn)
    turn = body["iceServers"][-1]
    expiry, wallet = turn["username"].split(":", 1)
    assert wallet == "0xabc"  # normalized
    assert body["provider"] == "coturn"
    assert body["ttl"] == 600
    assert body["expiresAt"] == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(int(expiry)))
    assert turn["urls"] == coturn.uris.split(",")
    host, port = await allocate_relay(coturn, turn["username"], turn["credential"])
    assert host == "127.0.0.1" and 49160 <= port <= 49200


async def test_tampered_credential_is_refused(ice_client: IceClientFactory, coturn: Coturn) -> None:
    turn = (await fetch_ice(ice_client, coturn))["iceServers"][-1]
    expiry, wallet = turn["username"].split(":", 1)
    with pytest.raises(stun.TransactionFailed) as refused:
        await allocate_relay(coturn, f"{expiry}:0xother", turn["credential"])
    assert refused.value.response.attributes["ERROR-CODE"][0] == 401
    forged = turn_credentials("not-the-secret", wallet, int(expiry))
    with pytest.raises(stun.TransactionFailed) as refused:
        await allocate_relay(coturn, *forged)
    assert refused.value.response.attributes["ERROR-CODE"][0] == 401


async def test_expired_credential_is_refused(coturn: Coturn) -> None:
    username, password = turn_credentials(coturn.secret, "0xabc", int(time.time()) - 5)
    with pytest.raises(stun.TransactionFailed) as refused:
        await allocate_relay(coturn, username, password)
    assert refused.value.response.attributes["ERROR-CODE"][0] == 401
    # The same scheme with a future expiry is accepted: the refusal above is the expiry's doing.
    await allocate_relay(coturn, *turn_credentials(coturn.secret, "0xabc", int(time.time()) + 60))


async def test_stun_fallback_listed_first(ice_client: IceClientFactory, coturn: Coturn) -> None:
    client = await ice_client(
        TURN_URIS=coturn.uris, TURN_STUN_FALLBACK="stun:stun.l.google.com:19302"
    )
    response = await client.get(
        "/api/v1/rtc/ice", headers={"Authorization": f"Bearer {make_token()}"}
    )
    servers = (await response.json())["iceServers"]
    assert servers[0] == {"urls": "stun:stun.l.google.com:19302"}
    assert set(servers[1]) == {"urls", "username", "credential"}
