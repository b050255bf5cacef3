"""Scenario 4: relay enqueue (AOF everysec and always) and pull+ack, against their ceilings.

Baselines in the same run: a bare aiohttp handler doing one XADD behind the same gateway
(bench/baselines.py) and redis-benchmark running XADD itself (Redis's ceiling on this machine).

Peer in the same run (bench/synapse.py; BENCH_PEERS=0 leaves it out): Matrix Synapse's
`PUT /_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}`, store-and-forward with a
client-chosen idempotency key as our messageId (a unique txnId per request, the same 200-byte
payload), behind the same gateway, pinned to the same CPU, in the same round robin. One Synapse
serves both rounds: its durability does not depend on Redis's fsync setting.
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

from bench import synapse
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
SYNAPSE_SCRIPT = Path(__file__).with_name("synapse_send.lua")
ENQUEUE = "/api/v1/relay/enqueue"
SYNAPSE_ROUTE = "/bench/synapse"


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
    peer, peer_info = synapse.try_start_peer(workdir / "synapse", "relay")
    if peer is not None:
        peer_info["endpoint"] = "PUT /_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}"
    try:
        results = rounds(mode, workdir, peer)
    finally:
        if peer is not None:
            peer.stop()
    for r in results.values():
        r["peer"] = peer_info
        if peer is not None:
            ratios = synapse.peer_ratios(r["saturation"], r["fixed_1000"], "relay", "synapse_send")
            r["peer_ratios"] = {"relay/synapse_send": ratios}
    return results


def fresh_room(peer: synapse.SynapsePeer | None) -> str:
    """The gateway path of a new room's send endpoint, up to the txnId: a fresh room per run,
    as Redis is flushed after each of our runs, so that every run starts alike (concurrent sends
    fork a room's DAG, and its forward extremities pile up and slow the next sends)."""
    assert peer is not None
    peer.new_room()
    return SYNAPSE_ROUTE + synapse.room_path(peer)


def rounds(mode: Mode, workdir: Path, peer: synapse.SynapsePeer | None) -> dict[str, Any]:
    """The AOF everysec and always rounds, the peer (if any) in each one's round robin."""
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
            routes = {"/bench/bare": bare.port}
            if peer is not None:
                routes[SYNAPSE_ROUTE] = peer.port
            gateway = BenchGateway(
                workdir / f"gateway-{fsync}",
                ice=[bare.port],
                relay=[relay.port],
                extra_routes=routes,
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
            # What each target is sent: headers, wrk script, loadgen body kind and method.
            shapes = {name: (headers, SCRIPT, "relay", "POST") for name in targets}
            if peer is not None:
                targets["synapse_send"] = gateway.url + SYNAPSE_ROUTE  # + a room's send path
                peer_headers = {
                    "Authorization": f"Bearer {peer.token}",
                    "Content-Type": "application/json",
                }
                shapes["synapse_send"] = (peer_headers, SYNAPSE_SCRIPT, "matrix", "PUT")
            saturation: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            fixed: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            ceiling: list[float] = []
            for repeat in range(mode.repeats):
                for name, url in targets.items():
                    hdrs, script, _, _ = shapes[name]
                    args = [uuid.uuid4().hex[:8]]
                    with synapse.measuring(peer, name):
                        if name == "synapse_send":
                            args.append(fresh_room(peer))  # the script's paths: + the txnId
                        result = run_wrk(
                            url,
                            mode.saturation_seconds,
                            headers=hdrs,
                            script=script,
                            script_args=args,
                        )
                    saturation[name].append(result)
                    seed(redis)
                    progress(
                        f"relay {fsync} saturation {repeat + 1}/{mode.repeats} {name}: "
                        f"{result['rps']:.0f} msg/s ({result['non_2xx']} non-2xx)"
                    )
                for name, url in targets.items():
                    hdrs, _, body, method = shapes[name]
                    with synapse.measuring(peer, name):
                        # The peer's txnId, unique per request, is the path's last part.
                        if name == "synapse_send":
                            target = gateway.url + fresh_room(peer) + "{txn}"
                        else:
                            target = url
                        result = run_loadgen(
                            {
                                "url": target,
                                "headers": hdrs,
                                "rate": 1000,
                                "duration": mode.fixed_seconds,
                                "method": method,
                                "body": body,
                                "ok_only": True,
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
