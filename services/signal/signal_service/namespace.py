"""The default Socket.IO namespace: handshake auth, rtc:* signaling, legacy `signal`, presence."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any

import socketio
from aiohttp import web
from redis.exceptions import RedisError
from rtc_common.auth import Authenticator, Identity, conv_id, is_valid_wallet, normalize_wallet
from rtc_common.context import request_id_var
from rtc_common.directory import AccessCache
from rtc_common.errors import ApiError, unauthorized
from rtc_common.logs import info_line, wallet_hash
from rtc_common.relay_store import RelayStore
from rtc_common.times import iso_ms
from socketio.exceptions import ConnectionRefusedError as HandshakeRefused

from .metrics import EVENT_LATENCY, LEGACY_USED, PRESENCE_CHANGES, SIGNALS, SOCKETS
from .payloads import (
    CANDIDATE_MAX_BYTES,
    CandidateSignal,
    LegacySignal,
    OfferOrAnswer,
    PayloadError,
    RelayAck,
    parse,
)
from .presence import LocalSocket, Presence
from .pubsub import PUBLISH_FAILED
from .settings import SignalSettings

log = logging.getLogger("signal.namespace")

# Whether the event being handled asked for an ack (set by SignalServer per event).
ACK_REQUESTED: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested", default=False)

DEDUP_SECONDS = 60
RTC_EVENTS = ("rtc:offer", "rtc:answer", "rtc:candidate")
LEGACY_WARNING = {
    "code": "deprecated_event",
    "event": "signal",
    "use": "rtc:offer|rtc:answer|rtc:candidate",
}


class SignalServer(socketio.AsyncServer):  # type: ignore[misc]
    """AsyncServer that tells handlers whether the client asked for an ack.

    The contract answers errors through the ack when there is one and as an `rtc:error` event
    otherwise; python-socketio does not expose that to handlers, so it is captured here.
    """

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: int | None
    ) -> None:
        token = ACK_REQUESTED.set(id is not None)
        try:
            await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            ACK_REQUESTED.reset(token)


class TokenBucket:
    """Per-socket rate: `rate` events per second, bursts up to `rate`."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class SocketState:
    wallet: str
    rtc: bool
    bucket: TokenBucket
    legacy_warned: bool = False


@dataclass
class LocalDedup:
    """signalId dedup for when Redis is unreachable (same-instance delivery still works)."""

    seen: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def first_time(self, key: str) -> bool:
        now = time.monotonic()
        while self.seen and next(iter(self.seen.values())) < now - DEDUP_SECONDS:
            self.seen.popitem(last=False)
        if key in self.seen:
            return False
        self.seen[key] = now
        return True


class Refusal(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class SignalNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(
        self,
        settings: SignalSettings,
        authenticator: Authenticator,
        deps: Callable[[], SignalDeps],
    ) -> None:
        super().__init__("/")
        self.settings = settings
        self.authenticator = authenticator
        self._deps = deps
        self._local_dedup = LocalDedup()
        self._ordering: dict[str, asyncio.Lock] = {}
        # wallet -> online: presence changes that could not be announced yet (directory down).
        self.pending_announcements: dict[str, bool] = {}
        self._handlers: dict[str, Callable[[str, str, Any], Awaitable[Any]]] = {
            **{event: self._rtc_signal for event in RTC_EVENTS},
            "signal": self._legacy_signal,
            "relay:ack": self._relay_ack,
        }

    # -- dispatch ---------------------------------------------------------------------------

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event == "connect":
            return await self.on_connect(*args)
        if event == "disconnect":
            return await self.on_disconnect(args[0])
        handler = self._handlers.get(event)
        if handler is None or not args:
            return None  # unknown events are ignored, as Socket.IO does without a handler
        sid, data = args[0], args[1] if len(args) > 1 else None
        # python-socketio runs each event in its own task; one socket's events are handled one
        # at a time, in arrival order, so an offer is never overtaken by its own candidates.
        # The lock is taken before the first await, while tasks still run in creation order.
        async with self._ordering.setdefault(sid, asyncio.Lock()):
            # One log line per event, like the access log of HTTP requests: an id for every
            # line the event causes, the outcome, the time taken and the wallet's hash.
            token = request_id_var.set(uuid.uuid4().hex)
            started = time.perf_counter()
            outcome = "unavailable"
            try:
                try:
                    result = await handler(sid, event, data)
                    outcome = _outcome_of(result)
                    return result
                except Refusal as refusal:
                    outcome = refusal.code
                    return await self._refuse(sid, event, refusal.code, _signal_id_of(data))
                except Exception:
                    log.exception("signaling handler failed", extra={"event": event})
                    return await self._refuse(sid, event, "unavailable", _signal_id_of(data))
            finally:
                elapsed = time.perf_counter() - started
                EVENT_LATENCY.labels(event).observe(elapsed)
                state = await self.socket_state(sid)
                self._log_event(event, outcome, elapsed, state.wallet if state else None)
                request_id_var.reset(token)

    @staticmethod
    def _log_event(event: str, outcome: str, elapsed: float, wallet: str | None) -> None:
        extra: dict[str, Any] = {
            "event": event,
            "outcome": outcome,
            "durationMs": round(elapsed * 1000, 2),
        }
        if wallet is not None:
            extra["walletHash"] = wallet_hash(wallet)
        info_line(log, "event", extra)

    async def _refuse(self, sid: str, event: str, code: str, signal_id: str | None) -> Any:
        SIGNALS.labels(event, code).inc()
        if ACK_REQUESTED.get():
            return {"ok": False, "error": code, "signalId": signal_id}
        await self.emit("rtc:error", {"error": code, "event": event, "signalId": signal_id}, to=sid)
        return None

    # -- connection -------------------------------------------------------------------------

    def _authenticate(self, environ: dict[str, Any], auth: Any) -> Identity:
        token = auth.get("token") if isinstance(auth, dict) else None
        if token is not None:
            if not isinstance(token, str):
                raise unauthorized("invalid token")
            return self.authenticator.bearer(token)
        cookies: dict[str, str] = {}
        try:
            parsed = SimpleCookie(environ.get("HTTP_COOKIE", ""))
            cookies = {name: morsel.value for name, morsel in parsed.items()}
        except CookieError:
            raise unauthorized("malformed cookie header") from None
        if not self.authenticator.has_cookie_token(cookies):
            raise unauthorized()
        # A browser's websocket carries cookies cross-site: the Origin check is its CSRF defence.
        if environ.get("HTTP_ORIGIN") not in self.settings.allowed_origins:
            raise ApiError("csrf_failed", "cookie authentication needs an allowed Origin")
        return self.authenticator.verifier.verify(cookies[self.settings.jwt_cookie_name], "cookie")

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        started = time.perf_counter()
        try:
            identity = self._authenticate(environ, auth)
        except ApiError as exc:
            SIGNALS.labels("connect", exc.code).inc()
            self._log_event("connect", exc.code, time.perf_counter() - started, None)
            raise HandshakeRefused(exc.code, {"error": exc.code, "message": exc.message}) from None
        rtc = not (isinstance(auth, dict) and auth.get("rtc") is False)
        state = SocketState(identity.wallet, rtc, TokenBucket(self.settings.signal_rate_per_sec))
        await self.save_session(sid, {"state": state})
        await self.enter_room(sid, f"user:{state.wallet}")
        if rtc:
            await self.enter_room(sid, f"rtc:{state.wallet}")
        SOCKETS.inc()
        first = False
        try:
            first = await self._deps().presence.register(LocalSocket(sid, state.wallet, rtc))
        except RedisError as exc:
            # The heartbeat re-registers this instance's sockets once Redis answers again.
            log.warning("presence not recorded", extra={"error": type(exc).__name__})
        SIGNALS.labels("connect", "ok").inc()
        self._log_event("connect", "ok", time.perf_counter() - started, state.wallet)
        self.server.start_background_task(self._after_connect, sid, state.wallet, first)

    async def _after_connect(self, sid: str, wallet: str, first: bool) -> None:
        deps = self._deps()
        try:
            contacts = await deps.access.mutual_contacts(wallet)
            online = await deps.presence.online(contacts)
            await self.emit("presence:snapshot", {"online": online}, to=sid)
            if first:
                await self.announce(wallet, online=True, contacts=online)
        except (ApiError, RedisError) as exc:
            log.warning("presence snapshot skipped", extra={"error": type(exc).__name__})

    async def on_disconnect(self, sid: str) -> None:
        self._ordering.pop(sid, None)
        state = await self.socket_state(sid)
        if state is None:
            return
        SOCKETS.dec()
        self._log_event("disconnect", "ok", 0.0, state.wallet)
        try:
            last = await self._deps().presence.unregister(sid, state.wallet)
        except RedisError as exc:
            log.warning("presence not updated", extra={"error": type(exc).__name__})
            return
        if last:
            await self.announce(state.wallet, online=False)

    async def announce(
        self, wallet: str, *, online: bool, contacts: list[str] | None = None
    ) -> None:
        """Tell the wallet's online mutual contacts that it came online or went offline."""
        deps = self._deps()
        try:
            if contacts is None:
                contacts = await deps.presence.online(await deps.access.mutual_contacts(wallet))
        except (ApiError, RedisError) as exc:
            # Kept for the watchdog to retry: a lost offline event would leave contacts
            # believing the wallet is online.
            self.pending_announcements[wallet] = online
            log.warning("presence change not announced yet", extra={"error": type(exc).__name__})
            return
        self.pending_announcements.pop(wallet, None)
        PRESENCE_CHANGES.labels("online" if online else "offline").inc()
        update = {"wallet": wallet, "online": online, "at": iso_ms(time.time())}
        legacy = self.settings.presence_legacy_enabled
        # One emit per event for all the contacts' rooms: one pub/sub message each, where a
        # per-contact loop published 500 (x3 with the legacy events) for 500 online contacts.
        rooms = [f"user:{contact}" for contact in contacts]
        if rooms:
            await self.emit("presence:update", update, room=rooms)
            if legacy:
                await self.emit("presence", {"wallet": wallet, "online": online}, room=rooms)
                await self.emit(
                    "user_connected" if online else "user_disconnected",
                    {"wallet": wallet},
                    room=rooms,
                )
        if legacy and contacts:
            LEGACY_USED.labels("presence").inc()
            log.warning(
                "deprecated presence events emitted (presence, user_connected/user_disconnected);"
                " clients should use presence:update",
                extra={"event": "presence", "recipients": len(contacts)},
            )

    async def socket_state(self, sid: str) -> SocketState | None:
        try:
            session = await self.get_session(sid)
        except KeyError:
            return None
        state = session.get("state")
        return state if isinstance(state, SocketState) else None

    # -- signaling --------------------------------------------------------------------------

    async def _sender(self, sid: str) -> SocketState:
        state = await self.socket_state(sid)
        if state is None:
            raise Refusal("unauthorized")
        if not state.bucket.take():
            raise Refusal("rate_limited")
        return state

    def _target(self, sender: str, raw_to: str) -> str:
        to = normalize_wallet(raw_to)
        if not is_valid_wallet(to) or to == sender:
            raise Refusal("invalid_payload")
        return to

    async def _rtc_signal(self, sid: str, event: str, data: Any) -> Any:
        state = await self._sender(sid)
        try:
            payload = parse(CandidateSignal if event == "rtc:candidate" else OfferOrAnswer, data)
        except PayloadError:
            raise Refusal("invalid_payload") from None
        to = self._target(state.wallet, payload.to)
        if payload.convId != conv_id(state.wallet, to):
            raise Refusal("invalid_payload")
        body: dict[str, Any] = {"convId": payload.convId, "to": to, "from": state.wallet}
        if isinstance(payload, OfferOrAnswer):
            if payload.sdp.type != event.removeprefix("rtc:"):
                raise Refusal("invalid_payload")
            if len(payload.sdp.sdp.encode()) > self.settings.signal_max_sdp_bytes:
                raise Refusal("invalid_payload")
            body["sdp"] = {"type": payload.sdp.type, "sdp": payload.sdp.sdp}
        else:
            candidate = payload.candidate
            if len(candidate.candidate.encode()) > CANDIDATE_MAX_BYTES:
                raise Refusal("invalid_payload")
            body["candidate"] = {
                "candidate": candidate.candidate,
                "sdpMid": candidate.sdpMid,
                "sdpMLineIndex": candidate.sdpMLineIndex,
            }
            if candidate.usernameFragment is not None:
                body["candidate"]["usernameFragment"] = candidate.usernameFragment
        signal_id = payload.signalId or uuid.uuid4().hex
        body["signalId"] = signal_id

        deps = self._deps()
        try:
            if not await deps.access.are_mutual_contacts(state.wallet, to):
                raise Refusal("forbidden")
            if not state.rtc or not await deps.access.is_rtc_enabled(state.wallet):
                raise Refusal("sender_not_rtc_eligible")
            if not await deps.access.is_rtc_enabled(to):
                raise Refusal("target_not_rtc_eligible")
        except ApiError:
            raise Refusal("unavailable") from None
        remote, first = await self._route(state.wallet, to, signal_id)
        if not first:
            SIGNALS.labels(event, "duplicate").inc()
            return {"ok": True, "signalId": signal_id, "duplicate": True}
        token = PUBLISH_FAILED.set(False)
        try:
            await self.emit(event, body, room=f"rtc:{to}")
            failed = PUBLISH_FAILED.get()
        finally:
            PUBLISH_FAILED.reset(token)
        if failed and remote:
            # Only this instance's sockets got it: not acked, and a retry is forwarded again.
            await self._forget(state.wallet, signal_id)
            raise Refusal("unavailable")
        SIGNALS.labels(event, "ok").inc()
        return {"ok": True, "signalId": signal_id}

    async def _route(self, sender: str, to: str, signal_id: str) -> tuple[bool, bool]:
        """(remote, first): does delivery cross instances, and is the sender's signalId new.
        Refuses when `to` cannot be reached now (see _reachable). One batched round trip in the
        usual case; the step-by-step path when Redis failed or a listener may be missing."""
        key = _dedup_key(sender, signal_id)
        try:
            route = await self._deps().presence.route_signal(
                to, dedup_key=key, dedup_seconds=DEDUP_SECONDS, channel=self.server.manager.channel
            )
        except RedisError:
            route = None
        if route is None or route.listening < 0:
            remote = await self._reachable(to)
            return remote, await self._first_time(sender, signal_id)
        if not route.reachable:
            raise Refusal("target_not_rtc_eligible")
        return route.remote, route.first

    async def _reachable(self, wallet: str) -> bool:
        """Refuse unless the wallet has an RTC-capable socket that a signal sent now reaches;
        True when some of them are on other instances (delivered through Redis pub/sub).

        A socket on another instance counts only while that instance's listener is subscribed:
        right after Redis restarts, a message published before it subscribed again would be
        acked and lost (pub/sub keeps nothing), so the signal is `unavailable` meanwhile.
        """
        manager = self.server.manager
        try:
            owners, registered = await self._deps().presence.rtc_owners(wallet)
            remote = owners - {self.settings.instance_id}
            if remote and not await manager.listening(remote, registered):
                raise Refusal("unavailable")
        except RedisError:
            # Redis down: this instance can still vouch for (and deliver to) its own sockets.
            if any(True for _ in manager.get_participants("/", f"rtc:{wallet}")):
                return False
            raise Refusal("unavailable") from None
        if not owners:
            raise Refusal("target_not_rtc_eligible")
        return bool(remote)

    async def _forget(self, sender: str, signal_id: str) -> None:
        key = _dedup_key(sender, signal_id)
        self._local_dedup.seen.pop(key, None)
        with contextlib.suppress(RedisError):
            await self._deps().redis.delete(key)

    async def _first_time(self, sender: str, signal_id: str) -> bool:
        key = _dedup_key(sender, signal_id)
        try:
            created = await self._deps().redis.set(key, "1", nx=True, ex=DEDUP_SECONDS)
        except RedisError:
            return self._local_dedup.first_time(key)
        return bool(created)

    async def _legacy_signal(self, sid: str, event: str, data: Any) -> Any:
        if not self.settings.rtc_signal_legacy_enabled:
            raise Refusal("legacy_disabled")
        state = await self._sender(sid)
        LEGACY_USED.labels("signal").inc()
        log.warning(
            "deprecated event used",
            extra={"event": "signal", "walletHash": wallet_hash(state.wallet)},
        )
        if not state.legacy_warned:
            state.legacy_warned = True
            await self.emit("warning", LEGACY_WARNING, to=sid)
        try:
            payload = parse(LegacySignal, data)
        except PayloadError:
            raise Refusal("invalid_payload") from None
        to = self._target(state.wallet, payload.to)
        try:
            # Strict JSON: binary attachments (TypeError) and NaN/Infinity (ValueError) are not
            # signaling data, and a JS receiver's JSON.parse would choke on NaN.
            size = len(json.dumps(payload.signal, allow_nan=False))
        except (TypeError, ValueError, RecursionError):
            raise Refusal("invalid_payload") from None
        if size > self.settings.signal_max_sdp_bytes:
            raise Refusal("invalid_payload")
        try:
            if not await self._deps().access.are_mutual_contacts(state.wallet, to):
                raise Refusal("forbidden")
        except ApiError:
            raise Refusal("unavailable") from None
        await self.emit(
            "signal", {"from": state.wallet, "signal": payload.signal}, room=f"user:{to}"
        )
        SIGNALS.labels(event, "ok").inc()
        return {"ok": True}

    async def _relay_ack(self, sid: str, event: str, data: Any) -> Any:
        """`relay:ack {ids}`: the same as POST /api/v1/relay/ack, for the caller's own queue."""
        state = await self._sender(sid)
        try:
            payload = parse(RelayAck, data)
        except PayloadError:
            raise Refusal("invalid_payload") from None
        try:
            acked = await self._deps().relay.ack(state.wallet, payload.ids)
        except RedisError:
            raise Refusal("unavailable") from None
        SIGNALS.labels(event, "ok").inc()
        return {"acked": acked}


def _dedup_key(sender: str, signal_id: str) -> str:
    """Redis key marking that `sender` sent `signal_id` (forwarded once within DEDUP_SECONDS)."""
    return f"signal:dedup:{sender}:{signal_id}"


def _outcome_of(result: Any) -> str:
    """The outcome word of a handler's answer: ok, duplicate, or the error code."""
    if isinstance(result, dict):
        if result.get("ok") is False:
            return str(result.get("error", "error"))
        if result.get("duplicate"):
            return "duplicate"
    return "ok"


def _signal_id_of(data: Any) -> str | None:
    if isinstance(data, dict):
        value = data.get("signalId")
        if isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return None


@dataclass
class SignalDeps:
    """What the namespace needs at run time, built in the app's cleanup context."""

    redis: Any
    presence: Presence
    access: AccessCache
    relay: RelayStore


SIO_KEY = web.AppKey("signal_sio", SignalServer)
NAMESPACE_KEY = web.AppKey("signal_namespace", SignalNamespace)
DEPS_KEY = web.AppKey("signal_deps", SignalDeps)
