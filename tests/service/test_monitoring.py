"""Monitoring: the alert rules (promtool), the dashboard, and both evaluated on a real Prometheus.

The end-to-end test runs the services (ice with a Twilio stand-in, two signal instances, relay,
the gateway, Redis) and a Prometheus scraping them every second, with a copy of
deploy/prometheus/alerts.yml whose range windows and `for:` durations are shortened; the
expressions are otherwise the same (checked). It drives traffic until every alert fires, then
removes the cause and waits until it clears, and finally evaluates every dashboard query on what
was scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from rtc_gateway import GatewayLimits
from rtc_testkit.contract import make_token, offer
from rtc_testkit.peer import open_peers
from rtc_testkit.processes import (
    HttpServer,
    RedisServer,
    ServiceProcess,
    free_port,
    wait_for,
    wait_for_async,
)
from rtc_testkit.stack import StackSpec, start_stack_async
from rtc_testkit.twilio import TwilioStub
from rtcctl.local import StackPorts, prepare, render_prometheus

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "rtc-backplane.json"
DATASOURCE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (apt install prometheus)"
)
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not installed (apt install prometheus)",
)

# The end-to-end test's windows: every range in alerts.yml and the dashboard must be listed.
SHORT_WINDOWS = {"10m": "20s", "1h": "90s", "5m": "10s"}
SHORT_FOR = "2s"
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval for a 1 s scrape interval (4 x scrape)


def shorten(expr: str) -> str:
    """The same expression over the test's windows (KeyError for a window not mapped)."""
    return re.sub(r"\[(\d+[smhd])\]", lambda m: f"[{SHORT_WINDOWS[m.group(1)]}]", expr)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alert_rules() if "alert" in rule]


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# -- the rules and the dashboard, offline ------------------------------------------------------


@needs_promtool
def test_alert_rules_are_valid() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_alert_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(ALERTS_TEST))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for name in alert_names():
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: needs a firing and a not-firing case"
    expected = {
        "RelayCandidateShareRising",
        "IceUnavailableSustained",
        "TwilioErrorRate",
        "RelayOldestMessageAge",
        "RelayStoreMemoryHigh",
        "SignalPubsubListenerDown",
        "NoInstanceReady",
    }
    assert set(alert_names()) == expected


@needs_promtool
def test_prometheus_configs_are_valid(tmp_path: Path) -> None:
    done = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    local = tmp_path / "prometheus.yml"
    local.write_text(render_prometheus(StackPorts(prometheus=9390)))
    done = promtool("check", "config", str(local), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_provisioned_with_the_alerts() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]
    assert dashboard["uid"] == "rtc-backplane"
    titles = " ".join(panel["title"] for panel in dashboard["panels"])
    for name in alert_names():
        assert name in titles, f"no panel shows the series of {name}"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
    # The shortened copy maps every window the dashboard uses.
    for _title, expr in dashboard_targets():
        shorten(expr).replace("$__rate_interval", RATE_INTERVAL)


def test_local_stack_prepares_a_prometheus(tmp_path: Path) -> None:
    port = free_port()
    prepare(tmp_path / "with", StackPorts(prometheus=port))
    procfile = (tmp_path / "with" / "Procfile").read_text()
    line = next(line for line in procfile.splitlines() if line.startswith("prometheus:"))
    assert f"--web.listen-address=127.0.0.1:{port}" in line
    config = json.loads((tmp_path / "with" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [str(ALERTS)]
    jobs = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert jobs == {
        "ice-service": ["127.0.0.1:8101"],
        "signal-service": ["127.0.0.1:8201", "127.0.0.1:8202"],
        "relay-service": ["127.0.0.1:8301"],
    }
    prepare(tmp_path / "without", StackPorts())
    assert "prometheus" not in (tmp_path / "without" / "Procfile").read_text()


# -- a real Prometheus on the real services ----------------------------------------------------


def short_rules(path: Path) -> Path:
    """alerts.yml with the test's windows and `for:`; nothing else changes."""
    document = yaml.safe_load(ALERTS.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["expr"] = shorten(rule["expr"])
            if "for" in rule:
                rule["for"] = SHORT_FOR
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Prometheus(HttpServer):
    ready_path = "/-/ready"
    ready_timeout = 30.0

    def __init__(self, workdir: Path, ports: StackPorts, rules: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            render_prometheus(ports, [rules], scrape_interval="1s", evaluation_interval="1s")
        )
        argv = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        super().__init__(f"prometheus:{self.port}", argv, workdir / "prometheus.log")


class Driver:
    """Traffic through the gateway and questions to Prometheus, on one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, gateway: str, prometheus: str) -> None:
        self.session = session
        self.gateway = gateway
        self.prometheus = prometheus
        self.statuses: list[int] = []

    async def ice(self, wallet: str) -> int:
        headers = {"Authorization": f"Bearer {make_token(wallet)}"}
        async with self.session.get(f"{self.gateway}/api/v1/rtc/ice", headers=headers) as reply:
            await reply.read()
            self.statuses.append(reply.status)
            return reply.status

    async def telemetry(
        self, wallet: str, transport: str, candidate: str | None, **extra: Any
    ) -> None:
        body: dict[str, Any] = {"transport": transport, **extra}
        if candidate is not None:
            body["candidateType"] = candidate
        headers = {"Authorization": f"Bearer {make_token(wallet)}"}
        url = f"{self.gateway}/api/v1/rtc/telemetry"
        async with self.session.post(url, json=body, headers=headers) as reply:
            assert reply.status == 204, await reply.text()

    async def relay(self, method: str, path: str, wallet: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {make_token(wallet)}"}
        url = f"{self.gateway}/api/v1/relay/{path}"
        async with self.session.request(method, url, json=body, headers=headers) as reply:
            return reply.status, await reply.json()

    async def query(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.prometheus}/api/v1/{path}", params=params) as reply:
            body = await reply.json()
        assert body["status"] == "success", body
        return body["data"]

    async def alerts(self, name: str) -> list[dict[str, Any]]:
        data = await self.query("alerts")
        return [a for a in data["alerts"] if a["labels"]["alertname"] == name]

    async def wait_alert(
        self, name: str, firing: bool, timeout: float, jobs: set[str] | None = None
    ) -> None:
        async def reached() -> bool:
            alerts = await self.alerts(name)
            if not firing:
                return not alerts
            fired = {a["labels"].get("job", "") for a in alerts if a["state"] == "firing"}
            return bool(fired) and (jobs is None or jobs <= fired)

        state = "firing" if firing else "cleared"
        await wait_for_async(reached, timeout, what=f"{name} {state}")


async def repeat(action: Callable[[], Awaitable[Any]], every: float) -> None:
    """Background traffic: `action` every `every` seconds until cancelled."""
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            await action()
        await asyncio.sleep(every)  # pacing of the traffic, not a synchronisation


@contextlib.asynccontextmanager
async def running(*tasks: Awaitable[Any]) -> AsyncIterator[None]:
    started = [asyncio.ensure_future(task) for task in tasks]
    try:
        yield
    finally:
        for task in started:
            task.cancel()
        await asyncio.gather(*started, return_exceptions=True)


ALICE = "0xa11ce" + uuid.uuid4().hex[:10]
BOB = "0xb0b" + uuid.uuid4().hex[:12]


async def phase_ice_and_twilio(driver: Driver, stub: TwilioStub) -> None:
    """Twilio fails: ICE answers 503 ice_unavailable (no fallback) until it is back."""
    async with running(repeat(lambda: driver.ice(ALICE), 0.25)):
        await wait_for_async(lambda: _has(driver.statuses, 200), 15, what="ICE 200 from twilio")
        stub.mode = "http_500"  # the cached token's reuse window (5 s) ends, the refetch fails
        await driver.wait_alert("TwilioErrorRate", firing=True, timeout=30)
        await driver.wait_alert("IceUnavailableSustained", firing=True, timeout=30)
        assert 503 in driver.statuses
        stub.mode = "ok"  # the breaker lets a trial through within its 30 s cooldown
        await driver.wait_alert("TwilioErrorRate", firing=False, timeout=60)
        await driver.wait_alert("IceUnavailableSustained", firing=False, timeout=60)
        assert driver.statuses[-1] == 200


async def _has(statuses: list[int], status: int) -> bool:
    return status in statuses


async def phase_relay_share(driver: Driver) -> None:
    """Direct paths, then mostly TURN relay candidates, then direct again."""

    async def direct() -> None:
        await driver.telemetry(ALICE, "rtc", "host")
        await driver.telemetry(BOB, "rtc", "srflx")

    async def turned() -> None:
        for _ in range(4):
            await driver.telemetry(ALICE, "rtc", "relay")
        await driver.telemetry(BOB, "rtc", "host")
        await driver.telemetry(BOB, "relay", None, forced=True)  # relay-service fallbacks

    async with running(repeat(direct, 0.1)):
        await wait_for_async(
            lambda: _series_above(driver, "sum(rtc_transport_messages_total)", 300),
            30,
            what="a direct-path baseline",
        )
    async with running(repeat(turned, 0.2)):
        await driver.wait_alert("RelayCandidateShareRising", firing=True, timeout=45)
    async with running(repeat(direct, 0.1)):
        await driver.wait_alert("RelayCandidateShareRising", firing=False, timeout=45)


async def _series_above(driver: Driver, expr: str, value: float) -> bool:
    result = (await driver.query("query", query=expr))["result"]
    return bool(result) and float(result[0]["value"][1]) >= value


async def phase_relay_age(driver: Driver) -> None:
    """A message waits for its offline recipient past half its TTL (30 s), then is acked."""
    body = {
        "to": BOB,
        "convId": ":".join(sorted([ALICE, BOB])),
        "messageId": uuid.uuid4().hex,
        "payload": "waiting",
        "force": True,
    }
    status, answer = await driver.relay("POST", "enqueue", ALICE, body)
    assert status == 202, answer
    await driver.wait_alert("RelayOldestMessageAge", firing=True, timeout=40)
    status, pulled = await driver.relay("GET", "pull", BOB)
    assert status == 200 and pulled["messages"], pulled
    status, acked = await driver.relay("POST", "ack", BOB, {"ids": [answer["id"]]})
    assert acked == {"acked": 1}
    await driver.wait_alert("RelayOldestMessageAge", firing=False, timeout=30)


async def phase_signaling(gateway: str) -> None:
    """Two sockets, an offer between them: sockets, events, presence and latency series."""
    async with open_peers() as peers:
        alice = await peers.connect(gateway, ALICE)
        await peers.connect(gateway, BOB)
        ack = await alice.call("rtc:offer", offer(ALICE, BOB, uuid.uuid4().hex))
        assert ack["ok"] is True, ack


async def phase_relay_store_memory(driver: Driver, redis: RedisServer) -> None:
    """The store Redis fills up to 90 % of a maxmemory, then is emptied and unlimited again."""
    client = redis.client()
    # 8 MB of small values, so that the clients' own buffers (used_memory moves by some 100 KB
    # as they connect and read) cannot take the share below 80 % or over the limit. Small ones:
    # one large value would leave its size in the query buffer for a while, counted as used.
    keys = [f"rtc:test:ballast:{n}" for n in range(8000)]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, b"x" * 1000)
    pipe.execute()
    client.config_set("maxmemory", int(int(client.info("memory")["used_memory"]) / 0.9))
    try:
        await driver.wait_alert("RelayStoreMemoryHigh", firing=True, timeout=30)
    finally:
        client.config_set("maxmemory", 0)
        client.delete(*keys)
    await driver.wait_alert("RelayStoreMemoryHigh", firing=False, timeout=30)


async def phase_redis_down(driver: Driver, redis: RedisServer) -> None:
    """Redis stops: no instance of any service is ready and the pub/sub listeners go deaf."""
    redis.stop()
    async with running(repeat(lambda: driver.ice(ALICE), 0.5)):
        status, _ = await driver.relay(
            "POST",
            "enqueue",
            ALICE,
            {"to": BOB, "convId": ":".join(sorted([ALICE, BOB])), "messageId": "x", "payload": ""},
        )
        assert status == 503
        # ice-service answers on its fallback limiter: ready (degraded), so not among them.
        jobs = {"signal-service", "relay-service"}
        await driver.wait_alert("NoInstanceReady", firing=True, timeout=40, jobs=jobs)
        await driver.wait_alert("SignalPubsubListenerDown", firing=True, timeout=40)
    redis.start()
    await driver.wait_alert("NoInstanceReady", firing=False, timeout=40)
    await driver.wait_alert("SignalPubsubListenerDown", firing=False, timeout=40)


def access_lines(process: ServiceProcess) -> list[dict[str, Any]]:
    lines = []
    for raw in process.log_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(raw)
            if isinstance(entry, dict):
                lines.append(entry)
    return lines


def test_short_rules_keep_the_expressions(tmp_path: Path) -> None:
    """The end-to-end test's copy differs from alerts.yml in windows and `for:` only."""
    original = alert_rules()
    short = [
        r
        for g in yaml.safe_load(short_rules(tmp_path / "r.yml").read_text())["groups"]
        for r in g["rules"]
    ]
    assert len(short) == len(original)
    for before, after in zip(original, short, strict=True):
        assert after["expr"] == shorten(before["expr"])
        assert {k: v for k, v in after.items() if k not in ("expr", "for")} == {
            k: v for k, v in before.items() if k not in ("expr", "for")
        }


@needs_prometheus
@pytest.mark.timeout(300)
async def test_alerts_fire_and_clear_on_scraped_data(tmp_path: Path, twilio: TwilioStub) -> None:
    stub = twilio
    spec = StackSpec(
        ice=1,
        signal=2,
        relay=1,
        ice_env={
            "ICE_RATE_LIMIT_PER_MIN": "100000",
            "TELEMETRY_RATE_LIMIT_PER_MIN": "100000",
            "FLAG_CACHE_SECONDS": "0.2",
            "RTC_PROVIDER": "twilio",
            **stub.env(),
            "TWILIO_TIMEOUT_SECONDS": "2",
            "TURN_CRED_TTL": "10",  # a token is reused for 5 s, then fetched again
        },
        relay_env={"RELAY_TTL_SECONDS": "30"},
        contacts=((ALICE, BOB),),
        gateway_limits=GatewayLimits.off(),  # all the traffic comes from one address
    )
    async with start_stack_async(spec, tmp_path) as stack:
        redis, ice, signals, relay = stack.redis, stack.ice, stack.signals, stack.relay
        gateway, services = stack.gateway, stack.services
        ports = StackPorts(ice=[ice.port], signal=[s.port for s in signals], relay=[relay.port])
        prometheus = Prometheus(tmp_path / "prometheus", ports, short_rules(tmp_path / "rules.yml"))
        await asyncio.to_thread(stack.start, prometheus)
        started = time.time()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            driver = Driver(session, gateway.url, prometheus.url)

            async def all_targets_up() -> bool:
                with contextlib.suppress(aiohttp.ClientError, AssertionError):
                    result = (await driver.query("query", query="sum(up)"))["result"]
                    return bool(result) and float(result[0]["value"][1]) == len(services)
                return False

            await wait_for_async(all_targets_up, 30, what="prometheus scraping every service")

            await phase_signaling(gateway.url)
            await asyncio.gather(
                phase_ice_and_twilio(driver, stub),
                phase_relay_share(driver),
                phase_relay_age(driver),
            )
            await phase_relay_store_memory(driver, redis)
            await phase_redis_down(driver, redis)

            # Every dashboard query evaluates, with data, over what was scraped.
            empty = []
            for title, expr in dashboard_targets():
                query = shorten(expr).replace("$__rate_interval", RATE_INTERVAL)
                data = await driver.query(
                    "query_range",
                    query=query,
                    start=str(started),
                    end=str(time.time()),
                    step="1",
                )
                if not data["result"]:
                    empty.append((title, expr))
            # No fallback provider is configured here, so nothing answers as the fallback.
            assert [e for _, e in empty if "rtc_ice_fallback_total" not in e] == []

        # One JSON line per request and event: id, route, status, latency, wallet hash only.
        def logged() -> bool:
            return any(
                e.get("msg") == "request" and e.get("route") == "/api/v1/rtc/ice"
                for e in access_lines(ice)
            )

        wait_for(logged, 5, what="ice-service access lines")
        ice_lines = [
            e
            for e in access_lines(ice)
            if e.get("msg") == "request" and e.get("route") == "/api/v1/rtc/ice"
        ]
        for entry in ice_lines:
            assert {"requestId", "route", "status", "durationMs", "walletHash"} <= set(entry)
        assert {e["status"] for e in ice_lines} >= {200, 503}
        events = [e for s in signals for e in access_lines(s) if e.get("msg") == "event"]
        assert any(e["event"] == "rtc:offer" and e["outcome"] == "ok" for e in events), events
        assert all("requestId" in e and "walletHash" in e and "durationMs" in e for e in events)
        for service in services:
            text = service.log_text()
            for secret in (ALICE, BOB, "eyJ", stub.api_secret, "Traceback"):
                assert secret not in text, f"{secret[:8]} in the log of {service.name}"
