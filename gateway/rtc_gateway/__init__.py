"""The gateway's settings and nginx.conf renderer: one library for `rtcctl local` (make run,
the tests, the benchmarks) and the gateway image (gateway/entrypoint.py). Standard library only:
the image runs it with Debian's python3."""

from .render import TEMPLATE, render_conf, server_lines
from .settings import GatewayConfigError, GatewayLimits, ImageSettings, check_affinity_key

__all__ = [
    "TEMPLATE",
    "GatewayConfigError",
    "GatewayLimits",
    "ImageSettings",
    "check_affinity_key",
    "render_conf",
    "server_lines",
]
