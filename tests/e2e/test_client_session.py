"""A session the server ends, as both SDKs see it: no reconnect loop, the app is told why.

Real components: redis-server, signal-service (at most one socket per wallet), relay-service and
the nginx gateway, which every SDK connection goes through. The Python SDK (`rtc_client`) runs
in-process; the web SDK (`clients/web/rtc-sdk.js`) runs in Node with socket.io-client v4
(tests/node/sdk_session.mjs, driven line by line over stdin/stdout) — cheaper than Chromium, and
the SDK code is the same; `rtc: false`, so no peer connection is involved.

"No new connection attempt" is read from signal-service: its log lines (`event` `connect`, by
walletHash, under a known LOG_PSEUDONYM_KEY) and its `rtc_signal_events_total` counter, checked
after a barrier: an unrelated client's connect in the same log (lines are written in order).
Where the SDK sat in a reconnect loop when it was refused, a bare python-socketio client with the
same retry schedule is the control: it is refused again and again meanwhile, the SDK is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from helpers import NodeClient
from rtc_client import RtcClient, RtcClientError
from rtc_testkit.contract import make_token, new_wallet
from rtc_testkit.peer import Peer
from rtc_testkit.processes import metric_value, wait_for_async
from rtc_testkit.stack import Stack, StackSpec, add_contacts, start_stack

PSEUDONYM_KEY = "client-session-test-pseudonym-key-0123456789abcdef"
# Fast retries for the reconnect-loop test (the SDK's and the control's alike).
RETRY_DELAY, RETRY_DELAY_MAX = 0.1, 0.3
UNAUTHORIZED = 'event="connect",outcome="unauthorized"'


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # No ice-service: every client here has `rtc` off.
    spec = StackSpec(
        signal=1,
        relay=1,
        signal_env={"SIGNAL_MAX_SOCKETS_PER_WALLET": "1", "LOG_PSEUDONYM_KEY": PSEUDONYM_KEY},
    )
    with start_stack(spec, tmp_path_factory.mktemp("client-session")) as stack:
        yield stack


def wallet_hash(wallet: str) -> str:
    """signal-service's log pseudonym of a wallet (rtc_common.logs.wallet_hash, our key)."""
    return hmac.digest(PSEUDONYM_KEY.encode(), wallet.encode(), "sha256").hex()[:16]


def signal_lines(stack: Stack, event: str, wallet: str) -> list[str]:
    """The outcomes of the wallet's `event` lines in signal-service's log, in order."""
    pseudonym = wallet_hash(wallet)
    outcomes = []
    for text in stack.signal.log_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if (
            line.get("msg") == "event"
            and line.get("event") == event
            and line.get("walletHash") == pseudonym
        ):
            outcomes.append(str(line.get("outcome")))
    return outcomes


def connects(stack: Stack, wallet: str) -> list[str]:
    return signal_lines(stack, "connect", wallet)


def unauthorized_connects(stack: Stack) -> float:
    # Refused tokens have no wallet in the log line: the counter is what shows their attempts.
    return metric_value(stack.signal.url, "rtc_signal_events_total", UNAUTHORIZED)


def sdk(stack: Stack, wallet: str, token: str | None = None, **kwargs: Any) -> RtcClient:
    return RtcClient(
        stack.gateway.url, token or make_token(wallet), wallet, rtc=False, telemetry=False, **kwargs
    )


def state_of(client: RtcClient) -> str:
    """`client.state` read afresh: mypy keeps an attribute narrowed by an assert across awaits."""
    return client.state


async def barrier(stack: Stack) -> None:
    """An unrelated client connects and its line is in the log: every earlier line is too."""
    wallet = new_wallet()
    async with sdk(stack, wallet):

        async def logged() -> bool:
            return connects(stack, wallet) == ["ok"]

        await wait_for_async(logged, 10, what="the barrier client's connect line")


@contextlib.asynccontextmanager
async def gateway_down(stack: Stack) -> AsyncIterator[None]:
    """The gateway stopped (every client connection through it drops), started again after."""
    stack.gateway.stop()
    try:
        yield
    finally:
        # A thread: the gateway waits for /healthz synchronously, the SDK clients keep running.
        await asyncio.to_thread(stack.gateway.start)


async def hold_slot(stack: Stack, wallet: str) -> Peer:
    """A socket of `wallet` straight to signal-service: the wallet's only slot is taken."""

    async def previous_gone() -> bool:
        lines = signal_lines(stack, "disconnect", wallet)
        return len(lines) >= connects(stack, wallet).count("ok")

    # The dropped socket must be gone on the server first, or the holder is the one refused.
    await wait_for_async(previous_gone, 10, what="the dropped socket's disconnect line")
    return await Peer(wallet).connect(stack.signal.url)


# -- Python SDK ---------------------------------------------------------------------------------


async def test_expired_token_ends_the_session_without_reconnecting(stack: Stack) -> None:
    a, b = new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    told: list[str] = []
    client = sdk(stack, a, make_token(a, expires_in=2), on_session_end=told.append)
    try:
        await client.start()
        assert client.state == "connected"
        refused_before = unauthorized_connects(stack)
        await asyncio.wait_for(client.session_ended.wait(), 10)
        assert (client.session_end_reason, told) == ("token_expired", ["token_expired"])

        async def closed() -> bool:
            return not client.connected

        await wait_for_async(closed, 5, what="the socket closed")
        await barrier(stack)
        assert state_of(client) == "ended"
        assert connects(stack, a) == ["ok"]
        assert unauthorized_connects(stack) == refused_before
        assert told == ["token_expired"]
        # The relay over HTTP behaves as before: the expired token's 401 surfaces.
        with pytest.raises(RtcClientError) as refused:
            await client.send(b, "after the end")
        assert (refused.value.code, refused.value.status) == ("unauthorized", 401)
    finally:
        await client.close()
    assert state_of(client) == "closed"


async def test_second_socket_of_a_wallet_is_refused_and_the_relay_still_works(
    stack: Stack,
) -> None:
    a, b = new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    told: list[str] = []
    first = sdk(stack, a)
    second = sdk(stack, a, on_session_end=told.append)
    receiver = sdk(stack, b)
    try:
        await first.start()
        with pytest.raises(RtcClientError) as refused:
            await second.start()
        assert refused.value.code == "too_many_connections"
        assert (second.state, second.session_end_reason) == ("ended", "too_many_connections")
        assert told == ["too_many_connections"]
        await barrier(stack)
        assert connects(stack, a) == ["ok", "too_many_connections"]
        assert first.state == "connected" and second.state == "ended"
        # Without a socket, messages still go through the relay over HTTP.
        delivery = await second.send(b, "through the relay", message_id="m-refused-1")
        assert (delivery.transport, delivery.rtc_tries, delivery.forced) == ("relay", 0, False)
        await receiver.start()
        message = await asyncio.wait_for(receiver.incoming.get(), 10)
        assert (message.sender, message.payload) == (a, "through the relay")
    finally:
        await asyncio.gather(first.close(), second.close(), receiver.close())


async def test_refused_reconnect_stops_the_retry_loop(stack: Stack) -> None:
    """A drop (the gateway stopped): network failures are retried; once the gateway is back, the
    wallet's slot is taken and the refusal ends the session instead of a loop of refusals."""
    a, c = new_wallet(), new_wallet()
    client = sdk(stack, a, reconnection_delay=RETRY_DELAY, reconnection_delay_max=RETRY_DELAY_MAX)
    control = Peer(
        c,
        reconnection=True,
        reconnection_delay=RETRY_DELAY,
        reconnection_delay_max=RETRY_DELAY_MAX,
    )
    holders: list[Peer] = []
    try:
        await client.start()
        await control.connect(stack.gateway.url)
        async with gateway_down(stack):

            async def retrying() -> bool:
                return client.state == "connecting" and not control.connected

            await wait_for_async(retrying, 10, what="both clients retrying")
            holders = [await hold_slot(stack, a), await hold_slot(stack, c)]
            assert client.state == "connecting"  # the network failures did not end it
        await asyncio.wait_for(client.session_ended.wait(), 15)
        assert (client.state, client.session_end_reason) == ("ended", "too_many_connections")

        async def control_refused_again() -> bool:
            return connects(stack, c).count("too_many_connections") >= 5

        await wait_for_async(control_refused_again, 15, what="the control's repeated refusals")
        assert connects(stack, a) == ["ok", "ok", "too_many_connections"]  # client, holder, client
        assert state_of(client) == "ended" and not client.connected
    finally:
        if not stack.gateway.running:
            await asyncio.to_thread(stack.gateway.start)
        await control.close()
        for holder in holders:
            await holder.close()
        await client.close()


# -- web SDK in Node ---------------------------------------------------------------------------


async def test_web_sdk_expired_token_ends_the_session(
    stack: Stack, node_clients: list[NodeClient]
) -> None:
    a, b = new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    page = await NodeClient.start(stack.gateway.url, make_token(a, expires_in=2))
    node_clients.append(page)
    assert (await page.next("started"))["state"] == "connected"
    refused_before = unauthorized_connects(stack)
    ended = await page.next("sessionEnded")
    assert (ended["reason"], ended["state"]) == ("token_expired", "ended")
    await barrier(stack)
    state = await page.command("state", "state")
    assert state == {
        "event": "state",
        "state": "ended",
        "reason": "token_expired",
        "connected": False,
        "connections": 1,
    }
    assert connects(stack, a) == ["ok"]
    assert unauthorized_connects(stack) == refused_before
    assert [e["event"] for e in page.events].count("sessionEnded") == 1
    # The relay over HTTP behaves as before: the expired token's 401 surfaces.
    sent = await page.command(f"send {b} m-web-expired", "sendFailed")
    assert (sent["code"], sent["status"]) == ("unauthorized", 401)


async def test_web_sdk_refused_reconnect_ends_the_session(
    stack: Stack, node_clients: list[NodeClient]
) -> None:
    a = new_wallet()
    page = await NodeClient.start(stack.gateway.url, make_token(a))
    node_clients.append(page)
    await page.next("started")
    holder: Peer | None = None
    try:
        async with gateway_down(stack):
            dropped = await page.next("connection")
            # A network failure: the manager retries it.
            assert (dropped["connected"], dropped["state"]) == (False, "connecting")
            holder = await hold_slot(stack, a)
        ended = await page.next("sessionEnded", 20)
        assert (ended["reason"], ended["state"]) == ("too_many_connections", "ended")
        await barrier(stack)
        state = await page.command("state", "state")
        assert (state["state"], state["connected"], state["connections"]) == ("ended", False, 1)
        assert connects(stack, a) == ["ok", "ok", "too_many_connections"]  # page, holder, page
    finally:
        if holder is not None:
            await holder.close()
