"""No loss under crashes: every enqueue that got a 2xx is delivered, whatever is killed with -9.

A load of N enqueues from several concurrent senders runs while relay-service (one run) or the
relay store's redis-server (another run, restarted on its append-only file) is killed with -9 and
restarted. Clients retry failed requests with the same messageId, as the contract tells them to.
Afterwards the recipients drain their queues; every acknowledged messageId must be there, and
after dedup by messageId each is delivered exactly once. The counts are printed.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rtc_testkit.contract import make_token, relay_message
from rtc_testkit.processes import RedisServer, ServiceProcess, wait_for_async
from rtc_testkit.stack import add_contacts, base_env

pytestmark = pytest.mark.timeout(300)

TOTAL = int(os.environ.get("RELAY_CRASH_MESSAGES", "10000"))
SENDERS = [f"0x5e{n:02x}" for n in range(8)]
RECIPIENTS = ["0xaa01", "0xaa02"]
CONCURRENCY_PER_SENDER = 4
RETRY_DEADLINE = 60.0


@dataclass
class Tally:
    sent: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    duplicate_answers: int = 0
    failed_attempts: int = 0
    gave_up: set[str] = field(default_factory=set)


async def send_one(
    session: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any], tally: Tally
) -> None:
    """Enqueue with retries (same messageId) until a 2xx or the deadline."""
    tally.sent.add(body["messageId"])
    deadline = time.monotonic() + RETRY_DEADLINE
    pause = 0.01
    while time.monotonic() < deadline:
        try:
            async with session.post(
                url, json=body, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                if response.status in (200, 202):
                    answer = await response.json()
                    assert answer["messageId"] == body["messageId"]
                    if answer.get("duplicate"):
                        tally.duplicate_answers += 1
                    tally.acknowledged.add(body["messageId"])
                    return
                assert response.status == 503, await response.text()  # only "retry later"
        except (aiohttp.ClientError, TimeoutError):
            pass
        tally.failed_attempts += 1
        await asyncio.sleep(pause)  # backoff between retries of a failed request, not a sync
        pause = min(pause * 2, 0.2)
    tally.gave_up.add(body["messageId"])


async def sender_load(
    session: aiohttp.ClientSession, base: str, sender: str, count: int, tally: Tally, run: str
) -> None:
    token = make_token(sender, expires_in=3600)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            to = RECIPIENTS[index % len(RECIPIENTS)]
            payload = f"message {index} from {sender}"
            body = relay_message(
                sender, to, f"{run}-{sender}-{index}", payload, force=index % 3 == 0
            )
            await send_one(session, f"{base}/api/v1/relay/enqueue", token, body, tally)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY_PER_SENDER)))


async def drain(session: aiohttp.ClientSession, base: str, wallet: str) -> list[str]:
    """Pull and ack until the queue is empty; returns every messageId handed out."""
    token = make_token(wallet)
    headers = {"Authorization": f"Bearer {token}"}
    delivered: list[str] = []
    while True:
        async with session.get(f"{base}/api/v1/relay/pull?limit=100", headers=headers) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        if not page["messages"]:
            return delivered
        delivered.extend(m["messageId"] for m in page["messages"])
        ids = [m["id"] for m in page["messages"]]
        async with session.post(
            f"{base}/api/v1/relay/ack", json={"ids": ids}, headers=headers
        ) as response:
            assert response.status == 200
            assert (await response.json())["acked"] == len(ids)


@pytest.fixture
def relay_stack(tmp_path: Path, redis_server: RedisServer) -> Any:
    store = RedisServer(tmp_path / "relay-store", appendonly=True)
    store.start()
    for sender in SENDERS:
        for recipient in RECIPIENTS:
            add_contacts(redis_server, sender, recipient)
    env = base_env(
        redis_server.url,
        RELAY_REDIS_URL=store.url,
        RELAY_RATE_LIMIT_PER_MIN="100000000",
        RELAY_MAX_QUEUE="100000",
        FLAG_CACHE_SECONDS="60",
        LOG_LEVEL="WARNING",
    )
    relay = ServiceProcess("relay_service", tmp_path / "relay", env)
    relay.start()
    yield store, relay
    relay.stop()
    store.stop()


@pytest.mark.parametrize("victim", ["relay-service", "redis-server"])
async def test_no_acknowledged_message_is_lost(
    relay_stack: tuple[RedisServer, ServiceProcess], victim: str
) -> None:
    store, relay = relay_stack
    tally = Tally()
    kills = 0
    per_sender = TOTAL // len(SENDERS)
    timeout = aiohttp.ClientTimeout(total=5)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def reached(target: float) -> bool:
            return len(tally.acknowledged) >= target

        async def chaos() -> None:
            nonlocal kills
            for fraction in (0.25, 0.6):
                await wait_for_async(
                    functools.partial(reached, fraction * TOTAL),
                    timeout=120,
                    what=f"{fraction:.0%} acknowledged",
                )
                if victim == "relay-service":
                    relay.kill()
                    kills += 1
                    await asyncio.to_thread(relay.start)
                else:
                    store.kill()
                    kills += 1
                    await asyncio.to_thread(store.start)  # replays its append-only file

        started = time.monotonic()
        await asyncio.gather(
            chaos(),
            *(sender_load(session, relay.url, s, per_sender, tally, victim) for s in SENDERS),
        )
        elapsed = time.monotonic() - started
        delivered: list[str] = []
        for recipient in RECIPIENTS:
            delivered.extend(await drain(session, relay.url, recipient))

    counts = Counter(delivered)
    duplicates_removed = sum(n - 1 for n in counts.values())
    unique = set(counts)
    lost = tally.acknowledged - unique
    print(
        f"\n[relay crash: {victim} killed -9 x{kills}] sent={len(tally.sent)}"
        f" acknowledged={len(tally.acknowledged)} delivered={len(delivered)}"
        f" unique_delivered={len(unique)} duplicates_removed={duplicates_removed}"
        f" duplicate_answers={tally.duplicate_answers} failed_attempts={tally.failed_attempts}"
        f" gave_up={len(tally.gave_up)} lost={len(lost)}"
        f" enqueue_throughput={len(tally.acknowledged) / elapsed:.0f}/s over {elapsed:.1f}s"
    )
    assert kills == 2
    assert len(tally.sent) == per_sender * len(SENDERS) >= 10_000 or TOTAL < 10_000
    assert not lost, f"{len(lost)} acknowledged messages were lost, e.g. {sorted(lost)[:5]}"
    assert unique <= tally.sent  # nothing delivered that was never sent
    assert not tally.gave_up  # every retry eventually got its 2xx
    assert tally.failed_attempts > 0  # the crashes really interrupted requests
