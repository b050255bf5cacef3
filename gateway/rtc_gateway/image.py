"""The gateway image at start (called by its entrypoint script, gateway/entrypoint.py).

Renders nginx.conf with the current address of every replica of each service, checks it with
`nginx -t`, and runs nginx in the foreground. Every GATEWAY_RESOLVE_SECONDS a background process
looks the names up again; when the set of addresses changed (a service scaled with
`docker compose up --scale`, a replica restarted with a new address) it re-renders and reloads
nginx gracefully. nginx before 1.27.3 (Debian has 1.22) resolves upstream names only when it
starts, and has no `resolve` parameter for upstream servers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from .render import TEMPLATE, render_conf, server_lines
from .settings import GatewayConfigError, ImageSettings, Upstream

# A refused setting: the exit status of a usage error (sysexits' EX_USAGE).
EXIT_BAD_SETTING = 64


def log(message: str) -> None:
    print(f"gateway: {message}", file=sys.stderr, flush=True)


# The last addresses each name resolved to: a look-up that fails for a while (the DNS server
# slow or an answer lost, EAI_AGAIN) keeps them; only "no such name" (every replica gone) or an
# answer empties the set. Otherwise one lost answer took a service out of the gateway until the
# next look-up (compose-test's rolling check saw "ice 0" for 2 s).
_known: dict[str, list[str]] = {}
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def resolve(upstream: Upstream) -> list[str]:
    """Every address the name resolves to (every replica of a compose service), sorted so that
    an unchanged set renders the same file; none when it does not resolve (yet)."""
    try:
        infos = socket.getaddrinfo(upstream.host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in _NO_SUCH_NAME:
            _known.pop(upstream.host, None)
            return []
        return _known.get(upstream.host, [])
    except OSError:
        return _known.get(upstream.host, [])
    addresses = sorted({str(info[4][0]) for info in infos})
    _known[upstream.host] = addresses
    return addresses


# ice and relay replicas are interchangeable for every request: one that fails is never set
# aside (max_fails=0), the request just goes to the next (proxy_next_upstream). Setting aside
# after one failure (max_fails=1) set aside the last good replica too during a rolling restart,
# for its fail_timeout: nginx then had no live upstream and answered 503 (compose-test measured).
STATELESS_SERVER = "max_fails=0"
# Socket.IO sessions stick to a replica (hash): a failed one is set aside briefly.
STICKY_SERVER = "max_fails=1 fail_timeout=5s"


def servers(upstream: Upstream, options: str = STICKY_SERVER) -> tuple[str, int]:
    """The `server` lines of one upstream, and how many are live. A name that does not resolve
    yet gets a placeholder marked down: nginx answers 503 until a later look-up finds it."""
    addresses = resolve(upstream)
    if not addresses:
        down = f"server 127.0.0.1:{upstream.port} down;  # {upstream.host} does not resolve yet"
        return f"        {down}", 0
    bracketed = [f"[{a}]" if ":" in a else a for a in addresses]
    lines = server_lines((f"{a}:{upstream.port}" for a in bracketed), options)
    return lines, len(addresses)


def render(settings: ImageSettings) -> tuple[str, str]:
    """nginx.conf and a summary of its upstreams ("ice 1, signal 3, relay 1")."""
    (ice, n_ice), (signal, n_signal), (relay, n_relay) = (
        servers(settings.ice, STATELESS_SERVER),
        servers(settings.signal),
        servers(settings.relay, STATELESS_SERVER),
    )
    text = render_conf(
        run_dir=settings.run_dir,
        listen=settings.listen,
        workers=settings.workers,
        ice_servers=ice,
        signal_servers=signal,
        relay_servers=relay,
        web_root=settings.web_root,
        limits=settings.limits,
        affinity_key=settings.affinity_key,
        template=settings.template or TEMPLATE,
    )
    return text, f"ice {n_ice}, signal {n_signal}, relay {n_relay}"


def _nginx(settings: ImageSettings, conf: Path, *args: str) -> list[str]:
    return [settings.nginx, *args, "-e", "stderr", "-c", str(conf), "-p", f"{settings.run_dir}/"]


def follow_upstreams(settings: ImageSettings, conf: Path) -> None:
    """Forever: look the names up again, and reload nginx with a changed set that it accepts."""
    following = conf.with_name(conf.name + ".next")
    while True:
        time.sleep(settings.resolve_seconds)
        try:
            text, summary = render(settings)
            if text == conf.read_text():
                continue
            following.write_text(text)
            check = subprocess.run(_nginx(settings, following, "-t", "-q"), check=False)
            if check.returncode != 0:
                continue
            following.replace(conf)
            log(f"upstreams changed: {summary}; reloading")
            reload = subprocess.run(_nginx(settings, conf, "-s", "reload"), check=False)
            if reload.returncode != 0:
                log("reload failed")
        except OSError as exc:
            log(f"re-rendering failed: {exc}")


def _start_follower(settings: ImageSettings, conf: Path) -> None:
    """The look-up loop in a grandchild that the init adopts: nginx, exec'd in this process
    next, is not its parent (nor reaps it)."""
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    try:
        if os.fork() == 0:
            follow_upstreams(settings, conf)
    finally:
        os._exit(0)


def main(environ: Mapping[str, str] = os.environ) -> int:
    """Renders, checks and execs nginx (returns only on a failure: the exit status)."""
    try:
        settings = ImageSettings.from_env(environ)
    except GatewayConfigError as exc:
        log(str(exc))
        return EXIT_BAD_SETTING
    logs = settings.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / "nginx-tmp").mkdir(parents=True, exist_ok=True)
    # The access log goes to the container's stdout (JSON lines), errors to stderr.
    access = logs / "gateway-access.log"
    access.unlink(missing_ok=True)
    access.symlink_to("/dev/stdout")
    conf = settings.run_dir / "nginx.conf"
    text, summary = render(settings)
    conf.write_text(text)
    log(f"upstreams: {summary}; signal affinity key {settings.affinity_key}")
    check = subprocess.run(_nginx(settings, conf, "-t", "-q"), check=False)
    if check.returncode != 0:
        return check.returncode
    if settings.resolve_seconds:
        _start_follower(settings, conf)
    sys.stderr.flush()
    os.execv(settings.nginx, _nginx(settings, conf))  # noqa: S606 (nginx takes this process)
