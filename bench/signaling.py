"""Scenario 2: offer delivery between two users on different signal instances.

The servers, each as two instances sharing one Redis, driven by the same socket.io-client load
(bench/node/signal_load.mjs) with the same ~1.5 KB SDP: signal-service (auth, validation, contacts,
dedup, rate limit), bare python-socketio + AsyncRedisManager (bench/bare_sio.py) and Node
socket.io + @socket.io/redis-adapter (bench/node/server.mjs), classic and sharded (dynamic
subscriptions). Clients connect to the instances
directly, user A to the first and user B to the second, so every signal crosses Redis pub/sub.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtc_testkit.contract import make_token
from rtc_testkit.processes import HttpServer, Process
from rtc_testkit.stack import add_contacts, base_env

from bench.harness import (
    NodeServer,
    baseline_env,
    python_server,
    run_node_load,
    start_redis,
    summary,
)
from bench.modes import Mode, progress

PAIRS = 4
# The 1,000/s, and 200/s: below every server's saturation on one core of this machine,
# where latencies compare servers rather than queues.
RATES = (200, 1000)
WINDOW = 16


def users(redis: Any, prefix: str, n: int) -> list[dict[str, Any]]:
    pairs = []
    for i in range(n):
        a, b = f"{prefix}a{i}", f"{prefix}b{i}"
        add_contacts(redis, a, b)
        pairs.append(
            {
                "a": {"wallet": a, "token": make_token(a)},
                "b": {"wallet": b, "token": make_token(b)},
            }
        )
    return pairs


def signal_service_env(redis_url: str, **extra: str) -> dict[str, str]:
    return base_env(redis_url, SIGNAL_RATE_PER_SEC="100000", **extra)


def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    redis = start_redis(workdir / "redis")
    started: list[Process] = [redis]
    try:
        servers: dict[str, tuple[str, str, Sequence[HttpServer]]] = {}
        env = signal_service_env(redis.url)
        rtc = [python_server("signal_service", workdir / f"signal{i}", env) for i in range(2)]
        started += rtc
        servers["signal_service"] = ("rtc", "", rtc)
        baseline = baseline_env()
        if baseline is not None:
            before = [
                python_server("signal_service", workdir / f"before{i}", {**env, **baseline})
                for i in range(2)
            ]
            started += before
            servers["signal_service_before"] = ("rtc", "", before)
        bare = [
            python_server("bench.bare_sio", workdir / f"bare{i}", {"REDIS_URL": redis.url})
            for i in range(2)
        ]
        started += bare
        servers["bare_python_socketio"] = ("bare", "", bare)
        node = [NodeServer(workdir / f"node{i}", redis.url) for i in range(2)]
        for server in node:
            server.start()
        started += node
        servers["node_socketio"] = ("bare", "", node)
        sharded = [
            NodeServer(workdir / f"node-sharded{i}", redis.url, sharded=True) for i in range(2)
        ]
        for server in sharded:
            server.start()
        started += sharded
        servers["node_socketio_sharded"] = ("bare", "", sharded)

        latency: dict[int, dict[str, list[dict[str, Any]]]] = {
            rate: {name: [] for name in servers} for rate in RATES
        }
        saturation: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for repeat in range(mode.repeats):
            for name, (protocol, _, instances) in servers.items():
                urls = {"urlA": instances[0].url, "urlB": instances[1].url}
                prefix = f"r{repeat}{name[:4]}"
                for rate in RATES:
                    spec = {
                        **urls,
                        "pairs": users(redis, f"{prefix}l{rate}", 1),
                        "rate": rate,
                        "duration": mode.fixed_seconds,
                    }
                    result = run_node_load("latency", protocol, spec, workdir)
                    latency[rate][name].append(result)
                    progress(
                        f"signaling {rate}/s {repeat + 1}/{mode.repeats} {name}: p50 "
                        f"{result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms "
                        f"undelivered {result['undelivered']}"
                    )
                spec = {
                    **urls,
                    "pairs": users(redis, prefix + "s", PAIRS),
                    "window": WINDOW,
                    "duration": mode.saturation_seconds,
                }
                result = run_node_load("saturate", protocol, spec, workdir)
                saturation[name].append(result)
                progress(
                    f"signaling saturation {repeat + 1}/{mode.repeats} {name}: "
                    f"{result['per_second']:.0f} signals/s"
                )
        return {
            "pairs": PAIRS,
            "window": WINDOW,
            **{
                f"latency_{rate}": {
                    name: {
                        "p50_ms": summary([r["p50_ms"] for r in runs]),
                        "p99_ms": summary([r["p99_ms"] for r in runs]),
                        "undelivered": sum(r["undelivered"] for r in runs),
                        "errors": sum(r["errors"] for r in runs),
                        "generator_cpu_percent": summary(
                            [r["generator_cpu_percent"] for r in runs]
                        ),
                        "runs": runs,
                    }
                    for name, runs in by_name.items()
                }
                for rate, by_name in latency.items()
            },
            "saturation": {
                name: {
                    "per_second": summary([r["per_second"] for r in runs]),
                    "errors": sum(r["errors"] for r in runs),
                    "generator_cpu_percent": summary([r["generator_cpu_percent"] for r in runs]),
                    "runs": runs,
                }
                for name, runs in saturation.items()
            },
        }
    finally:
        for process in reversed(started):
            process.stop()
