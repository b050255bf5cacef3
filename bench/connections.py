"""Scenario 3: idle websocket clients on one signal instance, and presence fan-out.

RSS per connection = (server RSS with N sockets open - RSS before) / N; connect rate = N over the
time the clients took (at most PARALLEL handshakes in flight, each a real JWT handshake and a
presence registration). Fan-out: a wallet with `fanout_contacts` online mutual contacts comes
online; time from its connect until every contact got its presence:update.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from rtc_testkit.contract import make_token
from rtc_testkit.processes import HttpServer, Process

from bench.harness import (
    LOAD_CPUS,
    NODE_DIR,
    NodeServer,
    baseline_env,
    pinned,
    python_server,
    rss_bytes,
    run_node_load,
    server_pid,
    start_redis,
    summary,
)
from bench.modes import Mode, progress
from bench.signaling import signal_service_env

PARALLEL = 64


def idle_sockets(
    server: HttpServer, pid: int, protocol: str, n: int, workdir: Path
) -> dict[str, Any]:
    """Open n idle websocket clients on one server: its RSS growth per socket, connect rate."""
    users = [{"wallet": f"idle{i}", "token": make_token(f"idle{i}")} for i in range(n)]
    spec_path = workdir / f"connections-{pid}.json"
    url = server.url
    spec_path.write_text(json.dumps({"urlA": url, "users": users, "parallel": PARALLEL}))
    time.sleep(0.5)  # let the fresh server settle before the memory baseline is read
    before = rss_bytes(pid)
    env = {**os.environ, "MODE": "connections", "PROTOCOL": protocol, "SPEC": str(spec_path)}
    argv = ["node", "--max-old-space-size=8192", str(NODE_DIR / "signal_load.mjs")]
    client = subprocess.Popen(
        pinned(LOAD_CPUS, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert client.stdout is not None and client.stdin is not None
    opened = json.loads(client.stdout.readline())
    after = rss_bytes(pid)
    client.stdin.write("close\n")
    client.stdin.flush()
    client.wait(timeout=300)
    return {
        "connected": opened["connected"],
        "failed": opened["failed"],
        "connect_per_second": opened["per_second"],
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
        "rss_per_connection_kib": (after - before) / max(1, opened["connected"]) / 1024,
    }


def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    redis = start_redis(workdir / "redis")
    started: list[Process] = [redis]
    try:
        n = mode.connections
        env = signal_service_env(redis.url)

        def start(name: str) -> HttpServer:
            if name == "node_socketio":
                node = NodeServer(workdir / name, redis.url)
                node.start()
                return node
            if name == "bare_python_socketio":
                return python_server("bench.bare_sio", workdir / name, {"REDIS_URL": redis.url})
            if name == "bare_python_socketio_deflate":
                bare_env = {"REDIS_URL": redis.url, "BARE_WS_COMPRESSION": "1"}
                return python_server("bench.bare_sio", workdir / name, bare_env)
            return python_server("signal_service", workdir / name, env)

        results: dict[str, Any] = {"target": n}
        protocols = {
            "signal_service": "rtc",
            "bare_python_socketio": "bare",
            "bare_python_socketio_deflate": "bare",
            "node_socketio": "bare",
        }
        for name, protocol in protocols.items():
            # One server at a time, stopped before the next: a server still working through
            # thousands of disconnects would take the next one's CPU.
            server = start(name)
            started.append(server)
            progress(f"connections: {n} idle sockets on {name}")
            result = idle_sockets(server, server_pid(server), protocol, n, workdir)
            server.stop()
            results[name] = result
            progress(
                f"connections: {name}: {result['connected']} open ({result['failed']} failed) at "
                f"{result['connect_per_second']:.0f}/s, "
                f"{result['rss_per_connection_kib']:.1f} KiB each"
            )
        variants = {"fanout": env}
        baseline = baseline_env()
        if baseline is not None:
            variants["fanout_before"] = {**env, **baseline}
        for key, variant_env in variants.items():
            # Contacts on one instance, the wallet coming online on another: the update crosses
            # instances (and a third instance, holding neither, is subscribed too).
            trio = [
                python_server("signal_service", workdir / f"{key}{i}", variant_env)
                for i in range(3)
            ]
            started += trio
            try:
                results[key] = fan_out(mode, redis, trio[0].url, trio[1].url, workdir, key)
            except (subprocess.SubprocessError, RuntimeError, OSError, ValueError) as exc:
                results[key] = {"contacts": mode.fanout_contacts, "error": str(exc)[:500]}
            for server in trio:
                server.stop()
        return results
    finally:
        for process in reversed(started):
            process.stop()


def fan_out(
    mode: Mode, redis: Any, contacts_url: str, subject_url: str, workdir: Path, tag: str
) -> dict[str, Any]:
    runs = []
    client = redis.client()
    for repeat in range(mode.repeats):
        subject = f"{tag}star{repeat}"
        contacts = [f"{tag}{repeat}x{i}" for i in range(mode.fanout_contacts)]
        pipe = client.pipeline()
        pipe.sadd(f"rtc:contacts:{subject}", *contacts)
        for contact in contacts:
            pipe.sadd(f"rtc:contacts:{contact}", subject)
        pipe.execute()
        spec = {
            "urlA": contacts_url,
            "urlB": subject_url,
            "users": [{"wallet": c, "token": make_token(c)} for c in contacts],
            "subject": {"wallet": subject, "token": make_token(subject)},
        }
        result = run_node_load("fanout", "rtc", spec, workdir, timeout=120)
        runs.append(result)
        progress(
            f"presence fan-out ({tag}) {repeat + 1}/{mode.repeats}: {result['notified']}/"
            f"{result['contacts']} notified in {result['fanout_ms']:.1f} ms"
        )
    return {
        "contacts": mode.fanout_contacts,
        "fanout_ms": summary([r["fanout_ms"] for r in runs]),
        "all_notified": all(r["notified"] == r["contacts"] for r in runs),
        "runs": runs,
    }
