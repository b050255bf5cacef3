"""`python -m bench [--mode quick|full] [--only ice,signaling,connections,relay] [--no-peers]`.

The ice and relay scenarios also measure the nearest public peer, Matrix Synapse (installed
once into a venv of its own under ~/.cache/rtc-bench; bench/synapse.py), in the same run;
--no-peers or BENCH_PEERS=0 leaves it out, BENCH_SYNAPSE_DB=postgres puts its data in
PostgreSQL instead of SQLite.

Prints a progress line per measurement on stderr, then the table; writes
bench/results/<date>-<mode>.json, and docs/benchmarks.md in full mode (or with --write-docs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rtc_testkit.processes import REPO_ROOT

from bench import connections, ice, relay, scaleout, signaling, synapse_install
from bench.harness import LOAD_CPUS, SERVER_CPUS, raise_fd_limit
from bench.modes import FULL, QUICK, progress
from bench.report import render_markdown, render_table

SCENARIOS = {
    "ice": ice.run,
    "signaling": signaling.run,
    "connections": connections.run,
    "relay": relay.run,
    "scaleout": scaleout.run,
}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "not found"

    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": version(["node", "--version"]),
        "nginx": version(["nginx", "-v"]),
        "redis": version(["redis-server", "--version"]),
        "wrk": version(["wrk", "--version"]),
        "server_cpus": SERVER_CPUS,
        "load_cpus": LOAD_CPUS,
        "git_rev": rev,
        "peers": (
            f"Synapse {synapse_install.version()} ({os.environ.get('BENCH_SYNAPSE_DB', 'sqlite')})"
            if synapse_install.peers_enabled()
            else "off"
        ),
    }


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # As for Ctrl-C: the scenarios' finally blocks stop every server they started.
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--mode", choices=["quick", "full"], default="quick")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--label", default="", help="a suffix for the results file")
    parser.add_argument("--write-docs", action="store_true", help="also in quick mode")
    parser.add_argument(
        "--no-peers", action="store_true", help="leave out the peer (Synapse); as BENCH_PEERS=0"
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="print the table of a results file (and with "
        "--write-docs rewrite docs/benchmarks.md from it) without running anything",
    )
    args = parser.parse_args()
    if args.render:
        path = Path(args.render).resolve()
        rendered = json.loads(path.read_text())
        print(render_table(rendered))
        if args.write_docs:
            write_docs(rendered, path)
        return
    if args.no_peers:
        os.environ["BENCH_PEERS"] = "0"
    mode = FULL if args.mode == "full" else QUICK
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    for tool in ("wrk", "redis-benchmark", "nginx", "redis-server", "node"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            sys.exit(f"bench: {tool} not found (make bench installs it: apt-get install wrk ...)")
    if not (REPO_ROOT / "bench" / "node" / "node_modules").exists():
        sys.exit("bench: bench/node/node_modules missing (make bench runs npm ci there)")
    raise_fd_limit()
    # The orchestrator and its load generators stay off the servers' CPU.
    if LOAD_CPUS:
        os.sched_setaffinity(0, {int(c) for c in LOAD_CPUS.split(",")})
    results: dict[str, Any] = {
        "mode": mode.name,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "scenarios": {},
    }
    started = time.monotonic()
    out_dir = REPO_ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    suffix = f"-{args.label}" if args.label else ""
    path = out_dir / f"{stamp}-{mode.name}{suffix}.json"
    if path.exists():  # an earlier run of the same day is kept: this one gets the time too
        path = path.with_name(f"{path.stem}-{datetime.now(UTC).strftime('%H%M%S')}.json")
    with tempfile.TemporaryDirectory(prefix="rtc-bench-") as tmp:
        for name in chosen:
            progress(f"== {name} ({mode.name})")
            try:
                results["scenarios"][name] = SCENARIOS[name](mode, Path(tmp) / name)
            except Exception as exc:
                # One scenario failing must not cost the others' figures: recorded, reported.
                progress(f"!! {name} failed: {type(exc).__name__}: {exc}")
                results.setdefault("failed", {})[name] = f"{type(exc).__name__}: {exc}"[:2000]
            results["seconds"] = round(time.monotonic() - started, 1)
            path.write_text(json.dumps(results, indent=1) + "\n")  # after every scenario
    print(render_table(results))
    print(f"\nresults: {path.relative_to(REPO_ROOT)} ({results['seconds']} s)")
    if results.get("failed"):
        print(f"failed scenarios: {', '.join(results['failed'])}", file=sys.stderr)
    if mode is FULL or args.write_docs:
        write_docs(results, path)


def write_docs(results: dict[str, Any], json_path: Path) -> None:
    docs = REPO_ROOT / "docs" / "benchmarks.md"
    docs.parent.mkdir(exist_ok=True)
    docs.write_text(render_markdown(results, json_path.relative_to(REPO_ROOT)))
    print(f"docs: {docs.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
