"""End to end in a real browser: the demo page (clients/web) with the web SDK, in Chromium.

The test creates a network namespace with a veth pair (Chromium gathers no ICE candidate when
only `lo` exists), runs the whole stack in it (redis-server, coturn, ice-service with the coturn
provider, signal-service, relay-service and the nginx gateway serving the page at /demo/), and
drives two browser contexts as two users with playwright-core (tests/node/browser_e2e.mjs, run
with `ip netns exec`). Nothing listens or connects outside the namespace, which is deleted at the
end with every process in it.

1. TURN forced on both pages (iceTransportPolicy 'relay'): the message crosses the data channel
   (transport RTC on both pages) and both pages show a relay/relay candidate pair.
2. Alice's peer path blocked (the page's toggle): her message and Bob's reply arrive through the
   relay (transport Relay, forced) after the two ACK windows.
3. The outbox: Bob offline, Alice's relay calls refused by her page's network (playwright's
   route): her three messages show as queued with their retries; the page is reloaded and shows
   them again from IndexedDB; once the relay answers they go out, and Bob, back, receives each
   once, in order.
4. Bob signs in with the site's session (an HttpOnly JWT cookie and the CSRF cookie): ICE, the
   socket and the relay authenticate with them; his message reaches Alice.
5. A Python SDK user (aiortc, a thread of this test inside the namespace) and Alice: her message
   over RTC (TURN) and its reply over RTC, then with her peer path blocked both over the relay.

Screenshots of both pages after each step go to tests/artifacts/browser-e2e/ (git-ignored).
Skipped, with the reason, without Chromium, root (network namespaces), node or playwright-core.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NODE_DIR
from rtc_client import RtcClient
from rtc_testkit.contract import JWT_SECRET, TURN_SECRET, make_token, new_wallet
from rtc_testkit.processes import (
    REPO_ROOT,
    Process,
    ServiceProcess,
    free_port,
    http_status,
    metric_value,
    wait_for,
)
from rtc_testkit.stack import StackSpec, start_stack

CHROMIUM = Path(os.environ.get("RTC_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO_ROOT / "tests" / "artifacts" / "browser-e2e"
DRIVER = NODE_DIR / "browser_e2e.mjs"
DRIVER_TIMEOUT = 90.0
CLONE_NEWNET = 0x40000000


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    if os.geteuid() != 0:
        return "needs root to create a network namespace (ip netns)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (npm ci in tests/node)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def network_namespace() -> Iterator[str]:
    """A fresh namespace with `lo` and a veth pair (10.213.0.1/24 <-> 10.213.0.2/24), both ends
    inside. The calling thread enters it (so the helpers' probes, free ports and Redis client
    are the namespace's); on exit it returns, every process left in the namespace is killed by
    its id, and the namespace is deleted."""
    name = f"rtcweb-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot create a network namespace: {stderr.decode(errors='replace').strip()}")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        for args in (
            ("link", "set", "lo", "up"),
            ("link", "add", "v0", "type", "veth", "peer", "name", "v1"),
            ("addr", "add", "10.213.0.1/24", "dev", "v0"),
            ("addr", "add", "10.213.0.2/24", "dev", "v1"),
            ("link", "set", "v0", "up"),
            ("link", "set", "v1", "up"),
            ("route", "add", "default", "via", "10.213.0.2", "dev", "v0"),
        ):
            _ip("netns", "exec", name, "ip", *args)
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield name
        finally:
            _setns(own)
    finally:
        os.close(own)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def in_namespace(process: Process, namespace: str) -> None:
    """Start the process through `ip netns exec` (it execs, so the pid stays the process's)."""
    process.argv = ["ip", "netns", "exec", namespace, *process.argv]


def run_driver(namespace: str, env: dict[str, str]) -> dict[str, Any]:
    """The Node driver in the namespace, in its own process group (Chromium included), killed
    as a group when it outlives its deadline."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", namespace, "node", str(DRIVER)],
        cwd=NODE_DIR,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=DRIVER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"the browser driver took over {DRIVER_TIMEOUT} s:\n{stderr[-3000:]}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the driver (exit {proc.returncode}):\n{stdout}\n{stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    if proc.returncode != 0 or "error" in result:
        raise AssertionError(
            f"browser driver failed: {result.get('error')}\nconsole: {result.get('console')}\n"
            f"{stderr[-2000:]}"
        )
    return result


def transport_count(ice: ServiceProcess, transport: str, candidate: str, forced: str) -> float:
    labels = f'candidate_type="{candidate}",forced="{forced}",transport="{transport}"'
    return metric_value(ice.url, "rtc_transport_messages_total", labels)


def row(rows: list[dict[str, str]], direction: str, text: str) -> dict[str, str]:
    found = [r for r in rows if r["direction"] == direction and r["text"] == text]
    assert len(found) == 1, f"one {direction} row {text!r} expected: {rows}"
    return found[0]


class PythonUser(threading.Thread):
    """A Python SDK user (aiortc, relay-only ICE) answering every message with "re: <text>".

    A thread of the test, made after the test entered the namespace, so it runs in it too (a new
    thread inherits its creator's network namespace)."""

    def __init__(self, url: str, wallet: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.wallet, self.token = url, wallet, token
        self.received: list[tuple[str, str]] = []  # (payload, transport)
        self.replied: list[tuple[str, str]] = []
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        client = RtcClient(
            self.url, self.token, self.wallet, ice_transport_policy="relay", telemetry=False
        )
        async with client:
            self.ready.set()
            while not self._stopping.is_set():
                try:
                    message = await asyncio.wait_for(client.incoming.get(), 0.2)
                except TimeoutError:
                    continue
                self.received.append((message.payload, message.transport))
                reply = await client.send(message.sender, f"re: {message.payload}")
                self.replied.append((f"re: {message.payload}", reply.transport))

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(30)


def test_browser_rtc_over_turn_then_relay_fallback(tmp_path: Path) -> None:
    started = time.monotonic()
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    with network_namespace() as ns:
        root = tmp_path / "stack"
        # Cookie sign-in from the page: the socket's Origin must be allowed, so the gateway's
        # port is chosen first.
        port = free_port()
        spec = StackSpec(
            ice=1,
            signal=1,
            relay=1,
            coturn=True,
            gateway_port=port,
            env={"ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"},
        )
        with start_stack(spec, root, prepare=lambda p: in_namespace(p, ns)) as stack:
            ice, gateway = stack.ice, stack.gateway
            assert http_status(gateway.url + "/demo/") == 200
            assert http_status(gateway.url + "/demo/vendor/socket.io.esm.min.js") == 200
            stack_seconds = time.monotonic() - started

            a, b, p = new_wallet(), new_wallet(), new_wallet()
            stack.add_contacts(a, b)
            stack.add_contacts(a, p)
            token_a, token_b = make_token(a), make_token(b)
            python_user = PythonUser(gateway.url, p, make_token(p))
            python_user.start()
            try:
                assert python_user.ready.wait(30) and python_user.error is None, python_user.error
                result = run_driver(
                    ns,
                    {
                        "DEMO_URL": gateway.url + "/demo/",
                        "TOKEN_A": token_a,
                        "TOKEN_B": token_b,
                        "WALLET_A": a,
                        "WALLET_B": b,
                        "WALLET_P": p,
                        "ARTIFACTS": str(ARTIFACTS),
                        "CHROMIUM": str(CHROMIUM),
                    },
                )
            finally:
                python_user.stop()
            assert python_user.error is None, python_user.error

            # 1. RTC through coturn: both pages show the transport and a relay/relay pair.
            rtc = result["pages"]["rtc"]
            for name, direction in (("alice", "out"), ("bob", "in")):
                page = rtc[name]
                shown = row(page["rows"], direction, "hello over rtc")
                assert shown["transport"] == "rtc" and shown["badge"] == "RTC", (name, shown)
                assert (page["pairLocal"], page["pairRemote"]) == ("relay", "relay"), page
                assert page["pairText"] == "relay ↔ relay", page
                assert page["iceProvider"].startswith("coturn"), page
                assert page["iceExpiresAt"].endswith("Z") and "(in " in page["iceExpiry"], page
                assert page["connection"] == "online", page
            for name, direction in (("alice", "out"), ("bob", "in")):
                shown = row(rtc[name]["rows"], direction, "hello over rtc")
                assert shown["detail"] == "pair relay ↔ relay", (name, shown)
            # (Alice's contacts include the Python user, online from the start.)
            for name, others in (("alice", sorted([b, p])), ("bob", [a])):
                contacts = rtc[name]["contacts"]
                shown_contacts = [(c["wallet"], c["online"]) for c in contacts]
                assert shown_contacts == [(o, "true") for o in others], contacts

            # 2. The peer path blocked on Alice's side: both messages went through the relay.
            relay_pages = result["pages"]["relay"]
            for name, direction, text in (
                ("alice", "out", "hello over relay"),
                ("bob", "in", "hello over relay"),
                ("bob", "out", "reply over relay"),
                ("alice", "in", "reply over relay"),
            ):
                shown = row(relay_pages[name]["rows"], direction, text)
                assert shown["transport"] == "relay" and shown["badge"] == "Relay", (name, shown)
                assert shown["forced"] == "true" and shown["detail"] == "forced (RTC failed)", shown
            # Each message appears once per page (dedup across transports).
            for name in ("alice", "bob"):
                assert len(relay_pages[name]["rows"]) == 3, relay_pages[name]["rows"]
            # 2 ACK windows of 3 s, then the relay.
            assert 5.5 < result["timings"]["relaySend"] < 12, result["timings"]

            # 3. The outbox: queued while the relay could not be reached (retries shown), shown
            #    again after a reload, then sent in order and received once each.
            texts = ["outbox one", "outbox two", "outbox three"]
            queued_page = result["pages"]["outboxQueued"]
            assert queued_page["outbox"] == "3 queued", queued_page
            for text in texts:
                shown = row(queued_page["rows"], "out", text)
                assert (shown["state"], shown["badge"]) == ("queued", "queued"), shown
            assert any(row(queued_page["rows"], "out", t)["attempts"] != "0" for t in texts)
            reloaded = result["pages"]["outboxReloaded"]
            assert [r["text"] for r in reloaded["rows"] if r["state"] == "queued"] == texts
            delivered = result["pages"]["outboxDelivered"]
            assert delivered["alice"]["outbox"] == "empty", delivered["alice"]
            for text in texts:
                assert row(delivered["alice"]["rows"], "out", text)["transport"] == "relay"
            incoming = [r["text"] for r in delivered["bob"]["rows"] if r["direction"] == "in"]
            assert incoming == texts, incoming  # once each, in send order

            # 4. Cookie + CSRF sign-in: no token in the page, ICE and the socket authenticated.
            cookie = result["pages"]["cookie"]
            assert cookie["bob"]["token"] == "" and cookie["bob"]["connection"] == "online"
            assert cookie["bob"]["iceProvider"].startswith("coturn"), cookie["bob"]
            sent = row(cookie["bob"]["rows"], "out", "hello with the session cookie")
            assert sent["transport"] in ("rtc", "relay"), sent
            row(cookie["alice"]["rows"], "in", "hello with the session cookie")

            # 5. The browser and the Python SDK: both directions, RTC then relay, same frames.
            assert python_user.received == [
                ("to python over rtc", "rtc"),
                ("to python over relay", "relay"),
            ]
            assert python_user.replied == [
                ("re: to python over rtc", "rtc"),
                ("re: to python over relay", "relay"),
            ]
            shown = result["pages"]["python"]["alice"]["rows"]
            assert row(shown, "in", "re: to python over rtc")["transport"] == "rtc"
            assert row(shown, "in", "re: to python over relay")["forced"] == "true"

            # Telemetry reached ice-service with the selected candidate type.
            wait_for(
                lambda: (
                    transport_count(ice, "rtc", "relay", "false") >= 1
                    and transport_count(ice, "relay", "unknown", "true") >= 2
                ),
                10,
                what="telemetry counters",
            )

            # No token or secret on the pages' consoles.
            console = json.dumps(result["console"])
            for secret in (token_a, token_b, JWT_SECRET, TURN_SECRET):
                assert secret not in console
            assert "credential" not in console.lower()
            assert not [c for c in result["console"] if c["type"] == "pageerror"], console

            for shot in ("alice-rtc", "bob-rtc", "alice-relay", "bob-relay", "alice-outbox-queued"):
                assert (ARTIFACTS / f"{shot}.png").stat().st_size > 10_000, shot
            print(
                f"stack {stack_seconds:.1f} s, browser {result['timings']}, "
                f"total {time.monotonic() - started:.1f} s"
            )


ICE_TTL = 12  # seconds: the refresh falls due at 70 %, 8.4 s after each fetch


def test_browser_ice_refresh_restarts_ice_in_place(tmp_path: Path) -> None:
    """Two pages on a short ICE ttl: at 70 % both fetch again and move their open connection to
    the fresh TURN credentials with setConfiguration + an ICE-restart offer on the same
    RTCPeerConnection; the data channel stays open and carries the next messages."""
    with network_namespace() as ns:
        spec = StackSpec(
            ice=1, signal=1, relay=1, coturn=True, ice_env={"TURN_CRED_TTL": str(ICE_TTL)}
        )
        with start_stack(spec, tmp_path / "stack", prepare=lambda p: in_namespace(p, ns)) as stack:
            a, b = new_wallet(), new_wallet()
            stack.add_contacts(a, b)
            result = run_driver(
                ns,
                {
                    "SCENARIO": "ice-refresh",
                    "ICE_TTL": str(ICE_TTL),
                    "DEMO_URL": stack.gateway.url + "/demo/",
                    "TOKEN_A": make_token(a),
                    "TOKEN_B": make_token(b),
                    "WALLET_A": a,
                    "WALLET_B": b,
                    "ARTIFACTS": str(ARTIFACTS),
                    "CHROMIUM": str(CHROMIUM),
                },
            )
    page = result["pages"]["iceRefresh"]
    for name in ("alice", "bob"):
        before, after = page["before"][name], page["after"][name]
        assert (before["fetches"], before["generation"]) == (1, 1), before
        assert after["fetches"] == after["generation"] >= 2, after
        # The same connection and channel, open throughout; only ICE changed.
        assert after["sessionsMade"] == before["sessionsMade"] == 1, (before, after)
        assert after["sameChannel"] and after["open"], after
        assert after["ufrag"] != before["ufrag"], (before, after)
        assert after["turnUsername"] != before["turnUsername"], "still the first credentials"
        assert any("ICE restarted" in line for line in page[name]["log"]), page[name]["log"]
        assert page[name]["pairLocal"] == "relay", page[name]
    for name, direction, text in (
        ("alice", "out", "after the refresh"),
        ("bob", "in", "after the refresh"),
        ("bob", "out", "reply after the refresh"),
        ("alice", "in", "reply after the refresh"),
    ):
        assert row(page[name]["rows"], direction, text)["transport"] == "rtc", (name, text)
    print(f"ICE refresh: {result['timings']}")
