"""The local stack (`make run` / `make up`): secrets, configs and the Procfile under `.run/`.

Everything generated lives in the run folder (git-ignored). Secrets are generated once and kept;
the other files are rewritten on every `prepare` so that a change of ports or code takes effect.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

REPO_ROOT = Path(__file__).resolve().parents[3]
GATEWAY_TEMPLATE = REPO_ROOT / "gateway" / "nginx.conf.template"
ALERT_RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
WEB_ROOT = REPO_ROOT / "clients" / "web"  # served at /demo/ (the web SDK and the demo page)


@dataclass
class StackPorts:
    gateway: int = 8080
    redis: int = 6390
    turn: int = 3478
    ice: list[int] = field(default_factory=lambda: [8101])
    signal: list[int] = field(default_factory=lambda: [8201, 8202])
    relay: list[int] = field(default_factory=lambda: [8301])
    # A Prometheus scraping the services (`make run MONITORING=1`); None: not started.
    prometheus: int | None = None


_NGINX_SIZE = re.compile(r"[1-9][0-9]{0,8}[km]?")
_NGINX_TIME = re.compile(r"[1-9][0-9]{0,6}(?:ms|s|m)?")
_OFF = ("off", "0")


@dataclass(frozen=True)
class GatewayLimits:
    """The gateway's per-client limits (the `GATEWAY_*` variables; README "Configuration").

    `rate_limit` (requests per second per client address, bursts up to `rate_burst` more) and
    `conn_limit` (open connections per client address) are `None` when switched off.
    gateway/docker-entrypoint.sh reads the same variables with the same defaults.
    """

    rate_limit: int | None = 50
    rate_burst: int = 100
    conn_limit: int | None = 100
    max_body_size: str = "128k"
    relay_max_body_size: str = "512k"
    max_header_size: str = "8k"
    client_header_timeout: str = "10s"
    client_body_timeout: str = "10s"
    send_timeout: str = "30s"

    ENV: ClassVar[dict[str, str]] = {
        "rate_limit": "GATEWAY_RATE_LIMIT",
        "rate_burst": "GATEWAY_RATE_BURST",
        "conn_limit": "GATEWAY_CONN_LIMIT",
        "max_body_size": "GATEWAY_MAX_BODY_SIZE",
        "relay_max_body_size": "GATEWAY_RELAY_MAX_BODY_SIZE",
        "max_header_size": "GATEWAY_MAX_HEADER_SIZE",
        "client_header_timeout": "GATEWAY_CLIENT_HEADER_TIMEOUT",
        "client_body_timeout": "GATEWAY_CLIENT_BODY_TIMEOUT",
        "send_timeout": "GATEWAY_SEND_TIMEOUT",
    }

    def __post_init__(self) -> None:
        for name in ("rate_limit", "conn_limit"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 1_000_000:
                raise ValueError(f"{self.ENV[name]}: an integer from 1 to 1000000, or off")
        if not 1 <= self.rate_burst <= 1_000_000:
            raise ValueError("GATEWAY_RATE_BURST: an integer from 1 to 1000000")
        for name in ("max_body_size", "relay_max_body_size", "max_header_size"):
            if not _NGINX_SIZE.fullmatch(getattr(self, name)):
                raise ValueError(f"{self.ENV[name]}: an nginx size such as 128k or 1m")
        for name in ("client_header_timeout", "client_body_timeout", "send_timeout"):
            if not _NGINX_TIME.fullmatch(getattr(self, name)):
                raise ValueError(f"{self.ENV[name]}: an nginx time such as 10s or 500ms")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewayLimits:
        """Defaults for unset or empty variables; `off` (or 0) switches a per-address limit off."""
        values: dict[str, Any] = {}
        for name, variable in cls.ENV.items():
            raw = environ.get(variable, "").strip().lower()
            if not raw:
                continue
            if name in ("rate_limit", "conn_limit", "rate_burst"):
                if name != "rate_burst" and raw in _OFF:
                    values[name] = None
                    continue
                if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
                    raise ValueError(f"{variable}: an integer, or off")
                values[name] = int(raw)
            else:
                values[name] = raw
        return cls(**values)

    @classmethod
    def off(cls) -> GatewayLimits:
        """No per-address limits (benchmarks from one address); sizes and timeouts stay."""
        return cls(rate_limit=None, conn_limit=None)

    def placeholders(self) -> dict[str, str]:
        return {
            # An empty key is never counted: that is how a limit is off.
            "rate_key": '""' if self.rate_limit is None else "$binary_remote_addr",
            "rate_limit": str(self.rate_limit or 1),
            "rate_burst": str(self.rate_burst),
            "conn_key": '""' if self.conn_limit is None else "$binary_remote_addr",
            "conn_limit": str(self.conn_limit or 1),
            "max_body_size": self.max_body_size,
            "relay_max_body_size": self.relay_max_body_size,
            "max_header_size": self.max_header_size,
            "client_header_timeout": self.client_header_timeout,
            "client_body_timeout": self.client_body_timeout,
            "send_timeout": self.send_timeout,
        }


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
    """nginx.conf for the gateway: every path it writes points into `run_dir`.

    `affinity_key`: the nginx variable hashed over the signal upstreams (Socket.IO affinity).
    `web_root`: the folder served at `/demo/` (the web SDK and the demo page).
    `extra_upstreams`, `extra_locations`: nginx `upstream` blocks and `location` blocks added to
    the config (the benchmarks' baselines); empty in the product.
    `limits`: per-client limits, sizes and timeouts (default: `GatewayLimits()`, the code
    defaults; `GatewayLimits.off()` has no per-address limits).
    """
    if not re.fullmatch(r"\$[a-z_]+", affinity_key):
        raise ValueError(f"affinity_key must be one nginx variable ($name): {affinity_key!r}")

    def servers(port_list: list[int]) -> str:
        return "\n".join(f"        server 127.0.0.1:{port};" for port in port_list)

    values = {
        "run_dir": str(run_dir),
        "log_dir": str(run_dir / "logs"),
        "listen": f"127.0.0.1:{ports.gateway}",
        "daemon": "on" if daemon else "off",
        "workers": str(workers),
        "ice_servers": servers(ports.ice),
        "signal_servers": servers(ports.signal),
        "relay_servers": servers(ports.relay),
        "affinity_key": affinity_key,
        "web_root": str(Path(web_root).resolve()),
        "extra_upstreams": extra_upstreams,
        "extra_locations": extra_locations,
        **(limits or GatewayLimits()).placeholders(),
    }
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def turnserver_conf(run_dir: Path, port: int, secret: str, previous: str | None = None) -> str:
    """coturn's config for the local stack. `previous`: a retired secret still accepted during a
    rotation (TURN_SECRET_PREVIOUS; coturn accepts every `static-auth-secret` line)."""
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
            # Loopback peers are what a one-machine stack has; never enable this on a public host.
            "allow-loopback-peers",
            "no-cli",
            "min-port=49160",
            "max-port=49200",
            "no-tls",
            "no-dtls",
            "no-multicast-peers",
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


def _load_or_create_secrets(run_dir: Path) -> dict[str, str]:
    path = run_dir / "secrets.env"
    if path.exists():
        return read_env_file(path)
    values = {
        "JWT_SECRET": secrets.token_urlsafe(48),
        "TURN_SECRET": secrets.token_urlsafe(32),
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return values


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


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
        "ALLOW_BEARER_AUTH": "true",
        "ALLOWED_ORIGINS": f"http://127.0.0.1:{ports.gateway},http://localhost:{ports.gateway}",
        "TRUSTED_PROXIES": "127.0.0.1",
        "RTC_PROVIDER": "coturn",
        "TURN_SECRET": generated["TURN_SECRET"],
        "TURN_URIS": (
            f"turn:127.0.0.1:{ports.turn}?transport=udp,turn:127.0.0.1:{ports.turn}?transport=tcp"
        ),
        "TURN_CRED_TTL": "600",
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
