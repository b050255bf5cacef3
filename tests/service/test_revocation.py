"""Revocation: `POST /api/v1/rtc/admin/revoke` ends a user's access on every instance at once.

A real stack (redis-server, coturn with its admin CLI, ice-service, two signal-service
instances, relay-service, the nginx gateway): the revoked wallet's sockets on both instances get
`session:end {reason: "revoked"}`, ICE, relay and new sockets answer 403 `revoked`, its TURN
allocation made with credentials issued before the revoke stops relaying and a new allocation
with them is ended; another user (whose wallet starts with the revoked one's) is untouched.
Then the hostile side of the admin route, and enforcement while Redis is down.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioice.turn import create_turn_endpoint
from ice_service.turn_revoke import CoturnCli
from rtc_testkit.contract import ADMIN_TOKEN, bearer, new_wallet, relay_message, sid
from rtc_testkit.peer import Peers
from rtc_testkit.processes import metric_value, wait_for_async
from rtc_testkit.stack import Stack, StackSpec, start_stack
from test_signal import refusal_code

REVOKE = "/api/v1/rtc/admin/revoke"
RTCCTL = str(Path(sys.executable).parent / "rtcctl")
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
A = "0xa11ce0000000000000000000000001"
# B's wallet starts with A's: coturn's `psp` matches substrings, the revoker must not.
B = A + "b0b"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    spec = StackSpec(
        ice=1,
        signal=2,
        relay=1,
        coturn=True,
        ice_env={"ADMIN_TOKEN": ADMIN_TOKEN, "ICE_RATE_LIMIT_PER_MIN": "1000"},
        contacts=((A, B),),
    )
    with start_stack(spec, tmp_path_factory.mktemp("revocation")) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


class RelayedUdp:
    """A TURN allocation (aioice, UDP) and a local peer socket: does data still get relayed?"""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.turn: Any = None
        self.peer: Any = None

    async def open(self, server: tuple[str, int], username: str, password: str) -> RelayedUdp:
        loop = asyncio.get_running_loop()
        received = self.received

        class Collect(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                received.append(data)

        self.peer, _ = await loop.create_datagram_endpoint(Collect, local_addr=("127.0.0.1", 0))
        self.turn, _ = await create_turn_endpoint(
            asyncio.DatagramProtocol,
            server_addr=server,
            username=username,
            password=password,
            transport="udp",
        )
        return self

    async def delivers(self, timeout: float = 0.5) -> bool:
        token = sid("d").encode()
        self.turn.sendto(token, self.peer.get_extra_info("sockname"))
        try:
            await wait_for_async(lambda: _true(token in self.received), timeout, "relayed data")
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        for transport in (self.turn, self.peer):
            if transport is not None:
                transport.close()


async def _true(value: bool) -> bool:
    return value


async def ice_credentials(http: aiohttp.ClientSession, stack: Stack, wallet: str) -> Any:
    status, body = await call(http, "GET", stack.url + "/api/v1/rtc/ice", headers=bearer(wallet))
    assert status == 200, body
    turn = next(s for s in body["iceServers"] if "turn:" in str(s["urls"]))
    return turn["username"], turn["credential"]


async def coturn_sessions(stack: Stack, wallet: str) -> int:
    """How many sessions coturn's CLI lists for exactly `wallet`."""
    cli = CoturnCli(stack.coturn.cli_address, stack.coturn.cli_password)
    return len(await cli.sessions(wallet))


async def test_revoke_ends_sockets_ice_relay_and_turn_everywhere(
    stack: Stack, http: aiohttp.ClientSession, peers: Peers
) -> None:
    turn_server = ("127.0.0.1", stack.coturn.port)
    a_user, a_password = await ice_credentials(http, stack, A)
    b_user, b_password = await ice_credentials(http, stack, B)
    a_relay = await RelayedUdp().open(turn_server, a_user, a_password)
    b_relay = await RelayedUdp().open(turn_server, b_user, b_password)
    try:
        assert await a_relay.delivers(2.0) and await b_relay.delivers(2.0)
        # A on both signal instances, B on the first.
        a_sockets = [await peers.connect(s.url, A) for s in stack.signals]
        b_socket = await peers.connect(stack.signals[0].url, B)

        started = time.monotonic()
        status, body = await call(
            http, "POST", stack.url + REVOKE, json={"wallet": A}, headers=ADMIN
        )
        assert status == 200, body
        assert body["wallet"] == A and body["revoked"] is True and body["until"] is None

        for socket in a_sockets:
            await socket.wait_event("session:end", timeout=1.0)
            assert socket.received("session:end") == [{"reason": "revoked"}]
        await wait_for_async(
            lambda: _true(not any(s.sio.connected for s in a_sockets)), 2.0, "sockets closed"
        )
        sockets_closed = time.monotonic() - started
        assert sockets_closed < 2.0

        # Every door answers 403 revoked: ICE, relay (through the gateway), a new socket.
        status, body = await call(http, "GET", stack.url + "/api/v1/rtc/ice", headers=bearer(A))
        assert (status, body["error"]) == (403, "revoked")
        status, body = await call(
            http,
            "POST",
            stack.url + "/api/v1/relay/enqueue",
            json=relay_message(A, B, sid("m")),
            headers=bearer(A),
        )
        assert (status, body["error"]) == (403, "revoked")
        for instance in stack.signals:
            assert refusal_code(await peers(A).refused(instance.url)) == "revoked"

        # TURN: A's allocation stops relaying (its session was cancelled at coturn) ...
        await wait_for_async(lambda: _not(a_relay.delivers(0.3)), 2.0, "A's relay ended")
        turn_ended = time.monotonic() - started
        # ... a new allocation with the same pre-revoke credentials is ended within 2 s ...
        again = await RelayedUdp().open(turn_server, a_user, a_password)
        reallocated = time.monotonic()
        try:
            await wait_for_async(
                lambda: _zero(coturn_sessions(stack, A)), 2.0, "A's new allocation ended"
            )
            reallocation_ended = time.monotonic() - reallocated
            assert not await again.delivers(0.3)
        finally:
            again.close()
        # ... and B (another user, same prefix) keeps relaying, signaling, fetching ICE.
        assert await b_relay.delivers(1.0)
        assert await coturn_sessions(stack, B) == 1
        assert b_socket.sio.connected and not b_socket.received("session:end")
        status, _ = await call(http, "GET", stack.url + "/api/v1/rtc/ice", headers=bearer(B))
        assert status == 200
        assert metric_value(stack.ice.url, "rtc_turn_revoked_sessions_ended_total") >= 2
        print(  # the figures the closing note quotes (pytest -s)
            f"revocation: sockets closed {sockets_closed:.3f} s, TURN relay ended "
            f"{turn_ended:.3f} s, re-allocation ended {reallocation_ended:.3f} s"
        )

        # Lifted: A is let in again at once.
        status, body = await call(
            http, "DELETE", stack.url + REVOKE, json={"wallet": A}, headers=ADMIN
        )
        assert (status, body["wasRevoked"], body["revoked"]) == (200, True, False)
        status, _ = await call(http, "GET", stack.url + "/api/v1/rtc/ice", headers=bearer(A))
        assert status == 200
        await peers.connect(stack.signals[1].url, A)
    finally:
        a_relay.close()
        b_relay.close()


async def _not(check: Any) -> bool:
    return not await check


async def _zero(count: Any) -> bool:
    return bool(await count == 0)


async def test_timed_revocation_runs_out(stack: Stack, http: aiohttp.ClientSession) -> None:
    wallet = new_wallet()
    status, body = await call(
        http, "POST", stack.url + REVOKE, json={"wallet": wallet, "seconds": 1}, headers=ADMIN
    )
    assert status == 200 and body["until"] is not None
    status, body = await call(http, "GET", stack.url + "/api/v1/rtc/ice", headers=bearer(wallet))
    assert (status, body["error"]) == (403, "revoked")

    async def let_in() -> bool:
        status, _ = await call(http, "GET", stack.url + "/api/v1/rtc/ice", headers=bearer(wallet))
        return status == 200

    await wait_for_async(let_in, 5.0, "the revocation to run out", interval=0.2)
    # Credentials issued after it ran out are not the pre-revoke ones: coturn keeps their
    # session (the sweep would have ended it within 0.5 s; three sweeps are watched).
    username, password = await ice_credentials(http, stack, wallet)
    relay = await RelayedUdp().open(("127.0.0.1", stack.coturn.port), username, password)
    try:
        watched_until = time.monotonic() + 1.5
        while time.monotonic() < watched_until:
            assert await coturn_sessions(stack, wallet) == 1
            await asyncio.sleep(0.25)
        assert await relay.delivers(1.0)
    finally:
        relay.close()


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-" + ADMIN_TOKEN[6:]}, 401, "unauthorized"),
        ({"Authorization": ADMIN_TOKEN}, 401, "unauthorized"),  # no scheme
        ({"Authorization": "Basic " + ADMIN_TOKEN}, 401, "unauthorized"),
        ({"Authorization": "Bearer " + ADMIN_TOKEN + "x"}, 401, "unauthorized"),
        ({"Authorization": "Bearer " + ADMIN_TOKEN[:-1]}, 401, "unauthorized"),
    ],
    ids=["none", "wrong", "no-scheme", "basic", "longer", "shorter"],
)
async def test_admin_token_is_required(
    stack: Stack, http: aiohttp.ClientSession, headers: dict[str, str], status: int, code: str
) -> None:
    wallet = new_wallet()
    got, body = await call(
        http, "POST", stack.url + REVOKE, json={"wallet": wallet}, headers=headers
    )
    assert (got, body["error"]) == (status, code)
    # Nothing was revoked.
    got, _ = await call(http, "GET", stack.url + "/api/v1/rtc/ice", headers=bearer(wallet))
    assert got == 200


async def test_a_users_jwt_is_no_admin_credential(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    attacker, victim = new_wallet(), new_wallet()
    for method in ("POST", "DELETE"):
        status, body = await call(
            http, method, stack.url + REVOKE, json={"wallet": victim}, headers=bearer(attacker)
        )
        assert (status, body["error"]) == (401, "unauthorized")
    status, _ = await call(http, "GET", stack.url + "/api/v1/rtc/ice", headers=bearer(victim))
    assert status == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"wallet": ""},
        {"wallet": "a:b"},
        {"wallet": "x" * 129},
        {"wallet": 12},
        {"wallet": "0xabc", "seconds": 0},
        {"wallet": "0xabc", "seconds": -5},
        {"wallet": "0xabc", "seconds": "60"},
        {"wallet": "0xabc", "seconds": 1.5},
        {"wallet": "0xabc", "seconds": 10**12},
        {"wallet": "0xabc", "extra": True},
        ["0xabc"],
    ],
)
async def test_malformed_revocations_are_refused(
    stack: Stack, http: aiohttp.ClientSession, body: Any
) -> None:
    status, answer = await call(http, "POST", stack.url + REVOKE, json=body, headers=ADMIN)
    assert (status, answer["error"]) == (400, "invalid_payload")


async def test_admin_attempts_are_rate_limited(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    spec = StackSpec(ice=1, ice_env={"ADMIN_TOKEN": ADMIN_TOKEN, "ADMIN_RATE_LIMIT_PER_MIN": "5"})
    with start_stack(spec, tmp_path) as small:
        codes = []
        for _ in range(8):
            status, _ = await call(http, "POST", small.url + REVOKE, json={"wallet": "0xabc"})
            codes.append(status)
        assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3
        # Throttled the right token too: a guesser cannot outpace the limit.
        status, _ = await call(
            http, "POST", small.url + REVOKE, json={"wallet": "0xabc"}, headers=ADMIN
        )
        assert status == 429
        # The token never reaches a log line.
        assert ADMIN_TOKEN not in small.ice.log_text()


async def test_admin_routes_absent_without_admin_token(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with start_stack(StackSpec(ice=1), tmp_path) as plain:
        for method in ("POST", "DELETE"):
            status, body = await call(
                http, method, plain.url + REVOKE, json={"wallet": "0xabc"}, headers=ADMIN
            )
            assert (status, body["error"]) == (404, "not_found")


async def test_revocations_hold_while_redis_is_down(
    tmp_path: Path, http: aiohttp.ClientSession, peers: Peers
) -> None:
    """Loaded at start, held in memory: with Redis stopped, the revoked wallet stays out of ICE
    (which answers on its fallback limiter) and signaling, and a restarted instance reads it."""
    wallet, other = new_wallet(), new_wallet()
    spec = StackSpec(ice=1, signal=1, ice_env={"ADMIN_TOKEN": ADMIN_TOKEN}, redis_appendonly=True)
    with start_stack(spec, tmp_path) as small:
        status, _ = await call(
            http, "POST", small.url + REVOKE, json={"wallet": wallet}, headers=ADMIN
        )
        assert status == 200
        # The signal instance learnt it through pub/sub.
        assert refusal_code(await peers(wallet).refused(small.signal.url)) == "revoked"
        # (ICE's flag is cached from then on: it answers without Redis.)
        status, _ = await call(http, "GET", small.url + "/api/v1/rtc/ice", headers=bearer(other))
        assert status == 200
        small.redis.stop()
        try:
            status, body = await call(
                http, "GET", small.url + "/api/v1/rtc/ice", headers=bearer(wallet)
            )
            assert (status, body["error"]) == (403, "revoked")
            status, _ = await call(
                http, "GET", small.url + "/api/v1/rtc/ice", headers=bearer(other)
            )
            assert status == 200
            assert refusal_code(await peers(wallet).refused(small.signal.url)) == "revoked"
            # Recording a revocation needs Redis: 503, never a silent success.
            status, body = await call(
                http, "POST", small.url + REVOKE, json={"wallet": other}, headers=ADMIN
            )
            assert (status, body["error"]) == (503, "unavailable")
        finally:
            small.redis.start()
        # A restarted ice-service loads the record before it is ready.
        small.ice.stop()
        small.ice.start()
        status, body = await call(
            http, "GET", small.url + "/api/v1/rtc/ice", headers=bearer(wallet)
        )
        assert (status, body["error"]) == (403, "revoked")


def rtcctl(
    stack: Stack, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RTCCTL, "--run-dir", str(tmp_path), "revoke", *args, "--gateway", stack.url],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_rtcctl_revoke_and_undo(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    wallet = new_wallet()
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    done = await asyncio.to_thread(
        rtcctl, stack, tmp_path, wallet, "--for", "600", ADMIN_TOKEN_FILE=str(token_file)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{wallet}\trevoked since ") and "until lifted" not in done.stdout
    status, body = await call(http, "GET", stack.url + "/api/v1/rtc/ice", headers=bearer(wallet))
    assert (status, body["error"]) == (403, "revoked")
    done = await asyncio.to_thread(
        rtcctl, stack, tmp_path, "--undo", wallet, ADMIN_TOKEN=ADMIN_TOKEN
    )
    assert (done.returncode, done.stdout) == (0, f"{wallet}\tlifted\n"), done.stderr
    status, _ = await call(http, "GET", stack.url + "/api/v1/rtc/ice", headers=bearer(wallet))
    assert status == 200
    # Without a token, or with a wrong one: a clear refusal, and the token never echoed.
    done = await asyncio.to_thread(rtcctl, stack, tmp_path, wallet)
    assert done.returncode == 2 and "needs ADMIN_TOKEN" in done.stderr
    wrong = "wrong-admin-token-0123456789abcdef0123456789"
    done = await asyncio.to_thread(rtcctl, stack, tmp_path, wallet, ADMIN_TOKEN=wrong)
    assert done.returncode == 1 and "401 unauthorized" in done.stderr
    assert wrong not in done.stderr + done.stdout
    done = await asyncio.to_thread(rtcctl, stack, tmp_path, "not a wallet", ADMIN_TOKEN=ADMIN_TOKEN)
    assert done.returncode == 2 and "not a valid wallet" in done.stderr
    # The token never crosses a network in clear (http:// only on this host).
    remote = subprocess.run(
        [RTCCTL, "revoke", wallet, "--gateway", "http://gateway.example:8080"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ADMIN_TOKEN": ADMIN_TOKEN},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert remote.returncode == 2 and "https://" in remote.stderr
