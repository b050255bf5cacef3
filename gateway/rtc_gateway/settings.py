"""The gateway's settings (the `GATEWAY_*` variables; docs/reference.md), checked once.

Every value here is pasted into nginx.conf, so each is checked against a strict shape before:
a value that passed can neither add a directive nor change another one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


class GatewayConfigError(ValueError):
    """A refused setting; the message names the variable, what it must be, and the value."""

    def __init__(self, variable: str, expected: str, value: object):
        self.variable = variable
        super().__init__(f"{variable} must be {expected}, got: {value!r}")


_COUNT = re.compile(r"[0-9]{1,7}")
_COUNT_MAX = 1_000_000
_NGINX_SIZE = re.compile(r"[1-9][0-9]{0,6}[km]?")
_NGINX_TIME = re.compile(r"[1-9][0-9]{0,6}(?:ms|s|m)?")
_OFF = ("off", "0")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_AFFINITY_KEY = re.compile(r"\$[a-z_]+")
_WORKERS = re.compile(r"auto|[1-9][0-9]{0,3}")
_LISTEN = re.compile(r"(?:(?:\*|[0-9A-Za-z.-]+|\[[0-9A-Fa-f:]+\]):)?([0-9]{1,5})")
_UPSTREAM = re.compile(r"([0-9A-Za-z._-]+|\[[0-9A-Fa-f:]+\]):([0-9]{1,5})")
# Characters that would end or bend an nginx directive (or expand a variable) in a path.
_UNSAFE_PATH = re.compile(r"[\s;{}'\"$\\#]")
_SECONDS = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,3})?")
# Plain IPv4 or IPv6 (no embedded IPv4, no zone), an optional prefix. A "::" stands for two
# groups at least (RFC 5952): nginx 1.22 cannot parse a trailing one that stands for one group
# before a prefix.
_PROXY_NETWORK = re.compile(r"(?:[0-9.]+|[0-9a-f:]+)(?:/[0-9]{1,3})?")
_PROXY_NETWORK_SHAPE = (
    "comma-separated IPv4/IPv6 addresses or CIDRs (no host bits set, prefix from 1, "
    "'::' for two groups at least)"
)

AFFINITY_KEY_SHAPE = (
    r"one nginx variable matching ^\$[a-z_]+$ (e.g. $remote_addr, $http_x_forwarded_for)"
)


def check_affinity_key(value: str) -> str:
    """The nginx variable hashed over the signal replicas: one `$name`, nothing else."""
    if not _AFFINITY_KEY.fullmatch(value):
        raise GatewayConfigError("GATEWAY_AFFINITY_KEY", AFFINITY_KEY_SHAPE, value)
    return value


def check_workers(value: str) -> str:
    if not _WORKERS.fullmatch(value):
        raise GatewayConfigError("GATEWAY_WORKERS", "auto or a number of nginx workers", value)
    return value


def _port(text: str) -> bool:
    return 1 <= int(text) <= 65535


def check_listen(value: str) -> str:
    """nginx's `listen`: a port, or an address (or `*`) and a port."""
    match = _LISTEN.fullmatch(value)
    if not match or not _port(match[1]):
        raise GatewayConfigError(
            "GATEWAY_LISTEN", "a port or address:port such as 8080 or 127.0.0.1:8080", value
        )
    return value


def check_path(variable: str, value: str) -> str:
    if not value or _UNSAFE_PATH.search(value):
        raise GatewayConfigError(
            variable, "a path without whitespace, quotes, ;, {, }, #, \\ or $", value
        )
    return value


def check_upstream(variable: str, value: str) -> tuple[str, int]:
    """`host:port` -> (host, port); an IPv6 host in brackets, returned without them."""
    match = _UPSTREAM.fullmatch(value)
    if not match or not _port(match[2]):
        raise GatewayConfigError(variable, "host:port such as ice-service:8101", value)
    return match[1].strip("[]"), int(match[2])


def check_resolve_seconds(value: str) -> float:
    """GATEWAY_RESOLVE_SECONDS: how often the image looks the upstream names up again; 0: never."""
    if not _SECONDS.fullmatch(value):
        raise GatewayConfigError(
            "GATEWAY_RESOLVE_SECONDS", "a number of seconds (0: never look again)", value
        )
    return float(value)


def _check_proxy_network(entry: str) -> None:
    """One GATEWAY_REAL_IP_FROM entry: an address or a network without host bits (a mistyped
    mask would trust more than meant), never /0 (every client could pick its address)."""
    try:
        address = entry.partition("/")[0]
        if not _PROXY_NETWORK.fullmatch(entry):
            raise ValueError(entry)
        if "::" in address and len([group for group in address.split(":") if group]) > 6:
            raise ValueError(entry)
        if ipaddress.ip_network(entry).prefixlen == 0:
            raise ValueError(entry)
    except ValueError:
        raise GatewayConfigError("GATEWAY_REAL_IP_FROM", _PROXY_NETWORK_SHAPE, entry) from None


@dataclass(frozen=True)
class GatewayLimits:
    """The gateway's per-client limits, sizes, timeouts, real-IP sources and demo switch.

    `rate_limit` (requests per second per client address, bursts up to `rate_burst` more) and
    `conn_limit` (open connections per client address) are `None` when switched off.
    `real_ip_from`: the load balancers in front, whose X-Forwarded-For names the client.
    `demo`: serve /demo/ (on in the local stack; the image's default is off).
    Sizes and times in nginx's units, lower case.
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
    real_ip_from: tuple[str, ...] = ()
    demo: bool = True

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
        "real_ip_from": "GATEWAY_REAL_IP_FROM",
        "demo": "GATEWAY_DEMO",
    }
    _COUNTS: ClassVar[dict[str, str]] = {
        "rate_limit": f"a number from 1 to {_COUNT_MAX}, or off",
        "conn_limit": f"a number from 1 to {_COUNT_MAX}, or off",
        "rate_burst": f"a number from 1 to {_COUNT_MAX}",
    }
    _SIZES: ClassVar[tuple[str, ...]] = ("max_body_size", "relay_max_body_size", "max_header_size")
    _TIMES: ClassVar[tuple[str, ...]] = (
        "client_header_timeout",
        "client_body_timeout",
        "send_timeout",
    )

    def __post_init__(self) -> None:
        for name, expected in self._COUNTS.items():
            value = getattr(self, name)
            off = value is None and name != "rate_burst"
            if not off and not (isinstance(value, int) and 1 <= value <= _COUNT_MAX):
                raise GatewayConfigError(self.ENV[name], expected, value)
        for name in self._SIZES:
            if not _NGINX_SIZE.fullmatch(getattr(self, name)):
                raise GatewayConfigError(
                    self.ENV[name], "an nginx size such as 128k or 1m", getattr(self, name)
                )
        for name in self._TIMES:
            if not _NGINX_TIME.fullmatch(getattr(self, name)):
                raise GatewayConfigError(
                    self.ENV[name], "an nginx time such as 10s or 500ms", getattr(self, name)
                )
        for entry in self.real_ip_from:
            _check_proxy_network(entry)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, demo_default: bool = True) -> GatewayLimits:
        """Defaults for unset or empty variables (case and surrounding blanks do not matter);
        `off` (or 0) switches a per-address limit off. `demo_default`: GATEWAY_DEMO unset."""
        values: dict[str, Any] = {"demo": demo_default}
        for name, variable in cls.ENV.items():
            given = environ.get(variable, "").strip()
            raw = given.lower()
            if not raw:
                continue
            if name == "real_ip_from":
                values[name] = tuple(p.strip() for p in raw.split(",") if p.strip())
            elif name == "demo":
                if raw not in _TRUE + _FALSE:
                    raise GatewayConfigError(variable, "true or false", given)
                values[name] = raw in _TRUE
            elif name in cls._COUNTS:
                if name != "rate_burst" and raw in _OFF:
                    values[name] = None
                    continue
                if not _COUNT.fullmatch(raw) or not 1 <= int(raw) <= _COUNT_MAX:
                    raise GatewayConfigError(variable, cls._COUNTS[name], given)
                values[name] = int(raw)
            else:
                values[name] = raw
        return cls(**values)

    @classmethod
    def off(cls) -> GatewayLimits:
        """No per-address limits (benchmarks from one address); sizes and timeouts stay."""
        return cls(rate_limit=None, conn_limit=None)

    def placeholders(self) -> dict[str, str]:
        real_ip = [f"    set_real_ip_from {entry};" for entry in self.real_ip_from]
        if real_ip:
            real_ip += ["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;"]
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
            "real_ip": "\n".join(real_ip),
            "demo": "on" if self.demo else "off",
        }


@dataclass(frozen=True)
class Upstream:
    """One service as the image finds it: a name that resolves to every replica."""

    variable: str
    host: str
    port: int


@dataclass(frozen=True)
class ImageSettings:
    """What the image's entrypoint reads: `GATEWAY_*` (limits included), the upstream names,
    where nginx and the template are. Empty counts as unset."""

    limits: GatewayLimits
    ice: Upstream
    signal: Upstream
    relay: Upstream
    listen: str = "8080"
    workers: str = "auto"
    affinity_key: str = "$remote_addr"
    resolve_seconds: float = 10.0
    run_dir: Path = Path("/tmp/rtc-gateway")  # noqa: S108 (the container's own tmpfs)
    web_root: Path = Path("/usr/share/rtc-gateway/web")
    template: Path | None = None  # None: the package's own
    nginx: str = "/usr/sbin/nginx"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ImageSettings:
        def get(name: str, default: str) -> str:
            return environ.get(name, "").strip() or default

        def upstream(variable: str, default: str) -> Upstream:
            return Upstream(variable, *check_upstream(variable, get(variable, default)))

        template = get("GATEWAY_TEMPLATE", "")
        return cls(
            affinity_key=check_affinity_key(get("GATEWAY_AFFINITY_KEY", "$remote_addr")),
            limits=GatewayLimits.from_env(environ, demo_default=False),
            ice=upstream("ICE_UPSTREAM", "ice-service:8101"),
            signal=upstream("SIGNAL_UPSTREAM", "signal-service:8201"),
            relay=upstream("RELAY_UPSTREAM", "relay-service:8301"),
            listen=check_listen(get("GATEWAY_LISTEN", cls.listen)),
            workers=check_workers(get("GATEWAY_WORKERS", cls.workers)),
            resolve_seconds=check_resolve_seconds(get("GATEWAY_RESOLVE_SECONDS", "10")),
            run_dir=Path(check_path("GATEWAY_RUN_DIR", get("GATEWAY_RUN_DIR", str(cls.run_dir)))),
            web_root=Path(
                check_path("GATEWAY_WEB_ROOT", get("GATEWAY_WEB_ROOT", str(cls.web_root)))
            ),
            template=Path(template) if template else None,
            nginx=get("NGINX", cls.nginx),
        )
