"""`rtcctl doctor` against a real stack started here, healthy and with deliberate faults.

The stack: redis, coturn, ice-service, two signal-service instances, relay-service and the nginx
gateway, with a run folder (`env` + `stack.json`) like the one `make up` writes. The doctor runs
as the operator runs it: `.venv/bin/rtcctl doctor` in a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from rtc_common.directory import REDIS_FLAGS_KEY
from rtc_testkit.contract import JWT_SECRET, TURN_SECRET
from rtc_testkit.processes import (
    Coturn,
    Gateway,
    ProcessGroup,
    RedisServer,
    ServiceProcess,
    free_port,
)
from rtc_testkit.stack import StackSpec, start_stack
from rtc_testkit.twilio import ACCOUNT_SID, API_KEY, API_SECRET, TwilioStub
from rtcctl.doctor import Result, render, resolve_target, skew_verdict

RTCCTL = str(Path(sys.executable).parent / "rtcctl")
WRONG_TURN_SECRET = "not-the-coturn-secret-0123456789"
PREVIOUS_TURN_SECRET = "retired-turn-secret-9876543210"
# A base64 HMAC-SHA1 (a TURN credential) or a JWT must never be printed.
CREDENTIAL_SHAPES = re.compile(r"[A-Za-z0-9+/]{27}=|eyJ[A-Za-z0-9_-]{10,}")


@dataclass
class Stack:
    run_dir: Path
    env: dict[str, str]
    redis: RedisServer
    coturn: Coturn
    gateway: Gateway
    signals: list[ServiceProcess]
    ice_ports: list[int]
    relay_ports: list[int]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("doctor")
    # FLAG_CACHE_SECONDS=0: the flag test's change is seen by ice-service at once.
    no_flag_cache = {"FLAG_CACHE_SECONDS": "0"}
    spec = StackSpec(
        ice=1, signal=2, relay=1, coturn=True, ice_env=no_flag_cache, relay_env=no_flag_cache
    )
    with start_stack(spec, root) as started:
        for process in started.group.processes:
            process.ensure_alive()  # each answered its own readiness probe, none exited since
        env = started.env("ice")
        run_dir = root / "run"
        run_dir.mkdir()
        (run_dir / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        (run_dir / "stack.json").write_text(json.dumps(asdict(started.ports())))
        yield Stack(
            run_dir,
            env,
            started.redis,
            started.coturn,
            started.gateway,
            started.signals,
            [p.port for p in started.ices],
            [p.port for p in started.relays],
        )


def doctor_env(**overrides: str) -> dict[str, str]:
    """A clean environment (nothing of the caller's shell) plus `overrides`."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **overrides}


def doctor(stack: Stack, *args: str, **overrides: str) -> tuple[int, str]:
    done = subprocess.run(
        [RTCCTL, "--run-dir", str(stack.run_dir), "doctor", *args],
        env=doctor_env(**overrides),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert_no_secrets(output)
    return done.returncode, output


async def doctor_async(*args: str, **overrides: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        RTCCTL,
        "doctor",
        *args,
        env=doctor_env(**overrides),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    output = stdout.decode()
    assert_no_secrets(output)
    assert process.returncode is not None
    return process.returncode, output


def assert_no_secrets(output: str) -> None:
    basic = base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
    for secret in (
        JWT_SECRET,
        TURN_SECRET,
        WRONG_TURN_SECRET,
        PREVIOUS_TURN_SECRET,
        API_SECRET,
        basic,
        ACCOUNT_SID,
    ):
        assert secret not in output
    assert not CREDENTIAL_SHAPES.search(output), output


def check(output: str, status: str, name: str) -> tuple[str, str]:
    """The line of check `name` (asserting its status) and the fix printed under it ('' if none)."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].startswith(name + "  "):  # names are padded
            assert parts[0] == status, f"{name}: {line}\n\n{output}"
            following = lines[index + 1].strip() if index + 1 < len(lines) else ""
            return line, following.removeprefix("fix: ") if following.startswith("fix:") else ""
    raise AssertionError(f"no check {name!r} in:\n{output}")


def test_healthy_stack_passes(stack: Stack) -> None:
    code, out = doctor(stack)
    assert code == 0, out
    assert not re.search(r"^(FAIL|WARN) ", out, re.M), out
    hostport = f"127.0.0.1:{stack.coturn.port}"
    check(out, "PASS", "config coturn")
    check(out, "SKIP", "twilio")
    line, _ = check(out, "PASS", f"coturn {hostport}/udp")
    assert "allocated relay 127.0.0.1:" in line
    check(out, "PASS", f"coturn {hostport}/tcp")
    line, _ = check(out, "PASS", f"coturn {hostport} relay")
    assert "and back" in line
    line, _ = check(out, "PASS", f"coturn {hostport} relay address")
    assert "expected on a local stack" in line
    line, _ = check(out, "PASS", f"coturn {hostport} clock")
    assert "within ±3 s" in line
    check(out, "PASS", "gateway /healthz")
    line, _ = check(out, "PASS", "gateway /api/v1/rtc/ice")
    assert "provider coturn" in line
    line, _ = check(out, "PASS", "gateway ICE credentials")
    assert f"coturn at {hostport} accepted" in line
    check(out, "PASS", "gateway /api/v1/relay/pull")
    check(out, "PASS", "gateway /socket.io/")
    check(out, "PASS", "redis REDIS_URL")
    check(out, "PASS", "directory DIRECTORY_URL")
    line, _ = check(out, "PASS", "flag rtc.ice")
    assert "enabled" in line
    for signal in stack.signals:
        line, _ = check(out, "PASS", f"signal 127.0.0.1:{signal.port} pub/sub")
        assert "pubsub ok" in line
    # Every instance's own /healthz/deps (ice and relay from stack.json, signal too).
    for kind, port in [
        *(("ice", p) for p in stack.ice_ports),
        *(("relay", p) for p in stack.relay_ports),
        *(("signal", s.port) for s in stack.signals),
    ]:
        line, _ = check(out, "PASS", f"{kind} 127.0.0.1:{port} dependencies")
        assert "ready; up: " in line and "revocations" in line
    assert "0 failed" in out


def test_degraded_and_unready_instances(stack: Stack, tmp_path: Path) -> None:
    """An ice-service without its provider is ready but degraded (WARN, the provider named); a
    relay-service whose store is unreachable is not ready (FAIL, relay_store named)."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    ice = ServiceProcess(
        "ice_service",
        tmp_path / "ice",
        {**stack.env, "RTC_PROVIDER": "twilio", "RTC_PROVIDER_FALLBACK": ""},
        name="ice-no-provider",
    )
    relay = ServiceProcess(
        "relay_service", tmp_path / "relay", {**stack.env, "RELAY_REDIS_URL": closed}, name="relay"
    )
    relay.ready_path = "/healthz"  # alive, never ready
    with ProcessGroup() as group:
        group.start(ice)
        group.start(relay)
        code, out = doctor(stack, "--ice", ice.url, "--relay", relay.url)
    assert code == 1, out
    line, fix = check(out, "WARN", f"ice 127.0.0.1:{ice.port} dependencies")
    assert "ready, degraded: provider down since " in line and "ProviderError" in line
    assert "config" in fix
    line, fix = check(out, "FAIL", f"relay 127.0.0.1:{relay.port} dependencies")
    assert "NOT READY: relay_store down since " in line
    assert "RELAY_REDIS_URL" in fix


def test_wrong_turn_secret(stack: Stack) -> None:
    # The process environment overrides the run folder's env, as for every rtcctl command.
    code, out = doctor(stack, TURN_SECRET=WRONG_TURN_SECRET)
    assert code == 1, out
    line, fix = check(out, "FAIL", f"coturn 127.0.0.1:{stack.coturn.port}/udp")
    assert "401" in line and "TURN_SECRET" in line
    assert "static-auth-secret" in fix
    check(out, "SKIP", f"coturn 127.0.0.1:{stack.coturn.port} clock")
    # The stack itself (ice-service has the right secret) is fine.
    check(out, "PASS", "gateway /api/v1/rtc/ice")
    check(out, "PASS", "gateway ICE credentials")


def test_flag_off(stack: Stack) -> None:
    client = stack.redis.client()
    client.hset(REDIS_FLAGS_KEY, "rtc.ice", "0")
    try:
        code, out = doctor(stack)
    finally:
        client.hset(REDIS_FLAGS_KEY, "rtc.ice", "1")
    assert code == 1, out
    line, fix = check(out, "FAIL", "flag rtc.ice")
    assert "disabled" in line
    assert fix == "rtcctl flags enable rtc.ice"
    line, fix = check(out, "FAIL", "gateway /api/v1/rtc/ice")
    assert "403 feature_disabled" in line
    assert "rtcctl flags enable rtc.ice" in fix


def test_missing_twilio_variable(stack: Stack) -> None:
    code, out = doctor(
        stack,
        RTC_PROVIDER="twilio",
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_API_KEY=API_KEY,
    )
    assert code == 1, out
    line, fix = check(out, "FAIL", "config twilio")
    assert "missing TWILIO_API_SECRET" in line
    assert "TWILIO_ACCOUNT_SID" not in line and "TWILIO_API_KEY," not in line
    assert fix.startswith("TWILIO_API_SECRET: set it")
    check(out, "SKIP", "twilio")
    check(out, "SKIP", "coturn")


def test_coturn_stopped(stack: Stack) -> None:
    stack.coturn.stop()
    try:
        code, out = doctor(stack, "--timeout", "1.5")
    finally:
        stack.coturn.start()
    assert code == 1, out
    hostport = f"127.0.0.1:{stack.coturn.port}"
    line, fix = check(out, "FAIL", f"coturn {hostport}/udp")
    assert "no answer" in line
    assert "start coturn" in fix
    line, _ = check(out, "FAIL", f"coturn {hostport}/tcp")
    assert "connection refused" in line
    check(out, "SKIP", f"coturn {hostport} relay")
    # Nothing else is blamed: coturn is not on the gateway's path (credentials are HMACs).
    assert len(re.findall(r"^FAIL ", out, re.M)) == 2, out


@pytest.fixture
def odd_coturn(tmp_path: Path) -> Iterator[Any]:
    """Start a second coturn whose turnserver.conf has extra lines: `odd_coturn("line", ...)`
    (`previous=`: a second static-auth-secret, as during a rotation; `without=`: lines left
    out)."""
    started: list[Coturn] = []

    def start(*lines: str, previous: str | None = None, without: tuple[str, ...] = ()) -> Coturn:
        workdir = tmp_path / f"coturn{len(started)}"
        server = Coturn(workdir, previous=previous)
        conf = workdir / "turnserver.conf"
        kept = [line for line in conf.read_text().splitlines() if line not in without]
        assert len(kept) == len(conf.read_text().splitlines()) - len(without), without
        conf.write_text("".join(f"{line}\n" for line in [*kept, *lines]))
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


def test_peer_permission_refused(stack: Stack, odd_coturn: Any) -> None:
    # The local stack's config without its one loopback exception: the denied 127/8 applies.
    server = odd_coturn(without=("allowed-peer-ip=127.0.0.1",))
    code, out = doctor(stack, TURN_URIS=f"turn:127.0.0.1:{server.port}")
    assert code == 1, out
    check(out, "PASS", f"coturn 127.0.0.1:{server.port}/udp")
    line, fix = check(out, "FAIL", f"coturn 127.0.0.1:{server.port} relay")
    assert "refused the permission for peer 127.0.0.1:" in line and "403" in line
    assert "denied-peer-ip" in fix
    check(out, "PASS", f"coturn 127.0.0.1:{server.port} clock")


def test_relayed_address_unreachable(stack: Stack, odd_coturn: Any) -> None:
    """As behind a firewall closing the relay port range: nothing sent to the relay comes back.

    coturn advertises a relayed address (TEST-NET-1) that no datagram reaches.
    """
    server = odd_coturn("external-ip=192.0.2.1")
    code, out = doctor(stack, "--timeout", "1", TURN_URIS=f"turn:127.0.0.1:{server.port}")
    assert code == 1, out
    line, fix = check(out, "FAIL", f"coturn 127.0.0.1:{server.port} relay")
    assert "relayed address 192.0.2.1:" in line and "never came back" in line
    assert "relay port range" in fix and "external-ip" in fix
    assert len(re.findall(r"^FAIL ", out, re.M)) == 1, out


def test_turn_rotation_in_progress(stack: Stack, odd_coturn: Any) -> None:
    """coturn has the new secret and the previous one: the doctor says the rotation is not over."""
    server = odd_coturn(previous=PREVIOUS_TURN_SECRET)
    code, out = doctor(stack, TURN_URIS=server.uris, TURN_SECRET_PREVIOUS=PREVIOUS_TURN_SECRET)
    assert code == 0, out  # a warning, not a failure
    hostport = f"127.0.0.1:{server.port}"
    check(out, "PASS", f"coturn {hostport}/udp")
    line, fix = check(out, "WARN", f"coturn {hostport} previous secret")
    assert "rotation in progress" in line and "TURN_SECRET_PREVIOUS" in line
    assert "TURN_CRED_TTL" in fix and "static-auth-secret" in fix
    assert "unset TURN_SECRET_PREVIOUS" in fix
    assert len(re.findall(r"^WARN ", out, re.M)) == 1, out
    assert PREVIOUS_TURN_SECRET not in out


def test_turn_previous_secret_retired(stack: Stack) -> None:
    """TURN_SECRET_PREVIOUS left set after coturn dropped it: named, with the fix."""
    code, out = doctor(stack, TURN_SECRET_PREVIOUS=PREVIOUS_TURN_SECRET)
    assert code == 0, out
    hostport = f"127.0.0.1:{stack.coturn.port}"
    check(out, "PASS", f"coturn {hostport}/udp")
    line, fix = check(out, "WARN", f"coturn {hostport} previous secret")
    assert "coturn refuses it (already retired)" in line
    assert fix == "unset TURN_SECRET_PREVIOUS"
    assert PREVIOUS_TURN_SECRET not in out


def test_turn_previous_secret_equal_to_current(stack: Stack) -> None:
    """TURN_SECRET_PREVIOUS copied from TURN_SECRET: said as such, not reported as a rotation."""
    code, out = doctor(stack, TURN_SECRET_PREVIOUS=TURN_SECRET)
    assert code == 0, out
    hostport = f"127.0.0.1:{stack.coturn.port}"
    line, fix = check(out, "WARN", f"coturn {hostport} previous secret")
    assert "equals TURN_SECRET" in line and "rotation in progress" not in out
    assert "unset it otherwise" in fix
    assert TURN_SECRET not in out


def test_previous_secrets_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rotation variables are remembered as secrets, from the env file or the environment."""
    jwt_previous = "retired-jwt-secret-0123456789abcdef"
    env_file = tmp_path / "deploy.env"
    env_file.write_text(f"JWT_SECRET_PREVIOUS={jwt_previous}\n")
    monkeypatch.setenv("TURN_SECRET_PREVIOUS", PREVIOUS_TURN_SECRET)
    args = argparse.Namespace(
        run_dir=tmp_path, env_file=env_file, gateway=None, signal=None, timeout=1.0
    )
    target = resolve_target(args)
    leak = Result("FAIL", "leak", f"{jwt_previous} {PREVIOUS_TURN_SECRET}", PREVIOUS_TURN_SECRET)
    text = render([leak], target)
    assert jwt_previous not in text and PREVIOUS_TURN_SECRET not in text
    assert "*** ***" in text


@pytest.mark.parametrize(
    ("accepted", "status", "words"),
    [
        ({-30: False, -10: False, -3: False, 3: True, 10: True, 30: True}, "PASS", "within ±3 s"),
        (
            {-30: False, -10: False, -3: False, 3: False, 10: True, 30: True},
            "WARN",
            "3 to 10 s ahead",
        ),
        (
            {-30: False, -10: True, -3: True, 3: True, 10: True, 30: True},
            "WARN",
            "10 to 30 s behind",
        ),
        (
            {-30: False, -10: False, -3: False, 3: False, 10: False, 30: False},
            "FAIL",
            "more than 30 s ahead",
        ),
        (
            {-30: True, -10: True, -3: True, 3: True, 10: True, 30: True},
            "FAIL",
            "more than 30 s behind",
        ),
    ],
)
def test_skew_bracket(accepted: dict[int, bool], status: str, words: str) -> None:
    """coturn accepts an expiry not in its past: the refused/accepted boundary brackets the skew."""
    got, detail, _ = skew_verdict(accepted)
    assert got == status and words in detail, detail


async def test_twilio_tokens_call(stack: Stack, twilio: TwilioStub, tmp_path: Path) -> None:
    """Any deployment: an env file and explicit URLs instead of the run folder."""
    env_file = tmp_path / "deploy.env"
    env_file.write_text(
        "".join(f"{k}={v}\n" for k, v in stack.env.items())
        + "RTC_PROVIDER=twilio\nRTC_PROVIDER_FALLBACK=coturn\n"
        + "".join(f"{k}={v}\n" for k, v in twilio.env().items())
    )
    flags = ["--env-file", str(env_file), "--gateway", stack.gateway.url]
    flags += [arg for s in stack.signals for arg in ("--signal", s.url)]
    empty_run_dir = str(tmp_path / "no-run-dir")

    code, out = await doctor_async(*flags, RTC_RUN_DIR=empty_run_dir)
    assert code == 0, out
    line, _ = check(out, "PASS", "twilio")
    assert "HTTP 201, 4 ICE servers" in line
    check(out, "PASS", "config twilio")
    check(out, "PASS", "config coturn")
    check(out, "PASS", f"coturn 127.0.0.1:{stack.coturn.port} relay")
    check(out, "PASS", f"signal 127.0.0.1:{stack.signals[1].port} pub/sub")
    [request] = twilio.requests
    assert request.method == "POST" and request.path == twilio.tokens_path
    assert request.form == {"Ttl": ["600"]} and request.status == 201

    # Refused credentials (as Twilio answers a key of another region): named, with the fix.
    code, out = await doctor_async(
        *flags, RTC_RUN_DIR=empty_run_dir, TWILIO_API_SECRET="twilio-wrong-secret-000"
    )
    assert code == 1, out
    assert "twilio-wrong-secret-000" not in out
    line, fix = check(out, "FAIL", "twilio")
    assert "HTTP 401 (Twilio error 20003)" in line and "credentials, region or edge" in line
    assert "TWILIO_REGION" in fix and "TWILIO_API_SECRET" in fix
    assert twilio.requests[-1].status == 401
