"""The Python SDK's outbox: "Relay ALWAYS" from the client's side.

Real components: redis-server, signal-service, relay-service and the nginx gateway, which every
SDK call goes through. The clients have `rtc` off, so the relay is the only way (the peer path is
the browser test's and test_client_e2e's). The gateway is stopped for OUTAGE_SECONDS while a
user sends; a client is closed with messages queued and a new one started on the same outbox
directory; answers are classified (retry, renew the token, fail with the code).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NodeClient
from rtc_client import OutgoingMessage, RtcClient, RtcClientError
from rtc_testkit.contract import make_token, new_wallet
from rtc_testkit.processes import metric_value, wait_for_async
from rtc_testkit.stack import Stack, StackSpec, add_contacts, start_stack

OUTAGE_SECONDS = 30.0
MESSAGES = 20
# The web SDK's run shares the outbox logic's shape; a shorter outage keeps the suite short.
WEB_OUTAGE_SECONDS = 5.0
WEB_MESSAGES = 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(StackSpec(signal=1, relay=1), tmp_path_factory.mktemp("outbox")) as running:
        yield running


def client(stack: Stack, wallet: str, **options: Any) -> RtcClient:
    token = options.pop("token", None) or make_token(wallet)
    settings: dict[str, Any] = {
        "rtc": False,
        "telemetry": False,
        "retry_delay": 0.2,
        "retry_delay_max": 2.0,
        **options,
    }
    return RtcClient(stack.gateway.url, token, wallet, **settings)


async def received_payloads(stack: Stack, wallet: str, count: int) -> list[str]:
    """Start the recipient (offline until now): what it pulls, in order."""
    async with client(stack, wallet) as recipient:
        got: list[str] = []

        async def arrived() -> bool:
            while not recipient.incoming.empty():
                got.append(recipient.incoming.get_nowait().payload)
            return len(got) >= count

        await wait_for_async(arrived, 20, what=f"{count} messages at the recipient")
        await asyncio.sleep(0)  # nothing else is due: a duplicate would be in the queue now
        while not recipient.incoming.empty():
            got.append(recipient.incoming.get_nowait().payload)
        return got


def states(sender: RtcClient) -> list[str]:
    return [m.state for m in sender.messages()]


async def test_gateway_outage_loses_nothing(stack: Stack) -> None:
    """The gateway down for OUTAGE_SECONDS while a user sends MESSAGES: every message is queued,
    then delivered once, in order, after it returns."""
    a, b = new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    seen: list[tuple[str, str, int]] = []
    duplicates_before = metric_value(
        stack.relay.url, "rtc_relay_enqueued_total", 'result="duplicate",forced="false"'
    )
    async with client(
        stack, a, on_message_state=lambda m: seen.append((m.payload, m.state, m.attempts))
    ) as sender:
        stack.gateway.stop()
        down_at = time.monotonic()
        try:
            for index in range(MESSAGES):
                message = await sender.enqueue(b, f"m{index:02d}")
                assert message.state == "queued"
                await asyncio.sleep((OUTAGE_SECONDS - 5) / MESSAGES)
            assert states(sender) == ["queued"] * MESSAGES  # nothing got through, nothing lost
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        finally:
            await asyncio.to_thread(stack.gateway.start)
        up_at = time.monotonic()

        async def drained() -> bool:
            return states(sender) == ["sent"] * MESSAGES

        await wait_for_async(drained, 30, what="the outbox to drain", interval=0.05)
        drain_seconds = time.monotonic() - up_at
        assert [m.transport for m in sender.messages()] == ["relay"] * MESSAGES
    payloads = await received_payloads(stack, b, MESSAGES)
    assert payloads == [f"m{i:02d}" for i in range(MESSAGES)]  # once each, in send order
    # The app saw each message queued (attempts 0), its failed attempts, then sent.
    assert [p for p, s, n in seen if s == "queued" and n == 0] == payloads
    assert any(s == "queued" and n > 0 for _, s, n in seen)  # the retries through the outage
    assert [p for p, s, _ in seen if s == "sent"] == payloads
    duplicates = (
        metric_value(
            stack.relay.url, "rtc_relay_enqueued_total", 'result="duplicate",forced="false"'
        )
        - duplicates_before
    )
    print(  # the figures the closing note quotes (pytest -s)
        f"outage: {MESSAGES} sent during {OUTAGE_SECONDS:.0f} s down, {len(payloads)} delivered,"
        f" {duplicates:.0f} duplicate enqueues, drained {drain_seconds:.2f} s after the gateway"
        " returned"
    )


async def test_queued_messages_survive_a_restart(stack: Stack, tmp_path: Path) -> None:
    a, b = new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    first = client(stack, a, outbox_dir=str(tmp_path))
    await first.start()
    sent = await first.send(b, "before")  # settled: must not be sent again
    assert sent.transport == "relay"
    stack.gateway.stop()
    try:
        for index in range(5):
            await first.enqueue(b, f"queued-{index}")
        await first.close()  # with 5 messages queued, as a process that exits would
    finally:
        await asyncio.to_thread(stack.gateway.start)
    again = client(stack, a, outbox_dir=str(tmp_path))
    assert [m.state for m in again.messages()] == ["sent"] + ["queued"] * 5
    async with again:

        async def drained() -> bool:
            return [m.state for m in again.messages()] == ["sent"] * 6

        await wait_for_async(drained, 20, what="the restarted outbox to drain")
    payloads = await received_payloads(stack, b, 6)
    assert payloads == ["before"] + [f"queued-{i}" for i in range(5)]


async def test_refused_messages_fail_with_the_code_and_do_not_block(stack: Stack) -> None:
    a, b, stranger = new_wallet(), new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    async with client(stack, a) as sender:
        with pytest.raises(RtcClientError) as refused:
            await sender.send(stranger, "not a contact")
        assert refused.value.code == "forbidden"
        big = await sender.enqueue(b, "x" * (70 * 1024))  # over RELAY_MAX_PAYLOAD_BYTES
        after = await sender.send(b, "after the big one")  # same conversation, behind it
        assert after.transport == "relay"
        failed = next(m for m in sender.messages() if m.message_id == big.message_id)
        assert (failed.state, failed.error) == ("failed", "payload_too_large")
        assert failed.attempts == 1  # refused for good: not retried


async def test_token_provider_renews_on_401_and_on_token_expired(stack: Stack) -> None:
    a, b = new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    asked: list[float] = []
    ended: list[str] = []

    async def provider() -> str:
        asked.append(time.monotonic())
        return make_token(a)

    sender = client(
        stack,
        a,
        token=make_token(a, expires_in=2),
        token_provider=provider,
        on_session_end=ended.append,
    )
    async with sender:
        # session:end token_expired at the exp: a fresh token, a new socket, the session lives.
        await wait_for_async(lambda: _true(len(asked) >= 1), 10, what="the provider to be asked")

        async def reconnected() -> bool:
            return sender.state == "connected"

        await wait_for_async(reconnected, 10, what="the socket with the fresh token")
        assert ended == [] and sender.session_end_reason is None
        delivery = await sender.send(b, "with the fresh token")
        assert delivery.transport == "relay"
    # Without a provider, an expired token fails the message with the code.
    stale = client(stack, a, token=make_token(a, expires_in=-10))
    stale._http.open()  # the HTTP side alone: the socket would be refused at start()
    stale._sender.start()
    try:
        with pytest.raises(RtcClientError) as refused:
            await stale.send(b, "stale")
        assert refused.value.code == "unauthorized"
    finally:
        await stale.close()


async def test_rate_limited_messages_wait_and_go(tmp_path: Path) -> None:
    spec = StackSpec(relay=1, relay_env={"RELAY_RATE_LIMIT_PER_MIN": "3"})
    with start_stack(spec, tmp_path) as small:
        a, b = new_wallet(), new_wallet()
        add_contacts(small.redis, a, b)
        sender = client(small, a, retry_delay_max=1.0)
        sender._http.open()
        sender._sender.start()
        try:
            messages: list[OutgoingMessage] = [await sender.enqueue(b, f"r{i}") for i in range(5)]

            async def some_sent() -> bool:
                return states(sender)[:3] == ["sent"] * 3

            await wait_for_async(some_sent, 10, what="the first three")
            await asyncio.sleep(1.0)
            # Over the limit: still queued, retried after Retry-After, never failed.
            assert states(sender)[3:] == ["queued", "queued"]
            assert all(m.state != "failed" for m in sender.messages())
            assert len(messages) == 5
        finally:
            await sender.close()


async def _true(value: bool) -> bool:
    return value


# -- the web SDK's outbox, in Node (tests/node/sdk_session.mjs; memory storage there) ----------


async def test_web_sdk_outbox_survives_an_outage(
    stack: Stack, node_clients: list[NodeClient]
) -> None:
    a, b = new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    page = await NodeClient.start(stack.gateway.url, make_token(a))
    node_clients.append(page)
    assert (await page.next("started"))["state"] == "connected"
    stack.gateway.stop()
    try:
        for index in range(WEB_MESSAGES):
            queued = await page.command(f"enqueue {b} web-{index} w{index:02d}", "queued")
            assert queued["state"] == "queued"
        await asyncio.sleep(WEB_OUTAGE_SECONDS)
        listed = await page.command("messages", "messages")
        assert [m["state"] for m in listed["messages"]] == ["queued"] * WEB_MESSAGES
    finally:
        await asyncio.to_thread(stack.gateway.start)

    async def drained() -> bool:
        listed = await page.command("messages", "messages")
        return [m["state"] for m in listed["messages"]] == ["sent"] * WEB_MESSAGES

    await wait_for_async(drained, 20, what="the web outbox to drain", interval=0.2)
    assert await received_payloads(stack, b, WEB_MESSAGES) == [
        f"w{i:02d}" for i in range(WEB_MESSAGES)
    ]


async def test_web_sdk_token_provider_keeps_the_session(
    stack: Stack, node_clients: list[NodeClient]
) -> None:
    a, b = new_wallet(), new_wallet()
    add_contacts(stack.redis, a, b)
    page = await NodeClient.start(
        stack.gateway.url, make_token(a, expires_in=2), fresh_token=make_token(a)
    )
    node_clients.append(page)
    assert (await page.next("started"))["state"] == "connected"
    await page.next("tokenAsked", timeout=10)  # at session:end token_expired

    async def reconnected() -> bool:
        state = await page.command("state", "state")
        return bool(state["state"] == "connected" and state["connections"] >= 2)

    await wait_for_async(reconnected, 10, what="the socket with the fresh token")
    assert not [e for e in page.events if e["event"] == "sessionEnded"]
    sent = await page.command(f"send {b} web-fresh-1", "sent")
    assert sent["transport"] == "relay"
