"""Scenario 1: ICE issuance through the gateway against the bare aiohttp and nginx ceilings."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from rtc_testkit.contract import make_token
from rtc_testkit.processes import Process
from rtc_testkit.stack import base_env

from bench.harness import (
    BenchGateway,
    fixed_rate_summary,
    gateway_pid,
    python_server,
    run_loadgen,
    run_wrk,
    saturation_summary,
    server_pid,
    start_redis,
)
from bench.modes import Mode, progress

ICE_PATH = "/api/v1/rtc/ice"


def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    redis = start_redis(workdir / "redis")
    started: list[Process] = [redis]
    try:
        env = base_env(redis.url, ICE_RATE_LIMIT_PER_MIN="1000000000")
        ice = python_server("ice_service", workdir / "ice", env)
        started.append(ice)
        ice_stdlib = python_server(
            "ice_service", workdir / "ice-asyncio", {**env, "EVENT_LOOP": "asyncio"}
        )
        started.append(ice_stdlib)
        token = make_token("0xbench")
        headers = {"Authorization": f"Bearer {token}"}
        request = urllib.request.Request(ice.url + ICE_PATH, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:  # a real answer's size
            sample = json.loads(response.read())
        body = json.dumps(sample, separators=(",", ":"))
        bare = python_server(
            "bench.baselines", workdir / "bare", {"REDIS_URL": redis.url, "BENCH_ICE_BODY": body}
        )
        started.append(bare)
        gateway = BenchGateway(
            workdir / "gateway",
            ice=[ice.port],
            extra_routes={"/bench/bare": bare.port, "/bench/stdlib": ice_stdlib.port},
            static_body=body,
        )
        gateway.start()
        started.append(gateway)
        g = gateway.url
        targets = {
            "nginx_static": (g + "/bench/static/ice", {}),
            "bare_aiohttp": (g + "/bench/bare/bench/bare/ice", {}),
            "ice_asyncio": (g + "/bench/stdlib" + ICE_PATH, headers),
            "ice": (g + ICE_PATH, headers),
        }
        nginx, redis_pid = {"nginx": gateway_pid(gateway)}, {"redis": server_pid(redis)}
        watch = {
            "nginx_static": nginx,
            "bare_aiohttp": {**nginx, "bare": server_pid(bare)},
            "ice_asyncio": {**nginx, **redis_pid, "ice": server_pid(ice_stdlib)},
            "ice": {**nginx, **redis_pid, "ice": server_pid(ice)},
        }
        saturation: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        fixed: dict[str, list[dict[str, Any]]] = {
            name: [] for name in targets if name != "nginx_static"
        }
        for repeat in range(mode.repeats):
            # Round robin, so a slow spell of the shared machine hits every subject alike.
            for name, (url, hdrs) in targets.items():
                result = run_wrk(url, mode.saturation_seconds, headers=hdrs, watch=watch[name])
                saturation[name].append(result)
                progress(
                    f"ice saturation {repeat + 1}/{mode.repeats} {name}: {result['rps']:.0f} req/s"
                )
            for name in fixed:
                url, hdrs = targets[name]
                result = run_loadgen(
                    {"url": url, "headers": hdrs, "rate": 1000, "duration": mode.fixed_seconds}
                )
                fixed[name].append(result)
                progress(
                    f"ice 1000 req/s {repeat + 1}/{mode.repeats} {name}: "
                    f"p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms"
                )
        return {
            "response_bytes": len(body),
            "saturation": {name: saturation_summary(runs) for name, runs in saturation.items()},
            "fixed_1000": {name: fixed_rate_summary(runs) for name, runs in fixed.items()},
        }
    finally:
        for process in reversed(started):
            process.stop()
