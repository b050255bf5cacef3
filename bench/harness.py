"""Processes and measurements for the benchmarks.

Servers run on CPU 0 and load generators on CPU 1 (`taskset`), so a generator never takes the
servers' core; every generator reports its own CPU use to show it was not the bottleneck.
The test kit's real components (redis-server, nginx, service processes: rtc_testkit) are reused.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rtc_common.directory import REDIS_FLAGS_KEY
from rtc_gateway import GatewayLimits
from rtc_testkit.processes import (
    REPO_ROOT,
    HttpServer,
    Process,
    RedisServer,
    ServiceProcess,
    free_port,
    wait_for,
    write_nginx_conf,
)
from rtcctl.local import StackPorts, render_gateway

SERVER_CPUS = os.environ.get("BENCH_SERVER_CPUS", "0")
LOAD_CPUS = os.environ.get("BENCH_LOAD_CPUS", "1")
NODE_DIR = REPO_ROOT / "bench" / "node"
# Per-address limits at the gateway are off for the benchmarks (one address sends everything).
GATEWAY_LIMITS_OFF = GatewayLimits(rate_limit=None, conn_limit=None)


def pinned(cpus: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if shutil.which("taskset") and cpus else list(argv)


def pin_process(process: Process) -> Process:
    process.argv = pinned(SERVER_CPUS, process.argv)
    return process


def start_redis(workdir: Path, *, appendfsync: str | None = None) -> RedisServer:
    """A pinned redis-server with the ICE flag on; `appendfsync` turns the AOF on."""
    server = RedisServer(workdir, appendonly=appendfsync is not None)
    argv = server.argv
    argv[argv.index("--appendfsync") + 1] = appendfsync or "always"
    pin_process(server)
    server.start()
    server.client().hset(REDIS_FLAGS_KEY, "rtc.ice", "1")
    return server


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def server_pid(process: Process) -> int:
    """The real server's pid (the child of `taskset`, which execs, so the same pid)."""
    assert process.proc is not None
    return process.proc.pid


def gateway_pid(gateway: Process) -> int:
    """nginx's (single) worker process: where the gateway's CPU goes."""
    master = server_pid(gateway)
    children = Path(f"/proc/{master}/task/{master}/children")
    wait_for(lambda: bool(children.read_text().split()), what="the nginx worker")
    return int(children.read_text().split()[0])


def raise_fd_limit(n: int = 200_000) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, min(n, hard)) if os.geteuid() != 0 else n
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class BenchGateway(HttpServer):
    """The product's gateway config, per-address limits off, plus the baselines' routes.

    `extra_routes`: path prefix -> port of a baseline (or a variant of a service); the prefix is
    stripped and the request proxied with the same keepalive upstream settings as the product's.
    `/bench/static/ice` is nginx answering `static_body` itself (the machine's ceiling).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        ice: list[int],
        signal: list[int] | None = None,
        relay: list[int] | None = None,
        extra_routes: Mapping[str, int] | None = None,
        static_body: str = "{}",
    ):
        self.port = free_port()
        upstreams, locations = (
            [],
            [
                "        location = /bench/static/ice {",
                f"            return 200 '{static_body}';",
                "        }",
            ],
        )
        for n, (prefix, port) in enumerate((extra_routes or {}).items()):
            upstreams += [
                f"    upstream bench_{n} {{",
                f"        server 127.0.0.1:{port};",
                "        keepalive 64;",
                "    }",
            ]
            locations.append(f"        location {prefix}/ {{ proxy_pass http://bench_{n}/; }}")
        ports = StackPorts(
            gateway=self.port, ice=ice, signal=signal or [free_port()], relay=relay or [free_port()]
        )
        text = render_gateway(
            workdir,
            ports,
            extra_upstreams="\n".join(upstreams),
            extra_locations="\n".join(locations),
            limits=GATEWAY_LIMITS_OFF,
        )
        conf = write_nginx_conf(workdir, text)
        super().__init__(
            f"gateway:{self.port}",
            pinned(SERVER_CPUS, ["nginx", "-c", str(conf), "-p", f"{workdir}/"]),
            workdir / "logs" / "gateway.log",
        )


def baseline_env() -> dict[str, str] | None:
    """With BENCH_BASELINE_SRC=<a source checkout>: the environment that runs that checkout's
    signal-service (its services/ first on PYTHONPATH) as the "before" of the same run, on a bus
    channel of its own so that the current instances never decode its traffic."""
    src = os.environ.get("BENCH_BASELINE_SRC")
    if not src:
        return None
    paths = [str(Path(src) / "services" / name) for name in ("signal", "common")]
    return {"PYTHONPATH": os.pathsep.join(paths), "SOCKETIO_CHANNEL": "rtc-socketio-before"}


def python_server(
    module: str, workdir: Path, env: Mapping[str, str], ready: str = "/readyz"
) -> ServiceProcess:
    process = ServiceProcess(module, workdir, env)
    process.ready_path = ready
    pin_process(process)
    process.start()
    return process


class NodeServer(HttpServer):
    def __init__(self, workdir: Path, redis_url: str, *, sharded: bool = False):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = {"PATH": os.environ["PATH"], "PORT": str(self.port), "REDIS_URL": redis_url}
        if sharded:
            env["SHARDED"] = "1"
        super().__init__(
            f"node-sio:{self.port}",
            pinned(SERVER_CPUS, ["node", str(NODE_DIR / "server.mjs")]),
            workdir / f"node-sio-{self.port}.log",
            env,
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    url: str,
    seconds: float,
    *,
    watch: Mapping[str, int] | None = None,
    connections: int = 64,
    headers: Mapping[str, str] | None = None,
    script: Path | None = None,
    script_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Saturation: requests/s, latency percentiles and wrk's own CPU share."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    watched = {name: cpu_seconds(pid) for name, pid in (watch or {}).items()}
    started = time.monotonic()
    out = subprocess.run(
        pinned(LOAD_CPUS, argv), capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    elapsed = time.monotonic() - started
    used = {name: cpu_seconds(pid) - watched[name] for name, pid in (watch or {}).items()}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    total = re.search(r"(\d+) requests in", out)

    def pct(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\b", out, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    requests = int(total.group(1)) if total else 0
    failed = int(non2xx.group(1)) if non2xx else 0
    return {
        "rps": rps,
        # Answers of 2xx (or 3xx) only: what the peers' comparisons count, ours as theirs.
        "ok_rps": rps * (requests - failed) / requests if requests else 0.0,
        "requests": requests,
        "non_2xx": failed,
        "socket_errors": errors.group(0) if errors else "",
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "generator_cpu_percent": 100 * cpu / elapsed,
        # Where the servers' core went: CPU microseconds per request, per watched process.
        "cpu_us_per_request": {
            name: 1e6 * seconds_used / max(1, int(total.group(1)) if total else 1)
            for name, seconds_used in used.items()
        },
    }


def run_loadgen(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Fixed-rate open-loop latency (bench/loadgen.py) in its own pinned process."""
    argv = pinned(LOAD_CPUS, [sys.executable, "-m", "bench.loadgen", json.dumps(spec)])
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        timeout=float(spec["duration"]) + 60,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def run_node_load(
    mode: str, protocol: str, spec: Mapping[str, Any], workdir: Path, timeout: float = 600
) -> dict[str, Any]:
    """bench/node/signal_load.mjs in `mode` against `spec`, on the load CPUs: its JSON result."""
    spec_path = workdir / f"node-spec-{mode}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "MODE": mode, "PROTOCOL": protocol, "SPEC": str(spec_path)}
    out = subprocess.run(
        pinned(LOAD_CPUS, ["node", str(NODE_DIR / "signal_load.mjs")]),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"signal_load {mode} failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def saturation_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """wrk runs of one subject: requests/s (median, min-max), non-2xx, the generator's CPU."""
    return {
        "rps": summary([r["rps"] for r in runs]),
        "ok_rps": summary([r.get("ok_rps", r["rps"]) for r in runs]),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "generator_cpu_percent": summary([r["generator_cpu_percent"] for r in runs]),
        "runs": runs,
    }


def fixed_rate_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Fixed-rate runs of one subject: p50/p99 (median, min-max), failures, the generator's CPU."""
    return {
        "p50_ms": summary([r["p50_ms"] for r in runs]),
        "p99_ms": summary([r["p99_ms"] for r in runs]),
        "non_2xx": sum(r["sent"] - r["ok"] for r in runs),
        "achieved_rate": summary([r["achieved_rate"] for r in runs]),
        "generator_cpu_percent": summary([r["generator_cpu_percent"] for r in runs]),
        "runs": runs,
    }


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median with min-max over the repeats."""
    clean = [v for v in values if v == v]  # drop NaN
    if not clean:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {
        "median": statistics.median(clean),
        "min": min(clean),
        "max": max(clean),
        "n": len(clean),
    }
