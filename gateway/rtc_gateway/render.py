"""nginx.conf from the package's template: the one renderer of the local stack and the image."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from .settings import (
    GatewayLimits,
    check_affinity_key,
    check_listen,
    check_path,
    check_workers,
)

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


def server_lines(addresses: Iterable[str], options: str = "") -> str:
    """`server` lines of an upstream block, one per `address:port`."""
    suffix = f" {options}" if options else ""
    return "\n".join(f"        server {address}{suffix};" for address in addresses)


def render_conf(
    *,
    run_dir: Path,
    listen: str,
    workers: str,
    ice_servers: str,
    signal_servers: str,
    relay_servers: str,
    web_root: Path,
    limits: GatewayLimits,
    affinity_key: str = "$remote_addr",
    daemon: bool = False,
    extra_upstreams: str = "",
    extra_locations: str = "",
    template: Path = TEMPLATE,
) -> str:
    """nginx.conf: every path it writes points into `run_dir`.

    `*_servers`: the `server` lines of each upstream block (see `server_lines`).
    `affinity_key`: the nginx variable hashed over the signal upstreams (Socket.IO affinity).
    `web_root`: the folder served at `/demo/` (the web SDK and the demo page).
    `extra_upstreams`, `extra_locations`: nginx `upstream` and `location` blocks added to the
    config (the benchmarks' baselines); empty in the product.
    """
    values = {
        "run_dir": check_path("GATEWAY_RUN_DIR", str(run_dir)),
        "log_dir": str(run_dir / "logs"),
        "listen": check_listen(listen),
        "daemon": "on" if daemon else "off",
        "workers": check_workers(workers),
        "ice_servers": ice_servers,
        "signal_servers": signal_servers,
        "relay_servers": relay_servers,
        "affinity_key": check_affinity_key(affinity_key),
        "web_root": check_path("GATEWAY_WEB_ROOT", str(web_root)),
        "extra_upstreams": extra_upstreams,
        "extra_locations": extra_locations,
        **limits.placeholders(),
    }
    # One pass: a value is never searched for placeholders itself.
    return _PLACEHOLDER.sub(lambda match: values[match[1]], template.read_text())
