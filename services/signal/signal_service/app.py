"""signal-service: `create_app(settings)`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rtc_common.auth import Authenticator
from rtc_common.bus import AddressedBus
from rtc_common.clients import REDIS_KEY, redis_context
from rtc_common.directory import DIRECTORY_KEY, AccessCache, directory_context
from rtc_common.keys import add_dependency
from rtc_common.middlewares import refuse_websocket_compression
from rtc_common.relay_store import RelayStore
from rtc_common.revocation import revocations_context
from rtc_common.tasks import stop_task
from rtc_common.web import create_base_app

from .announcer import Announcer
from .metrics import PUBSUB_LISTENER_UP, PUBSUB_PROBE_FAILURES, REAPED
from .namespace import DEPS_KEY, NAMESPACE_KEY, SignalNamespace
from .presence import LocalSocket, Presence
from .pubsub import ObservedRedisManager
from .server import SignalServer
from .settings import SignalSettings
from .sockets import SignalDeps

log = logging.getLogger("signal.app")

MANAGER_KEY = web.AppKey("signal_manager", ObservedRedisManager)
SIO_KEY = web.AppKey("signal_sio", SignalServer)
ANNOUNCER_KEY = web.AppKey("signal_announcer", Announcer)
# A full presence reconciliation at least every this many heartbeats (5 s each: once a minute).
RECONCILE_EVERY = 12
RELAY_REDIS_KEY = web.AppKey("signal_relay_redis", Redis)
SIGNAL_SETTINGS_KEY = web.AppKey("signal_settings", SignalSettings)


async def _signal_dependencies(app: web.Application) -> AsyncIterator[None]:
    settings = app[SIGNAL_SETTINGS_KEY]
    redis = app[REDIS_KEY]
    presence = Presence(redis, settings.instance_id, settings.presence_instance_ttl_seconds)
    bus = AddressedBus(redis, settings.socketio_channel, settings.instance_id)
    app[DEPS_KEY] = SignalDeps(
        redis=redis,
        presence=presence,
        bus=bus,
        access=AccessCache(app[DIRECTORY_KEY], ttl=settings.flag_cache_seconds),
        relay=RelayStore(
            app[RELAY_REDIS_KEY], idempotency_seconds=settings.relay_idempotency_seconds
        ),
    )
    sio = app[SIO_KEY]
    manager = app[MANAGER_KEY]
    manager.bus = bus
    # Subscribe now, not at the first client: /readyz must prove the listener before traffic.
    sio.manager_initialized = True
    manager.initialize()

    async def pubsub_ready() -> None:
        await manager.probe(wait=1.0)

    add_dependency(app, "pubsub", pubsub_ready, required=True)
    watchdog = asyncio.create_task(_watchdog(app))
    yield
    await stop_task(watchdog)
    # Leave quickly and let the other instances' reapers settle presence for our sockets. A
    # second try when Redis did not answer the first (a stall of a second or two, as compose-test
    # saw once while podman stopped a container); otherwise the reapers forget this instance
    # after PRESENCE_INSTANCE_TTL_SECONDS.
    for attempt in (1, 2):
        try:
            await presence.leave()
            break
        except RedisError as exc:
            log.warning(
                "presence leave failed", extra={"error": type(exc).__name__, "try": attempt}
            )
    if manager.thread is not None:
        with contextlib.suppress(Exception):
            await stop_task(manager.thread)


async def _close_sockets(app: web.Application) -> None:
    """On SIGTERM, close every client socket before aiohttp waits for its handlers.

    From aiohttp's pre-shutdown on the server ignores what clients send (their websocket close
    included), so an open socket would hold the process until it is killed. Closed here, each
    socket takes the normal disconnect path (presence updated, contacts told at once) while
    Redis is still open. First the instance stops taking addressed messages and lets those
    already sent here out, so that no signal is acked towards a socket that is closing.
    """
    sio = app[SIO_KEY]
    with contextlib.suppress(Exception):
        # Signals already routed here reach the sockets before they close (see drain()).
        await app[MANAGER_KEY].drain()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(3):
            if sio.eio.sockets:
                await sio.eio.disconnect()
        async with asyncio.timeout(2):
            await sio.shutdown()


async def _watchdog(app: web.Application) -> None:
    """Heartbeat, reaper of dead instances, and the pub/sub self-probe, every heartbeat period."""
    settings = app[SIGNAL_SETTINGS_KEY]
    deps = app[DEPS_KEY]
    namespace = app[NAMESPACE_KEY]
    announcer = app[ANNOUNCER_KEY]
    manager = app[MANAGER_KEY]
    failed_probes = 0
    beats = 0
    while True:
        try:
            held = await deps.presence.heartbeat()
            beats += 1
            if held != len(await _local_sockets(namespace)) or beats % RECONCILE_EVERY == 0:
                # Redis and this instance disagree: Redis lost our sockets (restart without
                # persistence, or we were reaped while paused) or kept ones whose disconnect it
                # never heard of (Redis was down then). Make Redis match, and announce changes.
                came, went = await deps.presence.reconcile(lambda: _local_sockets(namespace))
                for wallet in came:
                    await announcer.announce(wallet, online=True)
                for wallet in went:
                    await announcer.announce(wallet, online=False)
            await announcer.retry_pending()
            for wallet in await deps.presence.reap_dead_instances():
                REAPED.inc()
                await announcer.announce(wallet, online=False)
        except RedisError as exc:
            log.warning("presence heartbeat failed", extra={"error": type(exc).__name__})
        except Exception:
            log.exception("presence watchdog error")
        await namespace.flush_refusals()
        try:
            await manager.probe(wait=1.0)
            failed_probes = 0
            PUBSUB_LISTENER_UP.set(1)
        except Exception as exc:
            PUBSUB_PROBE_FAILURES.inc()
            PUBSUB_LISTENER_UP.set(0)
            # Only failures while subscribed count: those of an outage (the listener knows it
            # lost Redis) would otherwise restart the subscription just made once Redis is back.
            failed_probes = failed_probes + 1 if manager.subscribed else 0
            log.warning("pub/sub self-probe failed", extra={"error": type(exc).__name__})
            if failed_probes >= 2:
                # Subscribed yet deaf: the silent listener failure. Start the subscription over.
                await manager.resubscribe()
        await asyncio.sleep(settings.presence_heartbeat_seconds)


async def _local_sockets(namespace: SignalNamespace) -> list[LocalSocket]:
    sockets = []
    for sid, _eio in list(namespace.server.manager.get_participants("/", None)):
        state = await namespace.socket_state(sid)
        if state is not None:
            sockets.append(LocalSocket(sid, state.wallet, state.rtc))
    return sockets


def _library_loggers_to_root() -> None:
    """python-socketio/engineio attach their own plain StreamHandler (which prints tracebacks) to
    their loggers unless a level is already set. Setting the level they would use (ERROR) keeps
    that handler off, so their records go only through the service's JSON handler on the root
    logger, which writes the exception type and never a stack trace."""
    for name in ("socketio.server", "engineio.server"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


def create_app(settings: SignalSettings) -> web.Application:
    authenticator = Authenticator(settings)
    _library_loggers_to_root()
    app = create_base_app(settings, authenticator)
    if not settings.signal_ws_compression:
        app.middlewares.append(refuse_websocket_compression)
    app[SIGNAL_SETTINGS_KEY] = settings
    manager = ObservedRedisManager(
        settings.redis_url, channel=settings.socketio_channel, instance_id=settings.instance_id
    )
    sio = SignalServer(
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=list(settings.allowed_origins),
        # Room for the largest SDP plus the envelope; anything larger is dropped by engine.io.
        max_http_buffer_size=settings.signal_max_sdp_bytes * 2 + 16 * 1024,
        logger=False,
        engineio_logger=False,
    )
    announcer = Announcer(settings, lambda: app[DEPS_KEY], sio)
    namespace = SignalNamespace(settings, authenticator, lambda: app[DEPS_KEY], announcer)
    sio.register_namespace(namespace)
    authenticator.revocations.subscribe(namespace.on_revocation)
    sio.attach(app, socketio_path="socket.io")
    app[SIO_KEY] = sio
    app[MANAGER_KEY] = manager
    app[NAMESPACE_KEY] = namespace
    app[ANNOUNCER_KEY] = announcer
    app.cleanup_ctx.append(redis_context(REDIS_KEY, settings.redis_url, required=True))
    app.cleanup_ctx.append(revocations_context(REDIS_KEY))
    app.cleanup_ctx.append(
        # Not required: only relay:ack needs it (answered `unavailable` meanwhile).
        redis_context(
            RELAY_REDIS_KEY, settings.effective_relay_redis_url, "relay_store", required=False
        )
    )
    app.cleanup_ctx.append(directory_context(settings))
    app.cleanup_ctx.append(_signal_dependencies)
    app.on_shutdown.append(_close_sockets)
    return app
