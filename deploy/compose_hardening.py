"""`compose_check.py hardening`: every container of the project against its service in
docker-compose.yml (podman inspect, and /proc inside the running ones), and what each network
reaches, from throwaway containers."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import yaml
from compose_common import SECRET_NAMES, CheckFailed, compose, redis_cli, say

SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# Every process of a container, as the kernel sees it (not what the runtime says it asked for).
PROC_STATUS = (
    'grep -H -E "^(CapPrm|CapEff|CapBnd|NoNewPrivs):" /proc/[0-9]*/status 2>/dev/null; exit 0'
)
ROOTFS_PROBE = "touch /.rtc-rootfs-probe"
# Run in a throwaway container on one of the stack's networks: what a container there reaches.
NETWORK_PROBE = """
import json, socket, urllib.request
out = {}
for name, port in (("ice-service", 8101), ("signal-service", 8201), ("relay-service", 8301),
                   ("redis", 6379), ("mongo", 27017)):
    try:
        addrs = sorted({a[4][0] for a in socket.getaddrinfo(name, port, socket.AF_INET)})
    except OSError:
        out[name] = "unresolved"
        continue
    if port == 6379:
        with socket.create_connection((addrs[0], port), timeout=3) as s:
            s.sendall(b"PING\\r\\n")
            out[name] = s.recv(100).decode().strip()
        continue
    if port == 27017:
        out[name] = addrs
        continue
    codes = []
    for addr in addrs:
        with urllib.request.urlopen(f"http://{addr}:{port}/metrics", timeout=3) as reply:
            text = reply.read().decode()
            codes.append(reply.status if "rtc_ready" in text else 0)
        for line in text.splitlines():
            if line.startswith("rtc_relay_store_memory_max_bytes "):
                out["store_max_bytes"] = float(line.split()[1])
    out[name] = codes
routes = open("/proc/net/route").read().splitlines()[1:]
out["default_route"] = any(line.split()[1] == "00000000" for line in routes)
print(json.dumps(out))
"""


def size_bytes(value: str | int) -> int:
    text = str(value).strip().lower().removesuffix("b") or "0"
    if text[-1] in SIZE_UNITS:
        return int(float(text[:-1]) * SIZE_UNITS[text[-1]])
    return int(text)


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise CheckFailed(f"podman {args[0]} failed: {done.stderr.strip()[-500:]}")
    return done


def check_container(service: str, spec: dict[str, Any], info: dict[str, Any]) -> str:
    """One container against its service's compose spec: what runs, not what was asked for."""
    host = info["HostConfig"]
    name = f"{service} ({info['Id'][:12]})"
    problems = []
    if host.get("ReadonlyRootfs") is not True:
        problems.append("root filesystem writable")
    if host.get("CapAdd"):
        problems.append(f"capabilities added: {host['CapAdd']}")
    if not any(opt.startswith("no-new-privileges") for opt in host.get("SecurityOpt") or []):
        problems.append(f"no no-new-privileges in {host.get('SecurityOpt')}")
    for key, field, expected in (
        ("mem_limit", "Memory", size_bytes(spec.get("mem_limit", 0))),
        ("pids_limit", "PidsLimit", int(spec.get("pids_limit", 0))),
    ):
        if expected <= 0:
            problems.append(f"no {key} in docker-compose.yml")
        elif host.get(field) != expected:
            problems.append(f"{field} {host.get(field)}, expected {expected} ({key})")
    running = info["State"]["Running"]
    if not running and spec.get("restart") != "no":
        now = info["State"]
        problems.append(f"not running ({now.get('Status')}, exit {now.get('ExitCode')})")
    if running:
        status = podman("exec", info["Id"], "sh", "-c", PROC_STATUS).stdout
        values: dict[str, set[str]] = {}
        for line in status.splitlines():
            _path, field, value = line.split(":", 2)
            values.setdefault(field, set()).add(value.strip())
        for field in ("CapPrm", "CapEff", "CapBnd"):
            if values.get(field) != {"0000000000000000"}:
                problems.append(f"{field} of its processes: {sorted(values.get(field, ()))}")
        if values.get("NoNewPrivs") != {"1"}:
            problems.append(f"NoNewPrivs of its processes: {sorted(values.get('NoNewPrivs', ()))}")
        probe = podman("exec", info["Id"], "sh", "-c", ROOTFS_PROBE, check=False)
        if probe.returncode == 0 or "Read-only file system" not in probe.stderr:
            problems.append(f"the root filesystem took a write ({probe.stderr.strip()})")
    if problems:
        raise CheckFailed(f"{name}: " + "; ".join(problems))
    state = "no capabilities in any process, / refuses writes" if running else "exited"
    return (
        f"{name}: read-only, cap_drop ALL, no-new-privileges, {spec['mem_limit']},"
        f" {spec['pids_limit']} pids; {state}"
    )


def network_probe(project: str, network: str) -> dict[str, Any]:
    """What a container on `network` only (as Prometheus is on monitoring) can reach."""
    listed = podman(
        "network", "ls", "-q",
        "--filter", f"label=com.docker.compose.project={project}",
        "--filter", f"label=com.docker.compose.network={network}",
    ).stdout.split()  # fmt: skip
    if len(listed) != 1:
        raise CheckFailed(f"network {network} of {project}: {listed}")
    done = podman(
        "run", "--rm", "--network", listed[0], "--no-healthcheck",
        "--label", f"com.docker.compose.project={project}",
        "localhost/rtc-test/python:bookworm", "python3", "-c", NETWORK_PROBE,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def check_hardening(project: str, replicas: int) -> None:
    spec = yaml.safe_load(compose("config"))["services"]
    ids = podman(
        "ps", "-aq", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}"
    ).stdout.split()
    infos = json.loads(podman("inspect", *ids).stdout)
    seen = set()
    for info in sorted(infos, key=lambda i: i["Config"]["Labels"]["com.docker.compose.service"]):
        service = info["Config"]["Labels"]["com.docker.compose.service"]
        seen.add(service)
        say(check_container(service, spec[service], info))
    expected = {"gateway", "ice-service", "signal-service", "relay-service", "directory-init"}
    expected |= {"redis", "coturn"}
    if not expected <= seen:
        raise CheckFailed(f"containers missing: {sorted(expected - seen)}")

    # The password stays off command lines (the redis command reads it on stdin).
    password = os.environ["REDIS_PASSWORD"]
    for info in infos:
        if password in json.dumps([info["Config"].get("Cmd"), info.get("Args")]):
            raise CheckFailed(f"REDIS_PASSWORD on the command line of {info['Name']}")
    say("REDIS_PASSWORD is on no container's command line")
    if os.environ.get("SECRETS_AS_FILES"):
        # Compose secrets: files under /run/secrets, no secret in any container's environment.
        for info in infos:
            env = json.dumps(info["Config"].get("Env"))
            for name in SECRET_NAMES:
                if os.environ.get(name) and os.environ[name] in env:
                    raise CheckFailed(f"{name} in the environment of {info['Name']}")
        say(f"secrets as files: none of {len(SECRET_NAMES)} secrets in any container's environment")

    monitoring = network_probe(project, "monitoring")
    backend = network_probe(project, "backend")
    edge = network_probe(project, "edge")
    scraped = [monitoring.get(s) for s in ("ice-service", "signal-service", "relay-service")]
    if scraped != [[200], [200] * replicas, [200]]:
        raise CheckFailed(f"monitoring network: /metrics answers {monitoring}")
    if monitoring["redis"] != "unresolved" or monitoring["mongo"] != "unresolved":
        raise CheckFailed(f"monitoring network reaches the stores: {monitoring}")
    say(f"monitoring network: /metrics of ice, {replicas} signal, relay: 200; no redis, no mongo")
    if edge["redis"] != "unresolved":
        raise CheckFailed(f"the gateway's network reaches redis: {edge}")
    say("edge network (the gateway's): the services, and no redis")
    if not backend["redis"].startswith("-NOAUTH"):
        raise CheckFailed(f"redis without a password answered {backend['redis']!r}")
    if backend["default_route"]:
        raise CheckFailed("the backend network has a default route (it is internal)")
    say(f"backend network: redis without the password: {backend['redis']}; no way out")

    # The relay store's ceiling, as Redis has it and as relay-service reports it to Prometheus.
    config = redis_cli(["CONFIG", "GET", "maxmemory"], ["CONFIG", "GET", "maxmemory-policy"])
    ceiling = size_bytes(spec["redis"]["environment"]["REDIS_MAXMEMORY"])
    if config != ["maxmemory", str(ceiling), "maxmemory-policy", "noeviction"]:
        raise CheckFailed(f"redis memory settings: {config}, ceiling {ceiling} noeviction")
    for _ in range(3):
        # A gauge sampled every 5 s: a scrape right after the start may precede its first value.
        if monitoring.get("store_max_bytes") == ceiling:
            break
        time.sleep(5)
        monitoring = network_probe(project, "monitoring")
    if monitoring.get("store_max_bytes") != ceiling:
        raise CheckFailed(f"relay-service reports maxmemory {monitoring.get('store_max_bytes')}")
    say(f"redis: maxmemory {ceiling} noeviction, reported by relay-service's /metrics")


# --- run --------------------------------------------------------------------------------------
