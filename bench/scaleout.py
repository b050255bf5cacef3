"""Scenario 5: what a cross-instance signal costs each signal-service instance, and the cluster.

N instances on one Redis (all pinned to the servers' core; CPU is read per process from /proc),
warmed by one second of the same load.
User A of each pair connects to instance 1 and B to instance 2; instances 3..N hold neither party
(bystanders). The same socket.io-client load as scenario 2 sends offers at a fixed rate. Each
instance's CPU over the run, minus its idle CPU over as long a quiet window measured just
before, divided by the signals delivered, gives its CPU per signal:

- bystander cost = a bystander's CPU per signal / the receiver's (goal <= 0.05);
- cluster CPU per delivered signal at 2, 4 and 6 instances (goal: flat within 15 %).

`BENCH_BASELINE_SRC=<a source checkout>` runs the same measurements on that checkout's
signal-service too (its `services/` first on PYTHONPATH), as the "before" in the same run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rtc_testkit.processes import Process, ServiceProcess

from bench.harness import (
    baseline_env,
    cpu_seconds,
    python_server,
    run_node_load,
    server_pid,
    start_redis,
)
from bench.modes import Mode, progress
from bench.signaling import signal_service_env, users

SIZES = (2, 4, 6)
BYSTANDER_SIZE = 3
RATE = 500
PAIRS = 1


def _variants() -> dict[str, dict[str, str]]:
    variants: dict[str, dict[str, str]] = {"current": {}}
    baseline = baseline_env()
    if baseline is not None:
        variants["baseline"] = baseline
    return variants


def _measure(
    mode: Mode, workdir: Path, redis: Any, env: dict[str, str], size: int, tag: str
) -> dict[str, Any]:
    instances: list[ServiceProcess] = []
    try:
        for i in range(size):
            name = f"{tag}-{size}-{i}"
            instances.append(
                python_server("signal_service", workdir / name, {**env, "INSTANCE_ID": name})
            )
        pids = [server_pid(p) for p in instances]
        redis_pid = server_pid(redis)
        # Warm: scripts loaded, contacts cached, the processes past their start-up work.
        spec = {
            "urlA": instances[0].url,
            "urlB": instances[1].url,
            "pairs": users(redis, f"{tag}{size}p", PAIRS),
            "rate": RATE,
            "duration": 1,
        }
        run_node_load("latency", "rtc", spec, workdir)
        quiet = max(2.0, mode.fixed_seconds / 2)
        idle0 = [cpu_seconds(pid) for pid in pids]
        redis_idle0 = cpu_seconds(redis_pid)
        time.sleep(quiet)  # the quiet window itself is what is measured, not a synchronisation
        idle = [(cpu_seconds(pid) - c) / quiet for pid, c in zip(pids, idle0, strict=True)]
        redis_idle = (cpu_seconds(redis_pid) - redis_idle0) / quiet
        spec["duration"] = mode.fixed_seconds
        before = [cpu_seconds(pid) for pid in pids]
        redis_before = cpu_seconds(redis_pid)
        started = time.monotonic()
        result = run_node_load("latency", "rtc", spec, workdir)
        wall = time.monotonic() - started
        delivered = max(1, int(result["received"]))
        busy = [
            (cpu_seconds(pid) - b - rate * wall) / delivered * 1e6
            for pid, b, rate in zip(pids, before, idle, strict=True)
        ]
        redis_us = (cpu_seconds(redis_pid) - redis_before - redis_idle * wall) / delivered * 1e6
        return {
            "instances": size,
            "delivered": delivered,
            "undelivered": int(result["undelivered"]),
            "p99_ms": result["p99_ms"],
            "sender_us": busy[0],
            "receiver_us": busy[1],
            "bystanders_us": busy[2:],
            "cluster_us": sum(busy),
            "redis_us": redis_us,
        }
    finally:
        for process in reversed(instances):
            process.stop()


def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    redis = start_redis(workdir / "redis")
    started: list[Process] = [redis]
    out: dict[str, Any] = {"rate": RATE, "pairs": PAIRS, "variants": {}}
    try:
        for tag, extra in _variants().items():
            env = signal_service_env(redis.url, **extra)
            runs: dict[int, list[dict[str, Any]]] = {}
            for repeat in range(mode.repeats):
                sizes = sorted({BYSTANDER_SIZE, *SIZES})
                # Rotated per repeat: no size is always the first measured after a teardown.
                for size in sizes[repeat % len(sizes) :] + sizes[: repeat % len(sizes)]:
                    measured = _measure(mode, workdir, redis, env, size, f"{tag}{repeat}")
                    runs.setdefault(size, []).append(measured)
                    bystander = (
                        sum(measured["bystanders_us"]) / len(measured["bystanders_us"])
                        if measured["bystanders_us"]
                        else 0.0
                    )
                    progress(
                        f"scaleout {tag} {size} instances {repeat + 1}/{mode.repeats}: sender "
                        f"{measured['sender_us']:.0f} µs receiver {measured['receiver_us']:.0f} "
                        f"µs bystander {bystander:.0f} µs cluster {measured['cluster_us']:.0f} "
                        f"µs redis {measured['redis_us']:.0f} µs p99 {measured['p99_ms']:.1f} ms"
                    )
            out["variants"][tag] = {str(size): result for size, result in runs.items()}
        return out
    finally:
        for process in reversed(started):
            process.stop()
