"""TURN over TLS (`turns:`): coturn with a certificate from a CA made here, a relay allocated over
TLS with the credentials ice-service issued (aioice), and `rtcctl doctor`'s TLS checks
(certificate trusted or not, days left, an allocation over TLS)."""

from __future__ import annotations

import argparse
import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aioice.turn import create_turn_endpoint
from conftest import IceClientFactory
from rtc_common.ice.settings import IceProviderSettings
from rtc_common.settings import load_settings
from rtc_testkit.contract import TURN_SECRET, bearer
from rtc_testkit.processes import Coturn, ProcessGroup
from rtc_testkit.tls import Pki, make_pki
from rtcctl.doctor import Result, resolve_target
from rtcctl.doctor.coturn import check_coturn


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), days=30)


@pytest.fixture(scope="module")
def tls_coturn(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Coturn]:
    with ProcessGroup() as group:
        server = Coturn(tmp_path_factory.mktemp("coturn-tls"), tls=(pki.cert, pki.key))
        group.start(server)
        yield server


def turns_uri(coturn: Coturn) -> str:
    return f"turns:127.0.0.1:{coturn.tls_port}?transport=tcp"


async def allocate_over_tls(coturn: Coturn, username: str, password: str, context: Any) -> Any:
    assert coturn.tls_port is not None
    transport, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol,
        server_addr=("127.0.0.1", coturn.tls_port),
        username=username,
        password=password,
        transport="tcp",
        ssl=context,
    )
    try:
        return transport.get_extra_info("sockname")
    finally:
        transport.close()


async def test_allocation_over_tls_with_issued_credentials(
    ice_client: IceClientFactory, tls_coturn: Coturn, pki: Pki
) -> None:
    client = await ice_client(
        TURN_URIS=f"turn:127.0.0.1:{tls_coturn.port}?transport=udp,{turns_uri(tls_coturn)}"
    )
    answer = await (await client.get("/api/v1/rtc/ice", headers=bearer("0xabc"))).json()
    # One entry for coturn's URIs, with one credential for all of them.
    (turns,) = [s for s in answer["iceServers"] if turns_uri(tls_coturn) in s["urls"]]
    trusting = ssl.create_default_context(cafile=str(pki.ca))
    relayed = await allocate_over_tls(tls_coturn, turns["username"], turns["credential"], trusting)
    assert relayed[0] == "127.0.0.1"
    # Real TLS: a client that does not trust the CA never gets to TURN.
    with pytest.raises(ssl.SSLCertVerificationError):
        await allocate_over_tls(
            tls_coturn, turns["username"], turns["credential"], ssl.create_default_context()
        )


def doctor_tls(coturn: Coturn, tmp_path: Path) -> list[Result]:
    env = {
        "TURN_SECRET": TURN_SECRET,
        "TURN_URIS": turns_uri(coturn),
        "RTC_PROVIDER": "coturn",
        "JWT_SECRET": "doctor-test-jwt-secret-0123456789abcdef",
    }
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    args = argparse.Namespace(
        run_dir=tmp_path, env_file=env_file, gateway=None, signal=None, timeout=5.0
    )
    target = resolve_target(args)
    settings = load_settings(IceProviderSettings, env)
    return asyncio.run(check_coturn(target, settings))


def test_doctor_checks_turns_servers(
    tls_coturn: Coturn, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Untrusted (the system's store has no test CA): FAIL, and why.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    (untrusted,) = doctor_tls(tls_coturn, tmp_path)
    assert untrusted.status == "FAIL" and "certificate" in untrusted.name, untrusted
    assert "not trusted: unable to get local issuer certificate" in untrusted.detail, untrusted
    # Trusted: the certificate's issuer and days left, then an allocation over TLS.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    cert, allocation = doctor_tls(tls_coturn, tmp_path)
    assert cert.status == "PASS" and "rtc test CA" in cert.detail, cert
    assert "(30 days left)" in cert.detail or "(29 days left)" in cert.detail, cert
    assert allocation.status == "PASS" and "over TLS" in allocation.detail, allocation


def test_doctor_warns_of_a_certificate_about_to_expire(tmp_path: Path) -> None:
    soon = make_pki(tmp_path / "pki", days=5)
    with ProcessGroup() as group:
        server = Coturn(tmp_path / "coturn", tls=(soon.cert, soon.key))
        group.start(server)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SSL_CERT_FILE", str(soon.ca))
            cert, allocation = doctor_tls(server, tmp_path)
    assert cert.status == "WARN" and "days left" in cert.detail and cert.fix, cert
    assert allocation.status == "PASS", allocation
