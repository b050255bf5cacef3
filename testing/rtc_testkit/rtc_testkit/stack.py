"""One stack description and one way to start it: redis-server, optionally coturn, N ice-service,
N signal-service and N relay-service processes, and the nginx gateway in front of them.

    spec = StackSpec(ice=1, signal=2, relay=1, coturn=True, env={"ALLOWED_ORIGINS": ORIGIN})
    with start_stack(spec, tmp_path) as stack:
        stack.add_contacts(a, b)
        ... stack.gateway.url, stack.signals[1].url, stack.redis.client() ...

Every process is started one after another (a free port is only taken once its process is up)
and stopped in reverse order when the block ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rtc_common.directory import REDIS_FLAGS_KEY
from rtc_gateway import GatewayLimits
from rtcctl.local import StackPorts

from .contract import JWT_SECRET, TURN_SECRET
from .processes import Coturn, Gateway, Process, ProcessGroup, RedisServer, ServiceProcess

MODULES = {"ice": "ice_service", "signal": "signal_service", "relay": "relay_service"}


def base_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """What every service needs to start against `redis_url` with the kit's secrets."""
    env = {
        "REDIS_URL": redis_url,
        "JWT_SECRET": JWT_SECRET,
        "ALLOW_BEARER_AUTH": "true",
        "RTC_PROVIDER": "coturn",
        "TURN_SECRET": TURN_SECRET,
        "TURN_URIS": "turn:127.0.0.1:3478?transport=udp",
        "LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


def signal_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """signal-service's: fast presence heartbeats and flag reads, so kill -9 cases stay short."""
    env = base_env(redis_url)
    env.update(
        {
            "PRESENCE_HEARTBEAT_SECONDS": "0.5",
            "PRESENCE_INSTANCE_TTL_SECONDS": "2",
            "FLAG_CACHE_SECONDS": "0.2",
        }
    )
    env.update(overrides)
    return env


def add_contacts(server: RedisServer, a: str, b: str) -> None:
    """Mutual contacts in the Redis directory (what `rtcctl contacts add` writes)."""
    client = server.client()
    client.sadd(f"rtc:contacts:{a}", b)
    client.sadd(f"rtc:contacts:{b}", a)


def set_flag(server: RedisServer, key: str = "rtc.ice", enabled: bool = True) -> None:
    """A feature flag in the Redis directory."""
    server.client().hset(REDIS_FLAGS_KEY, key, "1" if enabled else "0")


@dataclass(frozen=True)
class StackSpec:
    """What to start. `env` goes to every service (after the kit's defaults), `ice_env`,
    `signal_env` and `relay_env` to that kind only (last); `name` prefixes the process names and
    signal INSTANCE_IDs. With coturn, every service's TURN_URIS points at it (and ice-service's
    TURN_ADMIN_ADDRESS at its CLI). The `rtc.ice` flag
    is on when there is an ice-service; `flags` sets others (or turns it off)."""

    ice: int = 0
    signal: int = 0
    relay: int = 0
    coturn: bool = False
    gateway: bool = True
    env: Mapping[str, str] = field(default_factory=dict)
    ice_env: Mapping[str, str] = field(default_factory=dict)
    signal_env: Mapping[str, str] = field(default_factory=dict)
    relay_env: Mapping[str, str] = field(default_factory=dict)
    gateway_limits: GatewayLimits | None = None
    # The gateway's port, when the services must know it first (ALLOWED_ORIGINS); default free.
    gateway_port: int | None = None
    redis_appendonly: bool = False
    flags: Mapping[str, bool] = field(default_factory=dict)
    contacts: tuple[tuple[str, str], ...] = ()
    name: str = ""


@dataclass
class Stack:
    spec: StackSpec
    root: Path
    group: ProcessGroup
    redis: RedisServer
    ices: list[ServiceProcess] = field(default_factory=list)
    signals: list[ServiceProcess] = field(default_factory=list)
    relays: list[ServiceProcess] = field(default_factory=list)
    turn: Coturn | None = None
    front: Gateway | None = None
    prepare: Callable[[Process], None] | None = None

    @property
    def coturn(self) -> Coturn:
        if self.turn is None:
            raise AttributeError("this stack has no coturn")
        return self.turn

    @property
    def gateway(self) -> Gateway:
        if self.front is None:
            raise AttributeError("this stack has no gateway")
        return self.front

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def ice(self) -> ServiceProcess:
        return self.ices[0]

    @property
    def signal(self) -> ServiceProcess:
        return self.signals[0]

    @property
    def relay(self) -> ServiceProcess:
        return self.relays[0]

    @property
    def services(self) -> list[ServiceProcess]:
        return [*self.ices, *self.signals, *self.relays]

    def ports(self) -> StackPorts:
        return StackPorts(
            gateway=self.front.port if self.front else 0,
            redis=self.redis.port,
            turn=self.turn.port if self.turn else 0,
            ice=[p.port for p in self.ices],
            signal=[p.port for p in self.signals],
            relay=[p.port for p in self.relays],
        )

    def add_contacts(self, a: str, b: str) -> None:
        add_contacts(self.redis, a, b)

    def set_flag(self, key: str = "rtc.ice", enabled: bool = True) -> None:
        set_flag(self.redis, key, enabled)

    def env(self, kind: str | None = None, **overrides: str) -> dict[str, str]:
        """A service's environment in this stack: the kit's defaults (signal_env's for signal),
        the spec's `env`, the kind's own, then `overrides`."""
        common = dict(self.spec.env)
        if self.turn is not None:
            common = {"TURN_URIS": self.turn.uris, **common}
            if kind == "ice":  # where revoked wallets' TURN sessions are ended
                common = {
                    "TURN_ADMIN_ADDRESS": self.turn.cli_address,
                    "TURN_ADMIN_PASSWORD": self.turn.cli_password,
                    **common,
                }
        own = {
            "ice": self.spec.ice_env,
            "signal": self.spec.signal_env,
            "relay": self.spec.relay_env,
        }
        merged = {**common, **own.get(kind or "", {}), **overrides}
        if kind == "signal":
            return signal_env(self.redis.url, **merged)
        return base_env(self.redis.url, **merged)

    def start(self, process: Process) -> None:
        """Start a process of this stack (stopped with it)."""
        if self.prepare is not None:
            self.prepare(process)
        self.group.start(process)

    def start_service(
        self, kind: str, name: str, env: Mapping[str, str] | None = None
    ) -> ServiceProcess:
        """One more `kind` service (not behind the gateway), with `env` or this stack's."""
        process = ServiceProcess(
            MODULES[kind], self.root / name, env if env is not None else self.env(kind), name=name
        )
        self.start(process)
        return process

    def start_gateway(self, name: str = "gateway", limits: GatewayLimits | None = None) -> Gateway:
        gateway = Gateway(
            self.root / name,
            ice=[p.port for p in self.ices],
            signal=[p.port for p in self.signals],
            relay=[p.port for p in self.relays],
            limits=limits,
            port=self.spec.gateway_port,
        )
        self.start(gateway)
        return gateway


def _names(kind: str, count: int, prefix: str) -> list[str]:
    if count == 1:
        return [f"{prefix}{kind}"]
    return [f"{prefix}{kind}{n}" for n in range(1, count + 1)]


@contextlib.contextmanager
def start_stack(
    spec: StackSpec, root: Path, *, prepare: Callable[[Process], None] | None = None
) -> Iterator[Stack]:
    """Start what `spec` describes under `root`; `prepare` sees each process before it starts
    (to pin it to a CPU, move it into a network namespace...)."""
    with ProcessGroup() as group:
        redis = RedisServer(root / f"{spec.name}redis", appendonly=spec.redis_appendonly)
        stack = Stack(spec, root, group, redis, prepare=prepare)
        stack.start(redis)
        if spec.ice:
            stack.set_flag("rtc.ice")
        for key, enabled in spec.flags.items():
            stack.set_flag(key, enabled)
        for a, b in spec.contacts:
            stack.add_contacts(a, b)
        if spec.coturn:
            stack.turn = Coturn(root / f"{spec.name}coturn")
            stack.start(stack.turn)
        for name in _names("ice", spec.ice, spec.name):
            stack.ices.append(stack.start_service("ice", name))
        for name in _names("signal", spec.signal, spec.name):
            # An INSTANCE_ID in the spec's signal_env wins over the process name.
            env = stack.env("signal", **{"INSTANCE_ID": name, **spec.signal_env})
            stack.signals.append(stack.start_service("signal", name, env))
        for name in _names("relay", spec.relay, spec.name):
            stack.relays.append(stack.start_service("relay", name))
        if spec.gateway:
            stack.front = stack.start_gateway(f"{spec.name}gateway", spec.gateway_limits)
        yield stack


@contextlib.asynccontextmanager
async def start_stack_async(
    spec: StackSpec, root: Path, *, prepare: Callable[[Process], None] | None = None
) -> AsyncIterator[Stack]:
    """`start_stack` from a coroutine: started and stopped in a thread, so that what this loop
    serves (the Twilio stub, say) answers the services meanwhile."""
    started = start_stack(spec, root, prepare=prepare)
    stack = await asyncio.to_thread(started.__enter__)
    try:
        yield stack
    finally:
        await asyncio.to_thread(started.__exit__, None, None, None)
