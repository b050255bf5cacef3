"""The deployment under examination: its env, its gateway and its signal instances.

The local stack by default (the run folder's `env` and `stack.json`); `--env-file`, `--gateway` and
`--signal` point it elsewhere, and the process environment overrides the env file. The target
also remembers every secret of this run, scrubbed from anything printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import local

TOKEN_ENV = "RTC_DOCTOR_TOKEN"  # noqa: S105 (a variable name)


@dataclass
class Target:
    env: dict[str, str]
    env_source: str
    gateway: str
    signal_urls: list[str]
    signal_source: str
    timeout: float
    # ("ice" | "relay", the instance's own URL): whose /healthz/deps the doctor reads.
    service_urls: list[tuple[str, str]] = field(default_factory=list)
    token: str | None = None
    secrets: set[str] = field(default_factory=set)

    def remember(self, *values: str | None) -> None:
        """Values never to be printed (scrubbed from every line as a last safeguard)."""
        self.secrets.update(v for v in values if v and len(v) >= 4)


def _stack_ports(run_dir: Path) -> local.StackPorts | None:
    path = run_dir / "stack.json"
    if not path.exists():
        return None
    try:
        return local.StackPorts(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def resolve_target(args: argparse.Namespace) -> Target:
    run_dir: Path = args.run_dir
    env_file: Path = args.env_file or run_dir / "env"
    env = local.run_env(env_file)
    if env_file.exists():
        env_source = f"{env_file} + process environment"
    else:
        env_source = f"process environment ({env_file} not found)"

    ports = _stack_ports(run_dir)
    stack_gateway = f"http://127.0.0.1:{ports.gateway}" if ports else None
    gateway = local.gateway_url(run_dir, env, args.gateway)

    if args.signal:
        signal_urls = [url.rstrip("/") for url in args.signal]
        signal_source = "--signal"
    elif ports is not None and (stack_gateway == gateway):
        signal_urls = [f"http://127.0.0.1:{port}" for port in ports.signal]
        signal_source = str(run_dir / "stack.json")
    else:
        signal_urls, signal_source = [], ""
    service_urls = [("ice", url.rstrip("/")) for url in getattr(args, "ice", None) or []]
    service_urls += [("relay", url.rstrip("/")) for url in getattr(args, "relay", None) or []]
    if not service_urls and ports is not None and stack_gateway == gateway:
        service_urls = [("ice", f"http://127.0.0.1:{port}") for port in ports.ice]
        service_urls += [("relay", f"http://127.0.0.1:{port}") for port in ports.relay]
    target = Target(
        env=env,
        env_source=env_source,
        gateway=gateway,
        signal_urls=signal_urls,
        signal_source=signal_source,
        timeout=args.timeout,
        token=env.get(TOKEN_ENV) or None,
        service_urls=service_urls,
    )
    for name in (
        "JWT_SECRET",
        "JWT_SECRET_PREVIOUS",
        "JWT_PUBLIC_KEY",
        "TURN_SECRET",
        "TURN_SECRET_PREVIOUS",
        "TWILIO_API_SECRET",
        "REDIS_PASSWORD",
        "LOG_PSEUDONYM_KEY",
        TOKEN_ENV,
    ):
        target.remember(env.get(name))
        # The same secrets given as files (`*_FILE`) are scrubbed from the output too.
        path = env.get(f"{name}_FILE")
        if path:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                target.remember(Path(path).read_text().removesuffix("\n") or None)
    for name in ("REDIS_URL", "RELAY_REDIS_URL", "DIRECTORY_URL"):
        target.remember(_userinfo_password(env.get(name)))
    return target


_USERINFO = re.compile(r"(//)[^/@]*@")


def redact_url(url: str) -> str:
    """A URL without its user-info (Redis and MongoDB URLs may carry a password)."""
    return _USERINFO.sub(r"\1", url)


def _userinfo_password(url: str | None) -> str | None:
    if not url:
        return None
    match = re.search(r"//([^/@]*)@", url)
    if not match:
        return None
    return match.group(1).partition(":")[2] or None
