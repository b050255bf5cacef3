"""TURN secret rotation against a real coturn.

ice-service signs with TURN_SECRET only; coturn is given the retired secret as a second
`static-auth-secret` line (TURN_SECRET_PREVIOUS) while credentials signed with it may still be in
use (up to TURN_CRED_TTL). Once that line is removed, the old credentials are refused with 401.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IceClientFactory
from rtc_testkit.contract import allocation_error, make_token, turn_credentials
from rtc_testkit.processes import Coturn

OLD = "turn-secret-old-0123456789"
NEW = "turn-secret-new-9876543210"


@pytest.fixture
def coturns(tmp_path: Path) -> Iterator[list[Coturn]]:
    started: list[Coturn] = []
    yield started
    for server in started:
        server.stop()


def start(coturns: list[Coturn], workdir: Path, secret: str, previous: str | None) -> Coturn:
    server = Coturn(workdir, secret=secret, previous=previous)
    coturns.append(server)
    server.start()
    return server


async def issued_credentials(ice_client: IceClientFactory, coturn: Coturn) -> tuple[str, str]:
    """Credentials from ice-service itself, which signs with TURN_SECRET (the new secret)."""
    client = await ice_client(TURN_URIS=coturn.uris, TURN_SECRET=NEW)
    response = await client.get(
        "/api/v1/rtc/ice", headers={"Authorization": f"Bearer {make_token('0xr0747e')}"}
    )
    assert response.status == 200, await response.text()
    turn = (await response.json())["iceServers"][-1]
    return turn["username"], turn["credential"]


async def test_turn_secret_rotation(
    tmp_path: Path, coturns: list[Coturn], ice_client: IceClientFactory
) -> None:
    expiry = int(time.time()) + 300
    old = turn_credentials(OLD, "0xold", expiry)  # issued before the switch, still in use
    forged = turn_credentials("never-configured-secret", "0xold", expiry)

    # 1. Before the rotation: coturn knows only the old secret.
    before = start(coturns, tmp_path / "before", OLD, None)
    assert "static-auth-secret" in before.conf.read_text()
    assert await allocation_error(before, *old) is None
    new_from_ice = await issued_credentials(ice_client, before)
    assert await allocation_error(before, *new_from_ice) == 401
    before.stop()

    # 2. During the rotation: coturn accepts both; ice-service signs with the new one.
    both = start(coturns, tmp_path / "both", NEW, OLD)
    assert both.conf.read_text().count("static-auth-secret=") == 2
    new_from_ice = await issued_credentials(ice_client, both)
    assert await allocation_error(both, *new_from_ice) is None
    assert await allocation_error(both, *old) is None
    assert await allocation_error(both, *forged) == 401
    both.stop()

    # 3. After TURN_CRED_TTL: the previous secret is retired; its credentials get 401.
    after = start(coturns, tmp_path / "after", NEW, None)
    assert after.conf.read_text().count("static-auth-secret=") == 1
    assert await allocation_error(after, *old) == 401
    assert await allocation_error(after, *new_from_ice) is None
    assert OLD not in after.conf.read_text()
