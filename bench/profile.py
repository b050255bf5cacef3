"""Profile a hot path under load: `python -m bench.profile ice|relay|signal [seconds]`.

Starts the service (and what it needs) pinned like the benchmarks, loads it (wrk for ice and
relay, the socket.io-client saturation load for signal), samples it with py-spy, and prints the
top entries by own time and by module; the flame graph goes to bench/results/profiles/.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from rtc_testkit.contract import make_token
from rtc_testkit.processes import REPO_ROOT, Process
from rtc_testkit.stack import base_env

from bench.harness import python_server, run_node_load, run_wrk, start_redis
from bench.relay import ENQUEUE, SCRIPT, SENDER, seed
from bench.signaling import PAIRS, WINDOW, signal_service_env, users

OUT = REPO_ROOT / "bench" / "results" / "profiles"


def summarize(raw: Path, top: int = 20) -> str:
    own: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        own[leaf] += n
        match = re.search(r"\(([^:)]+)", leaf)
        path = match.group(1) if match else "?"
        modules[path.split("/")[0] if "/" in path else path] += n
    lines = [f"{total} samples", "-- own time, by function"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["-- own time, by package"]
    lines += [f"{100 * n / total:5.1f}%  {name}" for name, n in modules.most_common(12)]
    return "\n".join(lines)


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "ice"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 8
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rtc-profile-") as tmp:
        work = Path(tmp)
        redis = start_redis(work / "redis", appendfsync="everysec" if target == "relay" else None)
        started: list[Process] = [redis]
        try:
            if target == "ice":
                env = base_env(redis.url, ICE_RATE_LIMIT_PER_MIN="1000000000")
                server = python_server("ice_service", work / "ice", env)
                headers = {"Authorization": f"Bearer {make_token('0xbench')}"}

                def load() -> None:
                    run_wrk(server.url + "/api/v1/rtc/ice", seconds + 2, headers=headers)
            elif target == "relay":
                seed(redis)
                env = base_env(redis.url, RELAY_RATE_LIMIT_PER_MIN="1000000000",
                               RELAY_MAX_QUEUE="1000000")  # fmt: skip
                server = python_server("relay_service", work / "relay", env)
                headers = {"Authorization": f"Bearer {make_token(SENDER)}"}

                def load() -> None:
                    run_wrk(server.url + ENQUEUE, seconds + 2, headers=headers, script=SCRIPT,
                            script_args=[uuid.uuid4().hex[:8]])  # fmt: skip
            elif target == "signal":
                env = signal_service_env(redis.url)
                server = python_server("signal_service", work / "signal", env)
                other = python_server("signal_service", work / "signal2", env)
                started.append(other)
                spec = {"urlA": server.url, "urlB": other.url, "pairs": users(redis, "p", PAIRS),
                        "window": WINDOW, "duration": seconds + 2}  # fmt: skip

                def load() -> None:
                    run_node_load("saturate", "rtc", spec, work)
            else:
                sys.exit(f"unknown target {target}: ice, relay or signal")
            started.append(server)
            assert server.proc is not None
            loader = threading.Thread(target=load)
            loader.start()
            raw = OUT / f"{target}.txt"
            svg = OUT / f"{target}.svg"
            base = [".venv/bin/py-spy", "record", "-p", str(server.proc.pid), "-r", "250",
                    "-d", str(int(seconds)), "--nonblocking", "--gil"]  # fmt: skip
            subprocess.run([*base, "-f", "raw", "-o", str(raw)], check=True, capture_output=True)
            loader.join()
            loader = threading.Thread(target=load)
            loader.start()
            subprocess.run([*base, "-o", str(svg)], check=True, capture_output=True)
            loader.join()
            print(summarize(raw))
            print(f"flame graph: {svg.relative_to(REPO_ROOT)}")
        finally:
            for process in reversed(started):
                process.stop()


if __name__ == "__main__":
    main()
