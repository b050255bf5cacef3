"""`make chaos`: the whole stack under steady load while faults fire on a schedule.

Real processes on loopback (redis-server with AOF, coturn, ice-service, two signal-service
instances, relay-service, the nginx gateway) plus the Twilio Tokens stub served from this process
(ice-service's primary provider, coturn its fallback). Load runs on all three paths through the
gateway for `CHAOS_SECONDS` (default 180):

- ICE: `GET /api/v1/rtc/ice` from a pool of wallets;
- signaling: Socket.IO clients (python-socketio, websocket, reconnecting by themselves through the
  gateway) sending `rtc:offer` with acks to a contact on the *other* instance;
- relay: enqueues retried with the same messageId until a 2xx (as the contract tells clients),
  recipients pulling and acking.

Faults (times are fractions of the run): redis-server kill -9 then restart (twice), each signal
instance kill -9 then restart, relay-service kill -9 then restart, `nginx -s reload` (several),
and the Twilio stub failing (HTTP 500, then 401, then slower than TWILIO_TIMEOUT_SECONDS) before
it heals.

A progress line every `CHAOS_PROGRESS_SECONDS` (10); at the end a summary (also written as JSON to
`--json` or `.run/chaos-<UTC time>.json`). The exit status is 1 when an acknowledged relay message
or an acked signal is lost (see `docs/reliability.md` for what counts), else 0.

    .venv/bin/python tests/chaos.py [--seconds N] [--json PATH] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from rtc_gateway import GatewayLimits
from rtc_testkit.contract import conv_id, make_token, relay_message
from rtc_testkit.peer import Peer, Peers, open_peers
from rtc_testkit.processes import REPO_ROOT, http_status, metric_value
from rtc_testkit.stack import Stack, StackSpec, add_contacts, start_stack_async
from rtc_testkit.twilio import API_SECRET, TwilioStub, serve_twilio

ICE_PATH = "/api/v1/rtc/ice"
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
# A signal acked this long before its receiver's socket dropped may still be in flight there.
IN_FLIGHT_SECONDS = 1.0


def now() -> float:
    return time.monotonic()


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- tallies ---------------------------------------------------------------------------------


@dataclass
class IceTally:
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "200 twilio", "503 unavailable"...
    latencies: list[float] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (time, outcome)
    providers: list[tuple[float, str]] = field(default_factory=list)  # (time, provider)

    @property
    def errors(self) -> int:
        return sum(n for k, n in self.outcomes.items() if not k.startswith("200"))


@dataclass
class SignalTally:
    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "ok", "unavailable", "no_ack"...
    acked: dict[str, tuple[float, str]] = field(default_factory=dict)  # signalId -> (t, receiver)
    delivered: dict[str, float] = field(default_factory=dict)  # signalId -> first arrival
    duplicates_delivered: int = 0


@dataclass
class RelayTally:
    sent: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    gave_up: set[str] = field(default_factory=set)
    attempts: Counter[str] = field(default_factory=Counter)  # "202", "200 duplicate", "503 ..."
    delivered: set[str] = field(default_factory=set)
    delivered_total: int = 0  # with redeliveries
    pulls: Counter[str] = field(default_factory=Counter)
    acks: Counter[str] = field(default_factory=Counter)


@dataclass
class FaultLog:
    events: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=now)

    def add(self, name: str, **details: Any) -> None:
        at = round(now() - self.started, 2)
        self.events.append({"at": at, "fault": name, **details})
        print(f"  [{at:7.1f}s] {name} {json.dumps(details) if details else ''}", flush=True)


# -- the stack -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def chaos_stack(root: Path, twilio: TwilioStub) -> AsyncIterator[Stack]:
    """The stack under test, its ice-service on the Twilio stub first, coturn as the fallback."""
    spec = StackSpec(
        ice=1,
        signal=2,
        relay=1,
        coturn=True,
        redis_appendonly=True,
        env={"LOG_LEVEL": "INFO", "FLAG_CACHE_SECONDS": "5"},
        ice_env={
            "RTC_PROVIDER": "twilio",
            "RTC_PROVIDER_FALLBACK": "coturn",
            **twilio.env(),
            "TWILIO_TIMEOUT_SECONDS": "1",
            "TURN_CRED_TTL": "10",  # the Twilio token is fetched again every ~5 s
            "ICE_RATE_LIMIT_PER_MIN": "1000000",
        },
        signal_env={"PRESENCE_HEARTBEAT_SECONDS": "1", "PRESENCE_INSTANCE_TTL_SECONDS": "4"},
        relay_env={"RELAY_RATE_LIMIT_PER_MIN": "1000000", "RELAY_MAX_QUEUE": "100000"},
        gateway_limits=GatewayLimits.off(),  # every client comes from a few loopback addresses
    )
    async with start_stack_async(spec, root) as stack:
        yield stack


# -- load ------------------------------------------------------------------------------------


class Load:
    def __init__(self, stack: Stack, twilio: TwilioStub, seconds: float) -> None:
        self.stack = stack
        self.twilio = twilio
        self.seconds = seconds
        self.base = stack.gateway.url
        self.ice = IceTally()
        self.signal = SignalTally()
        self.relay = RelayTally()
        self.stopping = asyncio.Event()
        self.clients: dict[str, Peer] = {}
        self.readiness: list[dict[str, Any]] = []
        self.redis_restarts: list[float] = []
        self.presence_settled: list[float | None] = []
        self.started = now()

    # ICE ----------------------------------------------------------------------------------

    async def ice_worker(self, session: aiohttp.ClientSession, index: int, rps: float) -> None:
        wallets = [f"0x1ce{index:02x}{n:04x}" for n in range(25)]
        tokens = [make_token(w, expires_in=7200) for w in wallets]
        n = 0
        next_at = now()
        while not self.stopping.is_set():
            token = tokens[n % len(tokens)]
            n += 1
            started = now()
            try:
                async with session.get(
                    self.base + ICE_PATH, headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    body = await response.json(content_type=None)
                    if response.status == 200:
                        outcome = f"200 {body['provider']}"
                        self.ice.providers.append((started, body["provider"]))
                    else:
                        outcome = f"{response.status} {body.get('error', '?')}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                outcome = f"exception {type(exc).__name__}"
            self.ice.requests += 1
            self.ice.outcomes[outcome] += 1
            self.ice.latencies.append(now() - started)
            if not outcome.startswith("200"):
                self.ice.failures.append((started - self.started, outcome))
            next_at = max(next_at + 1 / rps, now() - 1)
            await asyncio.sleep(max(0.0, next_at - now()))

    # Signaling ----------------------------------------------------------------------------

    async def signal_pair(self, sender: Peer, receiver: Peer, rps: float) -> None:
        n = 0
        next_at = now()
        while not self.stopping.is_set():
            n += 1
            signal_id = f"{sender.wallet}-{n}"
            body = {
                "convId": conv_id(sender.wallet, receiver.wallet),
                "to": receiver.wallet,
                "sdp": {"type": "offer", "sdp": SDP},
                "signalId": signal_id,
            }
            self.signal.sent += 1
            if not sender.connected:
                outcome = "sender_disconnected"
            else:
                try:
                    ack = await sender.call("rtc:offer", body, timeout=5)
                    if isinstance(ack, dict) and ack.get("ok"):
                        outcome = "ok"
                        self.signal.acked[signal_id] = (now(), receiver.wallet)
                    else:
                        outcome = str(ack.get("error") if isinstance(ack, dict) else ack)
                except (TimeoutError, socketio.exceptions.TimeoutError):
                    outcome = "no_ack"
                except socketio.exceptions.SocketIOError as exc:
                    outcome = f"client_{type(exc).__name__}"
            self.signal.outcomes[outcome] += 1
            next_at = max(next_at + 1 / rps, now() - 1)
            await asyncio.sleep(max(0.0, next_at - now()))

    def on_offer(self, data: Any) -> None:
        signal_id = data.get("signalId") if isinstance(data, dict) else None
        if not isinstance(signal_id, str):
            return
        if signal_id in self.signal.delivered:
            self.signal.duplicates_delivered += 1
        else:
            self.signal.delivered[signal_id] = now()

    # Relay --------------------------------------------------------------------------------

    async def relay_sender(
        self, session: aiohttp.ClientSession, sender: str, recipients: list[str], rps: float
    ) -> None:
        token = make_token(sender, expires_in=7200)
        pending: set[asyncio.Task[None]] = set()
        n = 0
        next_at = now()
        while not self.stopping.is_set():
            to = recipients[n % len(recipients)]
            payload = f"chaos message {n} from {sender}"
            body = relay_message(sender, to, f"{sender}-{n}", payload, force=n % 5 == 0)
            n += 1
            task = asyncio.create_task(self.relay_send(session, token, body))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at = max(next_at + 1 / rps, now() - 1)
            await asyncio.sleep(max(0.0, next_at - now()))
        if pending:
            await asyncio.gather(*pending)

    async def relay_send(
        self, session: aiohttp.ClientSession, token: str, body: dict[str, Any]
    ) -> None:
        """Enqueue with the same messageId until a 2xx (or 60 s), as the contract says."""
        self.relay.sent.add(body["messageId"])
        deadline = now() + 60
        pause = 0.05
        while now() < deadline:
            try:
                async with session.post(
                    self.base + "/api/v1/relay/enqueue",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    answer = await response.json(content_type=None)
                    if response.status in (200, 202):
                        dup = " duplicate" if answer.get("duplicate") else ""
                        self.relay.attempts[f"{response.status}{dup}"] += 1
                        self.relay.acknowledged.add(body["messageId"])
                        return
                    self.relay.attempts[f"{response.status} {answer.get('error', '?')}"] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.relay.attempts[f"exception {type(exc).__name__}"] += 1
            await asyncio.sleep(pause)  # client backoff between retries
            pause = min(pause * 2, 0.5)
        self.relay.gave_up.add(body["messageId"])

    async def relay_pull_once(self, session: aiohttp.ClientSession, token: str) -> int:
        """One pull + ack; the number of messages handed out (-1 on a failed call)."""
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with session.get(
                self.base + "/api/v1/relay/pull?limit=100", headers=headers
            ) as response:
                page = await response.json(content_type=None)
                self.relay.pulls[str(response.status)] += 1
                if response.status != 200:
                    return -1
            messages = page["messages"]
            for message in messages:
                self.relay.delivered_total += 1
                self.relay.delivered.add(message["messageId"])
            if not messages:
                return 0
            async with session.post(
                self.base + "/api/v1/relay/ack",
                json={"ids": [m["id"] for m in messages]},
                headers=headers,
            ) as response:
                self.relay.acks[str(response.status)] += 1
            return len(messages)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.relay.pulls[f"exception {type(exc).__name__}"] += 1
            return -1

    async def relay_puller(self, session: aiohttp.ClientSession, wallet: str) -> None:
        token = make_token(wallet, expires_in=7200)
        while not self.stopping.is_set():
            got = await self.relay_pull_once(session, token)
            if got < 100:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 0.5)

    async def relay_drain(self, session: aiohttp.ClientSession, wallet: str) -> None:
        token = make_token(wallet, expires_in=7200)
        deadline = now() + 60
        while now() < deadline:
            if await self.relay_pull_once(session, token) == 0:
                return
            await asyncio.sleep(0.05)

    # Readiness ----------------------------------------------------------------------------

    async def readiness_monitor(self) -> None:
        stack = self.stack
        services = [stack.ice, *stack.signals, stack.relay]
        last: dict[str, int] = {}
        while not self.stopping.is_set():
            for service in services:
                status = await asyncio.to_thread(http_status, service.url + "/readyz")
                if last.get(service.name) != status:
                    last[service.name] = status
                    self.readiness.append(
                        {
                            "at": round(now() - self.started, 2),
                            "service": service.name,
                            "readyz": status,
                        }
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.5)


def chaos_peer(load: Load, wallet: str, address: str) -> Peer:
    """A client that reconnects by itself through the gateway, its offers counted by `load`."""
    peer = Peer(
        wallet,
        local_addr=address,
        reconnection=True,
        reconnection_delay=0.2,
        reconnection_delay_max=1,
        randomization_factor=0.5,
    )
    peer.on("rtc:offer", load.on_offer)
    return peer


# -- faults ----------------------------------------------------------------------------------


async def run_faults(stack: Stack, load: Load, faults: FaultLog, seconds: float) -> None:
    redis_down = float(os.environ.get("CHAOS_REDIS_DOWN_SECONDS", "5"))

    async def at(fraction: float) -> None:
        delay = load.started + fraction * seconds - now()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(load.stopping.wait(), delay)

    async def redis_outage() -> None:
        faults.add("redis kill -9")
        await asyncio.to_thread(stack.redis.kill)
        await asyncio.sleep(redis_down)  # the outage's length
        await asyncio.to_thread(stack.redis.start)
        faults.add("redis restarted", down_seconds=redis_down)
        load.redis_restarts.append(now())

    async def signal_crash(index: int) -> None:
        process = stack.signals[index]
        faults.add(f"{process.name} kill -9")
        await asyncio.to_thread(process.kill)
        killed = now()
        await asyncio.sleep(2)  # down for a while, its clients reconnect elsewhere
        await asyncio.to_thread(process.start)
        faults.add(f"{process.name} restarted")
        await settle_presence(stack, load, faults, killed)

    async def relay_crash() -> None:
        faults.add("relay kill -9")
        await asyncio.to_thread(stack.relay.kill)
        await asyncio.sleep(2)
        await asyncio.to_thread(stack.relay.start)
        faults.add("relay restarted")

    async def reloads(count: int) -> None:
        for _ in range(count):
            await asyncio.to_thread(stack.gateway.reload)
            faults.add("nginx -s reload")
            await asyncio.sleep(1)

    def twilio(mode: str, label: str, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(load.twilio, name, value)
        load.twilio.mode = mode
        faults.add(f"twilio {label}")

    schedule: list[tuple[float, Callable[[], Awaitable[None]]]] = [
        (0.10, redis_outage),
        (0.25, lambda: signal_crash(0)),
        (0.38, lambda: reloads(3)),
        (0.48, relay_crash),
        (0.80, lambda: signal_crash(1)),
        (0.88, redis_outage),
        (0.93, lambda: reloads(2)),
    ]
    twilio_schedule: list[tuple[float, Callable[[], None]]] = [
        (0.55, lambda: twilio("http_500", "answers HTTP 500")),
        (0.62, lambda: twilio("ok", "answers 401 (rotated secret)", api_secret="rotated")),
        (
            0.68,
            lambda: twilio("ok", "3 s slow (timeout 1 s)", api_secret=API_SECRET, delay=3.0),
        ),
        (0.74, lambda: twilio("ok", "healed", delay=0.0)),
    ]

    async def run_at(fraction: float, action: Callable[[], Awaitable[None]]) -> None:
        await at(fraction)
        if not load.stopping.is_set():
            await action()

    async def twilio_at(fraction: float, action: Callable[[], None]) -> None:
        await at(fraction)
        if not load.stopping.is_set():
            action()

    await asyncio.gather(
        *(run_at(f, a) for f, a in schedule), *(twilio_at(f, a) for f, a in twilio_schedule)
    )


async def settle_presence(stack: Stack, load: Load, faults: FaultLog, killed: float) -> None:
    """After a signal instance's kill: every client connected again and presence exact."""
    client = stack.redis.client()
    deadline = now() + 30

    def exact() -> bool:
        for c in load.clients.values():
            if not c.connected:
                return False
            if client.hlen(f"presence:conn:{c.wallet}") != 1:
                return False
        return True

    while now() < deadline:
        try:
            ok = await asyncio.to_thread(exact)
        except Exception:
            ok = False
        if ok:
            faults.add("presence exact again", seconds_after_kill=round(now() - killed, 2))
            load.presence_settled.append(round(now() - killed, 2))
            return
        await asyncio.sleep(0.2)
    faults.add("presence NOT exact within 30 s")
    load.presence_settled.append(None)


# -- the run ---------------------------------------------------------------------------------


def progress(load: Load, faults: FaultLog) -> str:
    elapsed = now() - load.started
    ice, sig, relay = load.ice, load.signal, load.relay
    lost_relay = len(relay.acknowledged - relay.delivered)
    return (
        f"[{elapsed:6.1f}s] ice {ice.requests} req, {ice.errors} err | "
        f"signal sent {sig.sent}, acked {len(sig.acked)}, delivered {len(sig.delivered)} | "
        f"relay acked {len(relay.acknowledged)}, delivered {len(relay.delivered)}, "
        f"not yet delivered {lost_relay}"
    )


async def run(seconds: float, json_path: Path, keep: bool) -> int:
    root = Path(tempfile.mkdtemp(prefix="rtc-chaos-"))
    faults = FaultLog()
    print(f"chaos: {seconds:.0f} s of load and faults; processes and logs in {root}", flush=True)
    failed = True
    try:
        async with (
            serve_twilio() as twilio,
            chaos_stack(root, twilio) as stack,
            open_peers() as peers,
        ):
            failed = await run_load(stack, twilio, peers, faults, seconds, json_path)
    finally:
        if keep or failed:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


async def run_load(
    stack: Stack,
    twilio: TwilioStub,
    peers: Peers,
    faults: FaultLog,
    seconds: float,
    json_path: Path,
) -> bool:
    """The load and the faults on a started stack; True when the run failed."""
    addr1, _, addr2, _ = await stack.gateway.spread_addresses()
    load = Load(stack, twilio, seconds)

    pairs = int(os.environ.get("CHAOS_SIGNAL_PAIRS", "4"))
    signal_rps = float(os.environ.get("CHAOS_SIGNAL_RPS", "4"))  # per pair
    ice_rps = float(os.environ.get("CHAOS_ICE_RPS", "30"))
    relay_rps = float(os.environ.get("CHAOS_RELAY_RPS", "20"))

    # Pairs across instances, in both directions.
    senders: list[tuple[Peer, Peer]] = []
    for index in range(pairs):
        tag = uuid.uuid4().hex[:6]
        a, b = f"0xa{index:02x}{tag}", f"0xb{index:02x}{tag}"
        add_contacts(stack.redis, a, b)
        first, second = (addr1, addr2) if index % 2 == 0 else (addr2, addr1)
        sender, receiver = chaos_peer(load, a, first), chaos_peer(load, b, second)
        for client in (sender, receiver):
            peers.made.append(client)
            auth = {"token": make_token(client.wallet, expires_in=7200)}
            await client.connect(stack.gateway.url, auth=auth, wait_timeout=10)
            load.clients[client.wallet] = client
        senders.append((sender, receiver))
    relay_senders = [f"0x5e{n:02x}" for n in range(4)]
    relay_recipients = ["0xaa01", "0xaa02"]
    for s in relay_senders:
        for r in relay_recipients:
            add_contacts(stack.redis, s, r)

    load.started = faults.started = now()
    connector = aiohttp.TCPConnector(limit=200)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        ice_workers = 4
        tasks = [
            *(
                asyncio.create_task(load.ice_worker(session, i, ice_rps / ice_workers))
                for i in range(ice_workers)
            ),
            *(asyncio.create_task(load.signal_pair(s, r, signal_rps)) for s, r in senders),
            *(
                asyncio.create_task(
                    load.relay_sender(session, s, relay_recipients, relay_rps / len(relay_senders))
                )
                for s in relay_senders
            ),
            *(asyncio.create_task(load.relay_puller(session, r)) for r in relay_recipients),
            asyncio.create_task(load.readiness_monitor()),
        ]
        fault_task = asyncio.create_task(run_faults(stack, load, faults, seconds))
        every = float(os.environ.get("CHAOS_PROGRESS_SECONDS", "10"))
        end = load.started + seconds
        while now() < end:
            await asyncio.sleep(min(every, max(0.0, end - now())))
            print(progress(load, faults), flush=True)
        load.stopping.set()
        await fault_task
        print("load stopped; waiting for in-flight work and draining the relay", flush=True)
        await asyncio.gather(*tasks)
        for r in relay_recipients:
            await load.relay_drain(session, r)
        # Signals still on their way: wait until every acked one arrived, or 5 s.
        deadline = now() + 5
        while now() < deadline and set(load.signal.acked) - set(load.signal.delivered):
            await asyncio.sleep(0.05)
        fallback_total = metric_value(stack.ice.url, "rtc_ratelimit_fallback_total", 'scope="ice"')
    summary = summarize(load, faults, seconds, fallback_total)
    print_summary(summary)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary written to {json_path}")
    return bool(summary["verdict"]["failures"])


def summarize(
    load: Load, faults: FaultLog, seconds: float, fallback_total: float
) -> dict[str, Any]:
    ice, sig, relay = load.ice, load.signal, load.relay
    # Signals
    undelivered = [s for s in sig.acked if s not in sig.delivered]
    in_flight_to_dropped: list[str] = []
    lost_signals: list[str] = []
    for signal_id in undelivered:
        acked_at, receiver = sig.acked[signal_id]
        if load.clients[receiver].was_down_at(acked_at, IN_FLIGHT_SECONDS):
            in_flight_to_dropped.append(signal_id)
        else:
            lost_signals.append(signal_id)
    unexpected = [s for s in sig.delivered if s not in sig.acked]
    recoveries = []
    for restarted in load.redis_restarts:
        firsts = [t for t, _ in sig.acked.values() if t > restarted]
        recoveries.append(round(min(firsts) - restarted, 2) if firsts else None)
    # ICE providers over time: when did Twilio answer again after it healed?
    healed = next((e["at"] for e in faults.events if e["fault"] == "twilio healed"), None)
    twilio_back = None
    if healed is not None:
        back = [t - load.started for t, p in ice.providers if p == "twilio"]
        later = [t for t in back if t >= healed]
        twilio_back = round(min(later) - healed, 2) if later else None
    lost_relay = sorted(relay.acknowledged - relay.delivered)
    failures = []
    if lost_relay:
        failures.append(f"{len(lost_relay)} acknowledged relay messages never delivered")
    if lost_signals:
        failures.append(f"{len(lost_signals)} acked signals lost")
    latencies = ice.latencies
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": seconds,
        "faults": faults.events,
        "readiness": load.readiness,
        "ice": {
            "requests": ice.requests,
            "outcomes": dict(ice.outcomes.most_common()),
            "errors": ice.errors,
            "failures_at": [(round(t, 2), o) for t, o in ice.failures[:50]],
            "latency_ms": {
                "p50": round(1000 * statistics.median(latencies), 1) if latencies else 0,
                "p99": round(1000 * pct(latencies, 0.99), 1),
                "max": round(1000 * max(latencies, default=0), 1),
            },
            "ratelimit_fallback_total": fallback_total,
            "twilio_calls": stack_twilio_calls(load),
            "twilio_back_seconds_after_heal": twilio_back,
        },
        "signal": {
            "sent": sig.sent,
            "outcomes": dict(sig.outcomes.most_common()),
            "acked": len(sig.acked),
            "delivered": len(sig.delivered),
            "duplicates_delivered": sig.duplicates_delivered,
            "acked_not_delivered": len(undelivered),
            "in_flight_to_a_dropped_socket": len(in_flight_to_dropped),
            "lost": len(lost_signals),
            "lost_ids": lost_signals[:20],
            "delivered_never_acked": len(unexpected),
            "cross_instance_back_after_redis_seconds": recoveries,
            "presence_exact_after_kill_seconds": load.presence_settled,
            "reconnections": sum(len(c.outages) for c in load.clients.values()),
        },
        "relay": {
            "messages": len(relay.sent),
            "acknowledged": len(relay.acknowledged),
            "gave_up": len(relay.gave_up),
            "attempts": dict(relay.attempts.most_common()),
            "delivered_unique": len(relay.delivered),
            "delivered_total": relay.delivered_total,
            "acknowledged_not_delivered": len(lost_relay),
            "lost_ids": lost_relay[:20],
            "delivered_never_acknowledged": len(relay.delivered - relay.acknowledged),
            "pulls": dict(relay.pulls),
            "acks": dict(relay.acks),
        },
        "verdict": {"failures": failures, "ok": not failures},
    }


def stack_twilio_calls(load: Load) -> dict[str, int]:
    statuses = Counter(str(r.status) for r in load.twilio.requests)
    return dict(statuses)


def print_summary(summary: dict[str, Any]) -> None:
    ice, sig, relay = summary["ice"], summary["signal"], summary["relay"]
    print("\n=== chaos summary ===")
    print(f"duration {summary['seconds']:.0f} s, {len(summary['faults'])} fault events")
    print(
        f"ICE     {ice['requests']} requests, {ice['errors']} errors; outcomes {ice['outcomes']}; "
        f"latency p50 {ice['latency_ms']['p50']} ms p99 {ice['latency_ms']['p99']} ms "
        f"max {ice['latency_ms']['max']} ms; fallback limiter used "
        f"{ice['ratelimit_fallback_total']:.0f} times; twilio calls {ice['twilio_calls']}; "
        f"twilio back {ice['twilio_back_seconds_after_heal']} s after healing"
    )
    print(
        f"signal  sent {sig['sent']}, acked {sig['acked']}, delivered {sig['delivered']} "
        f"(+{sig['duplicates_delivered']} duplicates), acked-not-delivered "
        f"{sig['acked_not_delivered']} (in flight to a dropped socket "
        f"{sig['in_flight_to_a_dropped_socket']}, lost {sig['lost']}); outcomes {sig['outcomes']}; "
        f"cross-instance back after redis {sig['cross_instance_back_after_redis_seconds']} s; "
        f"presence exact after kill {sig['presence_exact_after_kill_seconds']} s; "
        f"reconnections {sig['reconnections']}"
    )
    print(
        f"relay   {relay['messages']} messages, acknowledged {relay['acknowledged']}, delivered "
        f"{relay['delivered_unique']} unique ({relay['delivered_total']} with redeliveries), "
        f"acknowledged-not-delivered {relay['acknowledged_not_delivered']}, gave up "
        f"{relay['gave_up']}; attempts {relay['attempts']}"
    )
    verdict = summary["verdict"]
    print("verdict: OK" if verdict["ok"] else f"verdict: FAILED: {'; '.join(verdict['failures'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("CHAOS_SECONDS", "180"))
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the summary")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(os.environ.get("RTC_RUN_DIR", REPO_ROOT / ".run"))
    json_path = args.json or run_dir / f"chaos-{stamp}.json"
    for tool in ("redis-server", "nginx", "turnserver"):
        if shutil.which(tool) is None:
            sys.exit(f"chaos: {tool} is not installed (make bootstrap installs it)")
    sys.exit(asyncio.run(run(args.seconds, json_path, args.keep)))


if __name__ == "__main__":
    main()
