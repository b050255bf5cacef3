"""The local stack (`make run` / `make up`): secrets, configs and the Procfile under `.run/`.

Everything generated lives in the run folder (git-ignored). Secrets are generated once and kept;
the other files are rewritten on every `prepare` so that a change of ports or code takes effect.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shlex
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dotenv import dotenv_values
from rtc_gateway import TEMPLATE as GATEWAY_TEMPLATE
from rtc_gateway import GatewayLimits, render_conf, server_lines

REPO_ROOT = Path(__file__).resolve().parents[3]
ALERT_RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
WEB_ROOT = REPO_ROOT / "clients" / "web"  # served at /demo/ (the web SDK and the demo page)
# The peer ranges coturn never relays to: the one list the image's entrypoint renders too.
DENIED_PEERS = REPO_ROOT / "deploy" / "coturn" / "denied-peers.txt"
# coturn's limits: the image's defaults (deploy/coturn/entrypoint.sh, deploy/env.example).
TURN_USER_QUOTA = 12
TURN_TOTAL_QUOTA = 800
TURN_MAX_BPS = 1_000_000


@dataclass
class StackPorts:
    gateway: int = 8080
    redis: int = 6390
    turn: int = 3478
    # coturn's admin CLI (loopback only), where ice-service ends revoked wallets' TURN sessions.
    turn_cli: int = 5766
    ice: list[int] = field(default_factory=lambda: [8101])
    signal: list[int] = field(default_factory=lambda: [8201, 8202])
    relay: list[int] = field(default_factory=lambda: [8301])
    # A Prometheus scraping the services (`make run MONITORING=1`); None: not started.
    prometheus: int | None = None


def render_gateway(
    run_dir: Path,
    ports: StackPorts,
    *,
    template: Path = GATEWAY_TEMPLATE,
    daemon: bool = False,
    workers: int = 1,
    affinity_key: str = "$remote_addr",
    web_root: Path = WEB_ROOT,
    extra_upstreams: str = "",
    extra_locations: str = "",
    limits: GatewayLimits | None = None,
) -> str:
    """nginx.conf for the local stack's gateway (rtc_gateway's renderer, as the image's): every
    path it writes points into `run_dir`; the upstreams are `ports` on 127.0.0.1.

    `affinity_key`: the nginx variable hashed over the signal upstreams (Socket.IO affinity).
    `web_root`: the folder served at `/demo/` (the web SDK and the demo page).
    `extra_upstreams`, `extra_locations`: nginx `upstream` blocks and `location` blocks added to
    the config (the benchmarks' baselines); empty in the product.
    `limits`: per-client limits, sizes and timeouts (default: `GatewayLimits()`, the code
    defaults; `GatewayLimits.off()` has no per-address limits).
    """

    def servers(port_list: list[int]) -> str:
        return server_lines(f"127.0.0.1:{port}" for port in port_list)

    return render_conf(
        run_dir=run_dir,
        listen=f"127.0.0.1:{ports.gateway}",
        workers=str(workers),
        ice_servers=servers(ports.ice),
        signal_servers=servers(ports.signal),
        relay_servers=servers(ports.relay),
        web_root=Path(web_root).resolve(),
        limits=limits or GatewayLimits(),
        affinity_key=affinity_key,
        daemon=daemon,
        extra_upstreams=extra_upstreams,
        extra_locations=extra_locations,
        template=template,
    )


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def denied_peer_networks(path: Path = DENIED_PEERS) -> list[IPNetwork]:
    """The networks of denied-peers.txt: the first word of each line; `#` lines are comments."""
    networks: list[IPNetwork] = []
    for line in path.read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            networks.append(ipaddress.ip_network(words[0]))
    return networks


def coturn_peer_range(network: IPNetwork) -> str:
    """`FIRST-LAST` (coturn 4.6 takes no CIDR), or the address alone for a single one; IPv6 as
    eight hex groups, exactly as the image's entrypoint writes them."""

    def text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        if address.version == 4:
            return str(address)
        packed = address.packed
        return ":".join(f"{int.from_bytes(packed[i : i + 2], 'big'):x}" for i in range(0, 16, 2))

    first, last = text(network[0]), text(network[-1])
    return first if first == last else f"{first}-{last}"


def turnserver_conf(
    run_dir: Path,
    port: int,
    secret: str,
    previous: str | None = None,
    *,
    cli_port: int | None = None,
    cli_password: str | None = None,
    tls: tuple[int, Path, Path] | None = None,
) -> str:
    """coturn's config for the local stack. `previous`: a retired secret still accepted during a
    rotation (TURN_SECRET_PREVIOUS; coturn accepts every `static-auth-secret` line).
    `cli_port` and `cli_password`: coturn's admin CLI on 127.0.0.1 (else `no-cli`).
    `tls`: (port, certificate chain, key) for turns: (else `no-tls`).
    The peer policy and limits are the image's defaults (deploy/coturn), but for one loopback
    address allowed as a peer."""
    return "\n".join(
        [
            "listening-ip=127.0.0.1",
            "relay-ip=127.0.0.1",
            f"listening-port={port}",
            "use-auth-secret",
            f"static-auth-secret={secret}",
            *([f"static-auth-secret={previous}"] if previous else []),
            "realm=rtc.local",
            "fingerprint",
            *(
                ["cli-ip=127.0.0.1", f"cli-port={cli_port}", f"cli-password={cli_password}"]
                if cli_port and cli_password
                else ["no-cli"]
            ),
            "min-port=49160",
            "max-port=49200",
            *(
                [f"tls-listening-port={tls[0]}", f"cert={tls[1]}", f"pkey={tls[2]}"]
                if tls
                else ["no-tls"]
            ),
            "no-dtls",
            "no-multicast-peers",
            # Every non-public range denied, as in the image (deploy/coturn/denied-peers.txt).
            *(f"denied-peer-ip={coturn_peer_range(net)}" for net in denied_peer_networks()),
            # LOCAL/TEST ONLY, never on a public host: the one loopback peer a one-machine stack
            # relays to (the other end of a call on this host, the doctor's probe). coturn
            # refuses loopback peers without allow-loopback-peers whatever the lists say; with
            # it, the denied 127/8 and ::1 still apply to every other loopback address.
            "allow-loopback-peers",
            "allowed-peer-ip=127.0.0.1",
            "no-tcp-relay",
            f"user-quota={TURN_USER_QUOTA}",
            f"total-quota={TURN_TOTAL_QUOTA}",
            f"max-bps={TURN_MAX_BPS}",
            "log-file=stdout",
            "simple-log",
            f"pidfile={run_dir}/turnserver.pid",
            f"userdb={run_dir}/turndb",
            "",
        ]
    )


def render_prometheus(
    ports: StackPorts,
    rule_files: list[Path] | None = None,
    *,
    scrape_interval: str = "5s",
    evaluation_interval: str = "5s",
) -> str:
    """prometheus.yml scraping the local stack's services (static targets, the compose jobs'
    names, which the alerts rely on) and loading `rule_files` (default: deploy's alerts.yml)."""
    rules = [ALERT_RULES] if rule_files is None else rule_files
    jobs = {"ice-service": ports.ice, "signal-service": ports.signal, "relay-service": ports.relay}
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(path).resolve()) for path in rules],
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [f"127.0.0.1:{port}" for port in job_ports]}],
            }
            for job, job_ports in jobs.items()
        ],
    }
    # JSON is YAML: no YAML library needed to write it.
    return json.dumps(config, indent=2) + "\n"


# The local stack's token issuer and audience: rtcctl's tokens carry them, the services require
# them, so a token signed with JWT_SECRET for anything else is refused (not secrets).
LOCAL_JWT_ISSUER = "rtc-local"
LOCAL_JWT_AUDIENCE = "rtc"
# Generated into secrets.env when missing (an older file gets the ones it lacks), then kept:
# name -> random bytes (JWT_SECRET's 48 give 64 characters, long enough for HS512 as well).
_GENERATED_SECRETS = {
    "JWT_SECRET": 48,
    "TURN_SECRET": 32,
    "LOG_PSEUDONYM_KEY": 32,
    "ADMIN_TOKEN": 32,
    "TURN_ADMIN_PASSWORD": 24,
}


def _load_or_create_secrets(run_dir: Path) -> dict[str, str]:
    path = run_dir / "secrets.env"
    values = read_env_file(path) if path.exists() else {}
    missing = {
        name: secrets.token_urlsafe(size)
        for name, size in _GENERATED_SECRETS.items()
        if not values.get(name)
    }
    if missing:
        text = path.read_text() if path.exists() else ""
        lines = ("\n" if text and not text.endswith("\n") else "") + "".join(
            f"{k}={v}\n" for k, v in missing.items()
        )
        # Created 0600 (never readable by others, not even between create and chmod).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(lines)
    path.chmod(0o600)
    return {**values, **missing}


def read_env_file(path: Path) -> dict[str, str]:
    """The `KEY=VALUE` lines of an env file (python-dotenv's parser: comments, blank lines,
    quotes and `export ` handled); a bare `KEY` without `=` is left out. No `${VAR}`
    interpolation: a value is taken as written."""
    values = dotenv_values(path, interpolate=False)
    return {key: value for key, value in values.items() if value is not None}


def prepare(run_dir: Path, ports: StackPorts) -> None:
    run_dir = run_dir.resolve()
    for sub in ("logs", "redis", "nginx-tmp"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    generated = _load_or_create_secrets(run_dir)
    redis_url = f"redis://127.0.0.1:{ports.redis}/0"
    env = {
        "REDIS_URL": redis_url,
        "DIRECTORY_URL": redis_url,
        "JWT_SECRET": generated["JWT_SECRET"],
        "JWT_ISSUER": LOCAL_JWT_ISSUER,
        "JWT_AUDIENCE": LOCAL_JWT_AUDIENCE,
        "LOG_PSEUDONYM_KEY": generated["LOG_PSEUDONYM_KEY"],
        "ALLOW_BEARER_AUTH": "true",
        "ALLOWED_ORIGINS": f"http://127.0.0.1:{ports.gateway},http://localhost:{ports.gateway}",
        "TRUSTED_PROXIES": "127.0.0.1",
        "RTC_PROVIDER": "coturn",
        "TURN_SECRET": generated["TURN_SECRET"],
        "TURN_URIS": (
            f"turn:127.0.0.1:{ports.turn}?transport=udp,turn:127.0.0.1:{ports.turn}?transport=tcp"
        ),
        "TURN_CRED_TTL": "600",
        # The admin routes (`rtcctl revoke`) and coturn's CLI that revocations reach.
        "ADMIN_TOKEN": generated["ADMIN_TOKEN"],
        "TURN_ADMIN_ADDRESS": f"127.0.0.1:{ports.turn_cli}",
        "TURN_ADMIN_PASSWORD": generated["TURN_ADMIN_PASSWORD"],
        "LOG_LEVEL": "INFO",
    }
    env_path = run_dir / "env"
    env_path.write_text(
        "# Generated by `rtcctl local prepare`; edit secrets.env, not this file.\n"
        + "".join(f"{k}={v}\n" for k, v in env.items())
    )
    env_path.chmod(0o600)
    (run_dir / "nginx.conf").write_text(
        render_gateway(run_dir, ports, limits=GatewayLimits.from_env(os.environ))
    )
    turn_conf = run_dir / "turnserver.conf"
    turn_conf.write_text(
        turnserver_conf(
            run_dir,
            ports.turn,
            generated["TURN_SECRET"],
            # A rotation: put the new TURN_SECRET and the old one as TURN_SECRET_PREVIOUS in
            # secrets.env; remove the old one once TURN_CRED_TTL has passed.
            generated.get("TURN_SECRET_PREVIOUS") or None,
            cli_port=ports.turn_cli,
            cli_password=generated["TURN_ADMIN_PASSWORD"],
        )
    )
    turn_conf.chmod(0o600)
    (run_dir / "stack.json").write_text(json.dumps(asdict(ports), indent=2) + "\n")

    python = shlex.quote(sys.executable)
    logs = run_dir / "logs"

    def logged(name: str, command: str) -> str:
        # tee keeps the console output of `make run` and a per-service file in .run/logs/.
        return f"{name}: {command} 2>&1 | tee -a {shlex.quote(str(logs / (name + '.log')))}"

    lines = [
        logged(
            "redis",
            f"redis-server --port {ports.redis} --bind 127.0.0.1"
            f" --dir {shlex.quote(str(run_dir / 'redis'))} --save '' --logfile ''"
            # The relay queue lives here: what Redis acknowledged must survive a kill -9.
            " --appendonly yes --appendfsync always",
        ),
        logged("coturn", f"turnserver -c {shlex.quote(str(turn_conf))}"),
    ]
    for index, port in enumerate(ports.ice):
        lines.append(logged(f"ice{index + 1}", f"env PORT={port} {python} -m ice_service"))
    for index, port in enumerate(ports.signal):
        name = f"signal{index + 1}"
        lines.append(logged(name, f"env PORT={port} INSTANCE_ID={name} {python} -m signal_service"))
    for index, port in enumerate(ports.relay):
        lines.append(logged(f"relay{index + 1}", f"env PORT={port} {python} -m relay_service"))
    lines.append(
        logged(
            "gateway",
            f"nginx -c {shlex.quote(str(run_dir / 'nginx.conf'))} -p {shlex.quote(str(run_dir))}/",
        )
    )
    if ports.prometheus is not None:
        prometheus_dir = run_dir / "prometheus"
        (prometheus_dir / "data").mkdir(parents=True, exist_ok=True)
        (prometheus_dir / "prometheus.yml").write_text(render_prometheus(ports))
        lines.append(
            logged(
                "prometheus",
                "prometheus"
                f" --config.file={shlex.quote(str(prometheus_dir / 'prometheus.yml'))}"
                f" --storage.tsdb.path={shlex.quote(str(prometheus_dir / 'data'))}"
                " --storage.tsdb.retention.time=2d"
                f" --web.listen-address=127.0.0.1:{ports.prometheus}",
            )
        )
    (run_dir / "Procfile").write_text("\n".join(lines) + "\n")


def wait_ready(run_dir: Path, timeout: float = 60.0) -> bool:
    """Poll every service's /readyz and the gateway's /healthz, printing progress."""
    ports = StackPorts(**json.loads((run_dir / "stack.json").read_text()))
    targets = {f"ice:{p}": f"http://127.0.0.1:{p}/readyz" for p in ports.ice}
    targets.update({f"signal:{p}": f"http://127.0.0.1:{p}/readyz" for p in ports.signal})
    targets.update({f"relay:{p}": f"http://127.0.0.1:{p}/readyz" for p in ports.relay})
    targets["gateway"] = f"http://127.0.0.1:{ports.gateway}/healthz"
    if ports.prometheus is not None:
        targets["prometheus"] = f"http://127.0.0.1:{ports.prometheus}/-/ready"
    pending = dict(targets)
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while pending and time.monotonic() < deadline:
        for name, url in list(pending.items()):
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
                    if response.status == 200:
                        print(f"  ready: {name}", flush=True)
                        del pending[name]
            except (urllib.error.URLError, OSError):
                pass
        if pending and time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            print(f"  waiting for: {', '.join(pending)}", flush=True)
        if pending:
            time.sleep(0.2)
    if pending:
        print(f"not ready after {timeout:.0f} s: {', '.join(pending)}", file=sys.stderr)
        return False
    return True


def run_env(env_file: Path) -> dict[str, str]:
    """What every rtcctl command reads its settings from: `env_file` (when it exists),
    overridden by the process environment."""
    values = read_env_file(env_file) if env_file.exists() else {}
    values.update(os.environ)
    return values


def stack_gateway(run_dir: Path) -> str | None:
    """The local stack's gateway URL, from its stack.json (None without one)."""
    path = run_dir / "stack.json"
    if not path.exists():
        return None
    try:
        return f"http://127.0.0.1:{int(json.loads(path.read_text())['gateway'])}"
    except (ValueError, TypeError, KeyError):
        return None


def gateway_url(run_dir: Path, env: dict[str, str], given: str | None = None) -> str:
    """The gateway to talk to: `given` (a flag), RTC_GATEWAY_URL, the local stack's, or the
    default port on this host."""
    chosen = given or env.get("RTC_GATEWAY_URL") or stack_gateway(run_dir)
    return (chosen or "http://127.0.0.1:8080").rstrip("/")


def default_run_dir() -> Path:
    configured = os.environ.get("RTC_RUN_DIR")
    if configured:
        return Path(configured)
    # Walk up from the working directory so rtcctl works from any folder of the checkout.
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".run" / "env").exists():
            return folder / ".run"
    return REPO_ROOT / ".run"
