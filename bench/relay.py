"""Scenario 4: relay enqueue (AOF everysec and always) and pull+ack, against their ceilings.

Baselines in the same run: a bare aiohttp handler doing one XADD behind the same gateway
(bench/baselines.py) and redis-benchmark running XADD itself (Redis's ceiling on this machine).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from rtc_testkit.contract import make_token
from rtc_testkit.processes import Process, RedisServer
from rtc_testkit.stack import base_env

from bench.harness import (
    LOAD_CPUS,
    BenchGateway,
    fixed_rate_summary,
    pinned,
    python_server,
    run_loadgen,
    run_wrk,
    saturation_summary,
    start_redis,
    summary,
)
from bench.modes import Mode, progress

SENDER = "bench-sender"
RECIPIENTS = [f"bench-r{i}" for i in range(2000)]
SCRIPT = Path(__file__).with_name("relay_enqueue.lua")
ENQUEUE = "/api/v1/relay/enqueue"


def seed(redis: RedisServer) -> None:
    client = redis.client()
    client.flushall()
    pipe = client.pipeline()
    pipe.sadd(f"rtc:contacts:{SENDER}", *RECIPIENTS)
    for wallet in RECIPIENTS:
        pipe.sadd(f"rtc:contacts:{wallet}", SENDER)
    pipe.execute()


def redis_benchmark(redis: RedisServer, seconds: float) -> float:
    requests = int(seconds * 20000)
    argv = [
        "redis-benchmark",
        "-p",
        str(redis.port),
        "-c",
        "64",
        "-n",
        str(requests),
        "-r",
        "2000",
        "--csv",
        "XADD",
        "bare:__rand_int__",
        "*",
        "m",
        "x" * 300,
    ]
    out = subprocess.run(pinned(LOAD_CPUS, argv), capture_output=True, text=True, check=True).stdout
    match = re.search(r'^"XADD[^"]*","([\d.]+)"', out, re.M)
    if not match:
        raise RuntimeError(f"redis-benchmark output not understood: {out[:300]}")
    return float(match.group(1))


async def pull_ack(url: str, token: str, messages: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        run = uuid.uuid4().hex[:8]
        send_headers = {"Authorization": f"Bearer {make_token(SENDER)}"}
        sem = asyncio.Semaphore(32)

        async def enqueue(i: int) -> None:
            body = {
                "to": "bench-r0",
                "convId": f"bench-r0:{SENDER}",
                "messageId": f"{run}-{i}",
                "payload": "x" * 200,
            }
            async with sem, session.post(url + ENQUEUE, json=body, headers=send_headers) as r:
                assert r.status == 202, await r.text()

        await asyncio.gather(*(enqueue(i) for i in range(messages)))
        done = 0
        started = time.perf_counter()
        while True:
            async with session.get(url + "/api/v1/relay/pull?limit=100") as r:
                batch = (await r.json())["messages"]
            if not batch:
                break
            async with session.post(
                url + "/api/v1/relay/ack", json={"ids": [m["id"] for m in batch]}
            ) as r:
                done += (await r.json())["acked"]
        elapsed = time.perf_counter() - started
    return {"messages": done, "per_second": done / elapsed}


def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for fsync in ("everysec", "always"):
        redis = start_redis(workdir / f"redis-{fsync}", appendfsync=fsync)
        started: list[Process] = [redis]
        try:
            seed(redis)
            env = base_env(
                redis.url, RELAY_RATE_LIMIT_PER_MIN="1000000000", RELAY_MAX_QUEUE="1000000"
            )
            relay = python_server("relay_service", workdir / f"relay-{fsync}", env)
            bare = python_server(
                "bench.baselines", workdir / f"bare-{fsync}", {"REDIS_URL": redis.url}
            )
            started += [relay, bare]
            gateway = BenchGateway(
                workdir / f"gateway-{fsync}",
                ice=[bare.port],
                relay=[relay.port],
                extra_routes={"/bench/bare": bare.port},
            )
            gateway.start()
            started.append(gateway)
            headers = {
                "Authorization": f"Bearer {make_token(SENDER)}",
                "Content-Type": "application/json",
            }
            targets = {
                "relay": gateway.url + ENQUEUE,
                "bare_aiohttp": gateway.url + "/bench/bare/bench/bare/relay",
            }
            saturation: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            fixed: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            ceiling: list[float] = []
            for repeat in range(mode.repeats):
                for name, url in targets.items():
                    result = run_wrk(
                        url,
                        mode.saturation_seconds,
                        headers=headers,
                        script=SCRIPT,
                        script_args=[uuid.uuid4().hex[:8]],
                    )
                    saturation[name].append(result)
                    seed(redis)
                    progress(
                        f"relay {fsync} saturation {repeat + 1}/{mode.repeats} {name}: "
                        f"{result['rps']:.0f} msg/s ({result['non_2xx']} non-2xx)"
                    )
                for name, url in targets.items():
                    result = run_loadgen(
                        {
                            "url": url,
                            "headers": headers,
                            "rate": 1000,
                            "duration": mode.fixed_seconds,
                            "method": "POST",
                            "body": "relay",
                        }
                    )
                    fixed[name].append(result)
                    seed(redis)
                    progress(
                        f"relay {fsync} 1000 msg/s {repeat + 1}/{mode.repeats} {name}: p50 "
                        f"{result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms"
                    )
                ceiling.append(redis_benchmark(redis, mode.saturation_seconds))
                seed(redis)
                progress(f"relay {fsync} redis-benchmark XADD: {ceiling[-1]:.0f}/s")
            pulled = [
                asyncio.run(pull_ack(gateway.url, make_token("bench-r0"), mode.pull_messages))
                for _ in range(1 if fsync == "always" else mode.repeats)
            ]
            progress(f"relay {fsync} pull+ack: {pulled[-1]['per_second']:.0f} msg/s")
            results[fsync] = {
                "saturation": {name: saturation_summary(runs) for name, runs in saturation.items()},
                "fixed_1000": {name: fixed_rate_summary(runs) for name, runs in fixed.items()},
                "redis_benchmark_xadd": summary(ceiling),
                "pull_ack": {
                    "per_second": summary([p["per_second"] for p in pulled]),
                    "runs": pulled,
                },
            }
        finally:
            for process in reversed(started):
                process.stop()
    return results
