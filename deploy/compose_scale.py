"""`compose_check.py scale`: signal-service scaled 2 -> 4 -> 2 on the running stack, with
clients connected through the gateway and offers flowing between them the whole time.

- Up: the gateway lists the new replicas within GATEWAY_RESOLVE_SECONDS (plus the time to
  render and reload), and new clients land on them.
- Down: compose stops the two newest replicas (SIGTERM); their clients reconnect through the
  gateway to the remaining ones.
- Offers flow from the first clients to each other, and, once scaled up, to the new clients
  (some of them on the replicas about to be removed).
- Afterwards: presence places every wallet on a remaining replica only, once per socket; a new
  client's snapshot lists every other wallet online; and every offer that was acked was
  delivered (offers refused meanwhile, `unavailable` while a replica went away, are retried
  with the same signalId, as the SDKs do).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from compose_check import Client, eventually, instances_of, signal_exchange
from compose_common import STARTED, CheckFailed, compose, redis_cli, say
from rtc_testkit.contract import offer

PAIRS = 6
INTERVAL = 0.1  # seconds between one sender's offers
RETRY_FOR = 20.0  # seconds a sender retries one offer before counting it as not acked


@dataclass
class Flow:
    """One sender's offers to one receiver, each retried with its signalId until acked."""

    sender: Client
    receiver: Client
    acked: set[str] = field(default_factory=set)
    unacked: set[str] = field(default_factory=set)
    refusals: dict[str, int] = field(default_factory=dict)
    interval: float = INTERVAL
    # when each offer was acked (seconds on the checks' clock), to place a lost one in time
    acked_at: dict[str, float] = field(default_factory=dict)

    def delivered(self) -> set[str]:
        return {
            body.get("signalId")
            for body in self.receiver.received("rtc:offer")
            if body.get("from") == self.sender.wallet
        }

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            signal_id = f"scale-{self.sender.wallet}-{self.receiver.wallet}-{n}"
            n += 1
            deadline = time.monotonic() + RETRY_FOR
            while time.monotonic() < deadline:
                try:
                    ack = await self.sender.call(
                        "rtc:offer", offer(self.sender.wallet, self.receiver.wallet, signal_id)
                    )
                except Exception as exc:  # disconnected, timed out: retry the same signalId
                    code = type(exc).__name__
                else:
                    if isinstance(ack, dict) and ack.get("ok"):
                        self.acked.add(signal_id)
                        self.acked_at[signal_id] = time.monotonic() - STARTED
                        break
                    code = str(ack.get("error") if isinstance(ack, dict) else ack)
                self.refusals[code] = self.refusals.get(code, 0) + 1
                await asyncio.sleep(0.2)
            else:
                self.unacked.add(signal_id)
            await asyncio.sleep(self.interval)


async def scale_to(replicas: int, gateway_log_mark: str) -> float:
    """`up -d --no-recreate --scale signal-service=N`; seconds until the gateway lists N and
    all N are healthy. The gateway lists a replica once its name resolves, which may be before
    it listens: a client arriving then goes to the next replica (as it should), which would
    leave the new replicas without the clients this check sends them."""
    await asyncio.to_thread(
        compose, "up", "-d", "--no-recreate", "--no-build", "--scale",
        f"signal-service={replicas}", "signal-service",
    )  # fmt: skip
    started = time.monotonic()

    async def listed() -> bool:
        log = await asyncio.to_thread(compose, "logs", "--no-color", "gateway")
        tail = log[log.rfind("upstreams") :] if "upstreams" in log else ""
        return gateway_log_mark in tail

    async def healthy() -> bool:
        states = await asyncio.to_thread(compose, "ps", "signal-service")
        lines = [line for line in states.splitlines() if "signal-service" in line]
        return len(lines) == replicas and all("(healthy)" in line for line in lines)

    await eventually(f"the gateway listing {gateway_log_mark!r}", listed, 30)
    await eventually(f"{replicas} healthy signal-service replicas", healthy, 30)
    return time.monotonic() - started


async def check_scaling(gateway: str, numbers_from: int = 100) -> None:
    wallets = [f"0xe{n:03x}" for n in range(2 * PAIRS + 8)]
    commands = [
        ["SADD", f"rtc:contacts:{owner}", *[w for w in wallets if w != owner]] for owner in wallets
    ]
    await asyncio.to_thread(redis_cli, *commands)
    clients = [Client(w, numbers_from + n) for n, w in enumerate(wallets)]
    first, late = clients[: 2 * PAIRS], clients[2 * PAIRS :]
    stop = asyncio.Event()
    flows = [Flow(first[2 * i], first[2 * i + 1]) for i in range(PAIRS)]
    tasks: list[asyncio.Task[None]] = []
    try:
        took = await scale_to(2, "signal 2,")
        say(f"scale: 2 replicas, listed by the gateway after {took:.1f} s")
        for client in first:
            await client.join(gateway)
        tasks = [asyncio.create_task(flow.run(stop)) for flow in flows]
        before = await instances_of(*(c.wallet for c in first))
        two = set().union(*before.values())
        say(f"scale: {len(first)} clients on {sorted(two)}, {PAIRS} senders offering every 0.1 s")

        took = await scale_to(4, "signal 4,")
        say(f"scale: 2 -> 4 replicas, listed by the gateway and healthy after {took:.1f} s")
        for client in late:
            await client.join(gateway)
        # Offers towards the new clients too: some of them are on replicas about to go.
        more = [Flow(first[i], late[i]) for i in range(len(late))]
        flows += more
        tasks += [asyncio.create_task(flow.run(stop)) for flow in more]

        async def on_new_replicas() -> set[str] | None:
            where = await instances_of(*(c.wallet for c in late))
            new = set().union(*where.values()) - two if where else set()
            return new or None

        new = await eventually("a new client on a new replica", on_new_replicas, 10)
        where = await instances_of(*(c.wallet for c in late))
        on_new = next(c for c in late if where.get(c.wallet, set()) & new)
        await signal_exchange(on_new, first[0])
        say(f"scale: new clients reach the new replicas {sorted(new)}; signaling across them")

        started = time.monotonic()
        took = await scale_to(2, "signal 2,")
        say(f"scale: 4 -> 2 replicas, the gateway lists 2 after {took:.1f} s")
        everyone = first + late

        async def settled() -> dict[str, set[str]] | None:
            if not all(c.connected for c in everyone):
                return None
            where = await instances_of(*(c.wallet for c in everyone))
            placed = set().union(*where.values()) if where else set()
            ok = len(placed) == 2 and all(len(where.get(c.wallet, ())) == 1 for c in everyone)
            return where if ok else None

        where = await eventually("every client back on the 2 remaining replicas", settled, 40)
        remaining = set().union(*where.values())
        moved = [c for c in everyone if c.connects > 1]
        say(
            f"scale: {len(moved)} clients of removed replicas reconnected; presence places all"
            f" {len(everyone)} on {sorted(remaining)} ({time.monotonic() - started:.1f} s)"
        )

        async def reaped() -> bool:
            # A stopped replica drops its heartbeat; the others' reapers then forget it.
            now = await asyncio.to_thread(redis_cli, ["SMEMBERS", "presence:instances"])
            return {line for line in now if line} <= remaining

        await eventually("removed replicas leaving presence:instances", reaped, 20)

        watcher = Client("0xe0ff", numbers_from + 999)
        await asyncio.to_thread(
            redis_cli, ["SADD", "rtc:contacts:0xe0ff", *wallets],
            *[["SADD", f"rtc:contacts:{w}", "0xe0ff"] for w in wallets],
        )  # fmt: skip
        await watcher.join(gateway)
        snapshot = await watcher.next_event("presence:snapshot", within=10)
        await watcher.close()
        if sorted(snapshot.get("online", [])) != sorted(wallets):
            raise CheckFailed(f"presence snapshot after scaling: {snapshot}")
        say(f"scale: a new contact's snapshot lists all {len(wallets)} wallets online")
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(task, RETRY_FOR + 5)
        try:
            await report(flows)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def report(flows: list[Flow], what: str = "scale") -> None:
    async def all_delivered() -> bool:
        return all(flow.acked <= flow.delivered() for flow in flows)

    with contextlib.suppress(CheckFailed):
        await eventually("acked offers delivered", all_delivered, 5)
    acked = sum(len(flow.acked) for flow in flows)
    lost = sum(len(flow.acked - flow.delivered()) for flow in flows)
    unacked = sum(len(flow.unacked) for flow in flows)
    refusals: dict[str, int] = {}
    for flow in flows:
        for code, count in flow.refusals.items():
            refusals[code] = refusals.get(code, 0) + count
    say(
        f"{what}: {acked} offers acked, {lost} of them not delivered; {unacked} never acked;"
        f" refusals retried: {refusals or 'none'}"
    )
    if lost:
        for flow in flows:
            for signal_id in sorted(flow.acked - flow.delivered()):
                say(
                    f"{what}: lost {signal_id}, acked at {flow.acked_at[signal_id]:.1f} s;"
                    f" sender {flow.sender.wallet} ({flow.sender.connects} connects), receiver"
                    f" {flow.receiver.wallet} ({flow.receiver.connects} connects)"
                )
        raise CheckFailed(f"{lost} acked offers were not delivered")
