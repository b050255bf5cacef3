"""Scenario 1: ICE issuance through the gateway against the bare aiohttp and nginx ceilings.

Peer in the same run (bench/synapse.py; BENCH_PEERS=0 leaves it out): Matrix Synapse's
`GET /_matrix/client/v3/voip/turnServer`, which issues the same coturn REST credential (same
secret, URIs and lifetime), behind the same gateway, pinned to the same CPU.
"""

from __future__ import annotations

import json
import urllib.request
from math import nan
from pathlib import Path
from typing import Any

from rtc_testkit.contract import make_token
from rtc_testkit.processes import Process
from rtc_testkit.stack import base_env

from bench import synapse
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
    summary,
)
from bench.modes import Mode, progress

ICE_PATH = "/api/v1/rtc/ice"
SYNAPSE_TURN = "/_matrix/client/v3/voip/turnServer"
SYNAPSE_ROUTE = "/bench/synapse"


def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    redis = start_redis(workdir / "redis")
    started: list[Process] = [redis]
    peer: synapse.SynapsePeer | None = None
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
        peer, peer_info = synapse.try_start_peer(
            workdir / "synapse",
            "ice",
            turn_secret=env["TURN_SECRET"],
            turn_uris=env["TURN_URIS"].split(","),
            turn_ttl_seconds=int(env.get("TURN_CRED_TTL", "600")),
            room=False,
        )
        routes = {"/bench/bare": bare.port, "/bench/stdlib": ice_stdlib.port}
        peer_headers: dict[str, str] = {}
        if peer is not None:
            routes[SYNAPSE_ROUTE] = peer.port
            peer_headers["Authorization"] = f"Bearer {peer.token}"
            request = urllib.request.Request(peer.url + SYNAPSE_TURN, headers=peer_headers)
            with (
                synapse.measuring(peer, "synapse_turn"),
                urllib.request.urlopen(request, timeout=5) as response,
            ):
                peer_info["response_bytes"] = len(response.read())
            peer_info["endpoint"] = f"GET {SYNAPSE_TURN}"
        gateway = BenchGateway(
            workdir / "gateway", ice=[ice.port], extra_routes=routes, static_body=body
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
        if peer is not None:
            targets["synapse_turn"] = (g + SYNAPSE_ROUTE + SYNAPSE_TURN, peer_headers)
        nginx, redis_pid = {"nginx": gateway_pid(gateway)}, {"redis": server_pid(redis)}
        watch = {
            "nginx_static": nginx,
            "bare_aiohttp": {**nginx, "bare": server_pid(bare)},
            "ice_asyncio": {**nginx, **redis_pid, "ice": server_pid(ice_stdlib)},
            "ice": {**nginx, **redis_pid, "ice": server_pid(ice)},
        }
        if peer is not None:
            watch["synapse_turn"] = {**nginx, "synapse": peer.pid}
        saturation: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        fixed: dict[str, list[dict[str, Any]]] = {
            name: [] for name in targets if name != "nginx_static"
        }
        for repeat in range(mode.repeats):
            # Round robin, so a slow spell of the shared machine hits every subject alike.
            for name, (url, hdrs) in targets.items():
                with synapse.measuring(peer, name):
                    result = run_wrk(url, mode.saturation_seconds, headers=hdrs, watch=watch[name])
                saturation[name].append(result)
                progress(
                    f"ice saturation {repeat + 1}/{mode.repeats} {name}: {result['rps']:.0f} req/s"
                    + (f" ({result['non_2xx']} non-2xx)" if result["non_2xx"] else "")
                )
            for name in fixed:
                url, hdrs = targets[name]
                with synapse.measuring(peer, name):
                    result = run_loadgen(
                        {
                            "url": url,
                            "headers": hdrs,
                            "rate": 1000,
                            "duration": mode.fixed_seconds,
                            "ok_only": True,
                        }
                    )
                fixed[name].append(result)
                progress(
                    f"ice 1000 req/s {repeat + 1}/{mode.repeats} {name}: "
                    f"p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms"
                )
        sat_summary = {name: saturation_summary(runs) for name, runs in saturation.items()}
        fixed_summary = {name: fixed_rate_summary(runs) for name, runs in fixed.items()}
        result = {
            "response_bytes": len(body),
            "saturation": sat_summary,
            "fixed_1000": fixed_summary,
            "peer": peer_info,
        }
        if peer is not None:
            ratios = synapse.peer_ratios(sat_summary, fixed_summary, "ice", "synapse_turn")
            ratios["cpu_us_per_request"] = {
                name: summary([r["cpu_us_per_request"].get(proc, nan) for r in saturation[name]])
                for name, proc in (("ice", "ice"), ("synapse_turn", "synapse"))
            }
            result["peer_ratios"] = {"ice/synapse_turn": ratios}
        return result
    finally:
        if peer is not None:
            peer.stop()
        for process in reversed(started):
            process.stop()
