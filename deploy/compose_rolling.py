"""`compose_check.py rolling`: every service restarted one replica at a time, under steady load
through the gateway, on two replicas of each.

Load for the whole run: ICE 200 requests/s, relay 200 messages/s (each with its own messageId),
100 sockets (50 senders) signaling 50 offers/s. Each replica in turn gets SIGTERM (`podman
restart`, its graceful stop) and is waited for until healthy again, ice-service's first, then
relay-service's, then signal-service's. Passes when no ICE or relay request failed (nginx tries
the other replica where the request is safe to repeat: GETs, and relay's POSTs, idempotent by
messageId), sockets only reconnected, presence is right afterwards and every acked offer was
delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from compose_check import Client, eventually, instances_of, token
from compose_common import STARTED, CheckFailed, compose, redis_cli, say
from compose_scale import Flow, report
from rtc_testkit.contract import conv_id

SERVICES = ("ice-service", "relay-service", "signal-service")
ICE_PER_SECOND = 200
RELAY_PER_SECOND = 200
SOCKETS = 100
OFFERS_PER_SECOND = 50
HEALTHY_WITHIN = 60.0


@dataclass
class Load:
    """One kind of request at a steady rate, every answer counted."""

    name: str
    per_second: int
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    # (status, request id, body) of the first failures, for the report
    samples: list[tuple[str, str, str]] = field(default_factory=list)
    # requests sent again because the gateway closed the idle keep-alive connection under them
    resent: int = 0
    # when each failure was answered (seconds on the checks' clock), to set beside the restarts
    failed_at: list[float] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if not status.startswith("2"))

    async def run(self, stop: asyncio.Event, request: object) -> None:
        period = 1.0 / self.per_second
        next_at = time.monotonic()
        while not stop.is_set():
            task = asyncio.ensure_future(self._one(request()))  # type: ignore[operator]
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
            self.sent += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if self.in_flight:
            await asyncio.wait(self.in_flight, timeout=15)

    async def _one(self, send: object) -> None:
        """`send(fresh)`: one request, the same one each time it is called."""
        for attempt in (1, 2, 3):
            try:
                # A retry on a new connection (a pooled one may be closed as well).
                status, request_id, body = await send(fresh=attempt > 1)  # type: ignore[operator]
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A reused keep-alive connection the gateway closed (its workers at a reload)
                # before any answer: sent again, as HTTP clients do (RFC 9112 9.3.1; relay's
                # messageId makes it safe). Three times in a row is a failure.
                status, request_id, body = type(exc).__name__, "", ""
                if attempt < 3:
                    self.resent += 1
                    continue
            except Exception as exc:  # no answer at all: a failure too
                status, request_id, body = type(exc).__name__, "", ""
            break
        self.statuses[str(status)] += 1
        if not str(status).startswith("2"):
            self.failed_at.append(time.monotonic() - STARTED)
            if len(self.samples) < 5:
                self.samples.append((str(status), request_id, body[:200]))


def _containers(service: str) -> list[str]:
    return sorted(compose("ps", "-q", service).split())


def _podman(*args: str) -> str:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise CheckFailed(f"podman {' '.join(args)}: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


# (service, from, to) of each restart, on the checks' clock
RESTARTS: list[tuple[str, float, float]] = []


def windows_of(times: list[float]) -> str:
    """Failure times as spans (a gap of a second starts a new one), with counts."""
    spans: list[list[float]] = []
    for t in sorted(times):
        if spans and t - spans[-1][1] <= 1.0:
            spans[-1][1], spans[-1][2] = t, spans[-1][2] + 1
        else:
            spans.append([t, t, 1])
    return ", ".join(f"{a:.1f}-{b:.1f} s: {int(n)}" for a, b, n in spans) or "none"


async def restart_one(container: str, service: str = "") -> float:
    """SIGTERM (10 s grace), start again, healthy, and routed to by the gateway: the seconds it
    took. A restarted container may come back on a new address, which the gateway learns at its
    next look-up (GATEWAY_RESOLVE_SECONDS): the next replica must not stop before that, or the
    gateway is left with one address that is gone and one that is stopping."""
    started = time.monotonic()
    await asyncio.to_thread(_podman, "restart", "-t", "10", container)
    stopped_started = time.monotonic()

    async def healthy() -> bool:
        status = await asyncio.to_thread(
            _podman, "inspect", "-f", "{{.State.Health.Status}}", container
        )
        return status == "healthy"

    await eventually(f"{container[:12]} healthy again", healthy, HEALTHY_WITHIN)
    RESTARTS.append((service, started - STARTED, stopped_started - STARTED))
    address = await asyncio.to_thread(
        _podman, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        container,
    )  # fmt: skip
    gateway = (await asyncio.to_thread(compose, "ps", "-q", "gateway")).split()[0]

    async def routed() -> bool:
        conf = await asyncio.to_thread(
            _podman,
            "exec",
            gateway,
            "cat",
            "/tmp/rtc-gateway/nginx.conf",  # noqa: S108 (in the container)
        )
        return any(f"server {ip}:" in conf for ip in address.split())

    await eventually(f"the gateway routing to {container[:12]} again", routed, HEALTHY_WITHIN)
    return time.monotonic() - started


async def check_rolling(gateway: str, numbers_from: int = 300) -> None:
    await asyncio.to_thread(
        compose, "up", "-d", "--no-recreate", "--no-build",
        "--scale", "ice-service=2", "--scale", "relay-service=2", "--scale", "signal-service=2",
    )  # fmt: skip

    async def listed() -> bool:
        log = await asyncio.to_thread(compose, "logs", "--no-color", "gateway")
        return "ice 2, signal 2, relay 2" in log[log.rfind("upstreams") :]

    await eventually("the gateway listing 2 replicas of each service", listed, 60)
    say("rolling: 2 replicas of each service behind the gateway")

    # Users: ICE callers, relay senders and recipients, signaling pairs (mutual contacts).
    ice_wallets = [f"0xa{n:04x}" for n in range(300)]
    senders = [f"0xb{n:04x}" for n in range(100)]
    recipients = [f"0xc{n:04x}" for n in range(100)]
    socket_wallets = [f"0xd{n:04x}" for n in range(SOCKETS)]
    pairs = list(zip(senders, recipients, strict=True)) + [
        (socket_wallets[2 * i], socket_wallets[2 * i + 1]) for i in range(SOCKETS // 2)
    ]
    await asyncio.to_thread(
        redis_cli,
        *[["SADD", f"rtc:contacts:{a}", b] for a, b in pairs],
        *[["SADD", f"rtc:contacts:{b}", a] for a, b in pairs],
    )
    # Redis's own record of its stalls (fsync, forks, slow commands) over 100 ms, for the report.
    await asyncio.to_thread(redis_cli, ["CONFIG", "SET", "latency-monitor-threshold", "100"])
    tokens = {w: token(w) for w in [*ice_wallets, *senders, *socket_wallets]}
    clients = [Client(w, numbers_from + n) for n, w in enumerate(socket_wallets)]
    for client in clients:
        await client.join(gateway)
    flows = [
        Flow(clients[2 * i], clients[2 * i + 1], interval=SOCKETS / 2 / OFFERS_PER_SECOND)
        for i in range(SOCKETS // 2)
    ]
    ice, relay = Load("ICE", ICE_PER_SECOND), Load("relay", RELAY_PER_SECOND)
    stop = asyncio.Event()
    counter = iter(range(10**9))
    timeout = aiohttp.ClientTimeout(total=20)
    fresh_connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(timeout=timeout) as pooled,
        aiohttp.ClientSession(timeout=timeout, connector=fresh_connector) as unpooled,
    ):
        Answer = tuple[int, str, str]

        def ice_request() -> Callable[[bool], Awaitable[Answer]]:
            wallet = ice_wallets[next(counter) % len(ice_wallets)]
            headers = {"Authorization": f"Bearer {tokens[wallet]}"}

            async def send(fresh: bool = False) -> Answer:
                http = unpooled if fresh else pooled
                async with http.get(gateway + "/api/v1/rtc/ice", headers=headers) as response:
                    text = await response.text()
                    return response.status, response.headers.get("X-Request-ID", ""), text

            return send

        def relay_request() -> Callable[[bool], Awaitable[Answer]]:
            n = next(counter)
            sender, recipient = senders[n % len(senders)], recipients[n % len(recipients)]
            # One messageId for every attempt: a resend is the same message (deduplicated).
            body = {
                "to": recipient,
                "convId": conv_id(sender, recipient),
                "messageId": f"roll-{uuid.uuid4().hex}",
                "payload": "rolling restart",
            }
            headers = {"Authorization": f"Bearer {tokens[sender]}"}

            async def send(fresh: bool = False) -> Answer:
                http = unpooled if fresh else pooled
                url = gateway + "/api/v1/relay/enqueue"
                async with http.post(url, json=body, headers=headers) as response:
                    text = await response.text()
                    return response.status, response.headers.get("X-Request-ID", ""), text

            return send

        tasks = [
            asyncio.create_task(ice.run(stop, ice_request)),
            asyncio.create_task(relay.run(stop, relay_request)),
            *(asyncio.create_task(flow.run(stop)) for flow in flows),
        ]
        per_service: dict[str, list[float]] = {}
        try:
            for service in SERVICES:
                for container in await asyncio.to_thread(_containers, service):
                    took = await restart_one(container, service)
                    per_service.setdefault(service, []).append(took)
                say(
                    f"rolling: {service} restarted one replica at a time: "
                    + ", ".join(f"{t:.1f} s" for t in per_service[service])
                    + f"; so far ICE {ice.sent} sent / {ice.failed} failed,"
                    f" relay {relay.sent} / {relay.failed}"
                )
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(task, 30)
    try:
        everyone = clients

        async def settled() -> bool:
            if not all(c.connected for c in everyone):
                return False
            where = await instances_of(*(c.wallet for c in everyone))
            return all(len(where.get(c.wallet, ())) == 1 for c in everyone)

        await eventually("every socket connected, placed once by presence", settled, 40)
        reconnected = sum(1 for c in everyone if c.connects > 1)
        say(
            f"rolling: ICE {ice.sent} requests, {ice.failed} failed {dict(ice.statuses)};"
            f" relay {relay.sent} messages, {relay.failed} failed {dict(relay.statuses)};"
            f" {reconnected} of {len(everyone)} sockets reconnected, presence right"
        )
        say(
            f"rolling: sent again after the gateway closed a kept-alive connection: ICE"
            f" {ice.resent}, relay {relay.resent}"
        )
        stalls = await asyncio.to_thread(redis_cli, ["LATENCY", "LATEST"], ["INFO", "persistence"])
        delayed = [line for line in stalls if line.startswith("aof_delayed_fsync")]
        events = [line for line in stalls if ":" not in line and line.strip()]
        say(f"rolling: Redis's latency events over 100 ms (event, at, ms, max ms): {events}")
        say(f"rolling: Redis {delayed}")
        say(
            "rolling: restarts (SIGTERM to started again): "
            + ", ".join(f"{name} {a:.1f}-{b:.1f} s" for name, a, b in RESTARTS)
        )
        if ice.failed or relay.failed:
            say(f"rolling: ICE failures at {windows_of(ice.failed_at)}")
            say(f"rolling: relay failures at {windows_of(relay.failed_at)}")
            log = await asyncio.to_thread(compose, "logs", "--no-color", "gateway")
            for load in (ice, relay):
                for status, request_id, body in load.samples:
                    lines = [line for line in log.splitlines() if request_id and request_id in line]
                    say(f"{load.name} {status} {request_id} {body} gateway: {lines[:2]}")
            relay_log = await asyncio.to_thread(compose, "logs", "--no-color", "relay-service")
            for line in [x for x in relay_log.splitlines() if "unavailable" in x][:6]:
                say(f"relay-service: {line[-300:]}")
            errors = [line for line in log.splitlines() if "[error]" in line or "[warn]" in line]
            for line in errors[-10:]:
                say(f"gateway: {line[-300:]}")
            with contextlib.suppress(CheckFailed):
                await report(flows, "rolling")
            raise CheckFailed(f"failed requests: ICE {ice.failed}, relay {relay.failed}")
        if any(flow.acked - flow.delivered() for flow in flows):
            # What the signal replicas said of their pub/sub connections (a lost listener
            # connection drops what Redis had handed it).
            log = await asyncio.to_thread(compose, "logs", "--no-color", "signal-service")
            for line in [x for x in log.splitlines() if "pub/sub" in x or "lost redis" in x][:8]:
                say(f"signal-service: {line[-260:]}")
        await report(flows, "rolling")
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
