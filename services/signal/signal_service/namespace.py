"""The default Socket.IO namespace: handshake auth, rtc:* signaling, legacy `signal`, presence."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any, NoReturn

import socketio
from aiohttp import web
from redis.exceptions import RedisError
from rtc_common.auth import Authenticator, Identity, conv_id, is_valid_wallet, normalize_wallet
from rtc_common.bus import emit_message
from rtc_common.context import request_id_var
from rtc_common.errors import ApiError, unauthorized
from rtc_common.logs import info_line, wallet_hash
from rtc_common.revocation import Revocation
from socketio.exceptions import ConnectionRefusedError as HandshakeRefused

from .announcer import Announcer
from .guard import ABUSE_FACTOR, ABUSE_WINDOW_SECONDS, REFUSAL_LOG_SECONDS, Refusals, TokenBucket
from .metrics import (
    EVENT_LATENCY,
    LEGACY_USED,
    SESSIONS_ENDED,
    SIGNALS,
    SOCKETS,
)
from .payloads import (
    CANDIDATE_MAX_BYTES,
    CandidateSignal,
    LegacySignal,
    OfferOrAnswer,
    PayloadError,
    RelayAck,
    parse,
)
from .presence import LocalSocket, TooManySockets
from .pubsub import PUBLISH_FAILED
from .server import ACK_REQUESTED
from .settings import SignalSettings
from .sockets import (
    DEDUP_SECONDS,
    LocalDedup,
    Refusal,
    SignalDeps,
    SocketState,
    dedup_key,
    outcome_of,
    signal_id_of,
)

log = logging.getLogger("signal.namespace")

# Outcomes logged one line per event; every other outcome is a refusal, logged in aggregate.
ACCEPTED = frozenset({"ok", "duplicate"})
# The longest single timer for a token's expiry (a far `exp` is reached in several steps).
MAX_TIMER_SECONDS = 86400.0
# After session:end, how long the client has to close its connection itself.
SESSION_END_GRACE_SECONDS = 1.0
RTC_EVENTS = ("rtc:offer", "rtc:answer", "rtc:candidate")
LEGACY_WARNING = {
    "code": "deprecated_event",
    "event": "signal",
    "use": "rtc:offer|rtc:answer|rtc:candidate",
}


class SignalNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(
        self,
        settings: SignalSettings,
        authenticator: Authenticator,
        deps: Callable[[], SignalDeps],
        announcer: Announcer,
    ) -> None:
        super().__init__("/")
        self.settings = settings
        self.authenticator = authenticator
        self._deps = deps
        self.announcer = announcer
        self._local_dedup = LocalDedup()
        # sids whose refused events are waiting for their aggregated log line
        self._refused: set[str] = set()
        self._ordering: dict[str, asyncio.Lock] = {}
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
                    outcome = outcome_of(result)
                    return result
                except Refusal as refusal:
                    outcome = refusal.code
                    return await self._refuse(sid, event, refusal.code, signal_id_of(data))
                except Exception:
                    log.exception("signaling handler failed", extra={"event": event})
                    return await self._refuse(sid, event, "unavailable", signal_id_of(data))
            finally:
                elapsed = time.perf_counter() - started
                EVENT_LATENCY.labels(event).observe(elapsed)
                state = await self.socket_state(sid)
                if outcome in ACCEPTED:
                    self._log_event(event, outcome, elapsed, state.wallet if state else None)
                elif state is not None:
                    self._count_refusal(sid, state, outcome)
                # (a refused event of a socket already gone: counted in the metrics only)
                request_id_var.reset(token)

    def _count_refusal(self, sid: str, state: SocketState, outcome: str) -> None:
        """Refused events are logged per socket in aggregate, and too many end the session."""
        self._refused.add(sid)
        if outcome in ("token_expired", "revoked"):
            self.server.start_background_task(self.end_session, sid, outcome)
        elif state.refusals.record(outcome, state.wallet):
            self.server.start_background_task(self.end_session, sid, "abuse")

    async def flush_refusals(self) -> None:
        """Write the refusal lines that are due (the watchdog calls this every heartbeat)."""
        now = time.monotonic()
        for sid in list(self._refused):
            state = await self.socket_state(sid)
            if state is None:
                self._refused.discard(sid)
            elif now - state.refusals.since >= REFUSAL_LOG_SECONDS:
                state.refusals.flush(state.wallet, now)
                if not state.refusals.pending:
                    self._refused.discard(sid)

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
        return self.authenticator.cookie_token(cookies[self.settings.jwt_cookie_name])

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        started = time.perf_counter()
        try:
            identity = self._authenticate(environ, auth)
        except ApiError as exc:
            SIGNALS.labels("connect", exc.code).inc()
            self._log_event("connect", exc.code, time.perf_counter() - started, None)
            raise HandshakeRefused(exc.code, {"error": exc.code, "message": exc.message}) from None
        rtc = not (isinstance(auth, dict) and auth.get("rtc") is False)
        exp = identity.claims.get("exp")
        state = SocketState(
            identity.wallet,
            rtc,
            TokenBucket(self.settings.signal_rate_per_sec),
            Refusals(ABUSE_FACTOR * ABUSE_WINDOW_SECONDS * self.settings.signal_rate_per_sec),
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )
        # Saved before the presence check, so a concurrent reconcile sees a live socket.
        await self.save_session(sid, {"state": state})
        first = False
        try:
            first = await self._deps().presence.register(
                LocalSocket(sid, state.wallet, rtc),
                limit=self.settings.signal_max_sockets_per_wallet,
            )
        except TooManySockets:
            self._refuse_handshake("too_many_connections", started, state.wallet)
        except RedisError as exc:
            # Not enforceable cluster-wide now: this instance's own sockets still count.
            held = sum(1 for _ in self.server.manager.get_participants("/", f"user:{state.wallet}"))
            if held >= self.settings.signal_max_sockets_per_wallet:
                self._refuse_handshake("too_many_connections", started, state.wallet)
            # The heartbeat re-registers this instance's sockets once Redis answers again.
            log.warning("presence not recorded", extra={"error": type(exc).__name__})
        await self.enter_room(sid, f"user:{state.wallet}")
        if rtc:
            await self.enter_room(sid, f"rtc:{state.wallet}")
        if self.authenticator.revocations.is_revoked(state.wallet):
            # Revoked while this handshake awaited Redis: on_revocation did not see it yet.
            self.server.start_background_task(self.end_session, sid, "revoked")
        self._schedule_expiry(sid, state)
        SOCKETS.inc()
        SIGNALS.labels("connect", "ok").inc()
        self._log_event("connect", "ok", time.perf_counter() - started, state.wallet)
        self.server.start_background_task(self._after_connect, sid, state.wallet, first)

    def _schedule_expiry(self, sid: str, state: SocketState) -> None:
        """End the session at the token's `exp` (checked again then: timers are capped, a
        token may live longer than one timer)."""
        if state.expires_at is None or state.ended:
            return
        delay = state.expires_at - time.time()
        if delay <= 0:
            self.server.start_background_task(self.end_session, sid, "token_expired")
            return
        state.expiry = asyncio.get_running_loop().call_later(
            min(delay, MAX_TIMER_SECONDS), self._schedule_expiry, sid, state
        )

    def _refuse_handshake(self, code: str, started: float, wallet: str) -> NoReturn:
        SIGNALS.labels("connect", code).inc()
        self._log_event("connect", code, time.perf_counter() - started, wallet)
        message = {
            "too_many_connections": (
                f"at most {self.settings.signal_max_sockets_per_wallet} sockets per user"
            ),
        }.get(code, code)
        raise HandshakeRefused(code, {"error": code, "message": message})

    async def end_session(self, sid: str, reason: str) -> None:
        """Tell the client why (`session:end {reason}`), then close its socket.

        The client does not reconnect on its own after a server disconnect; an engine.io
        connection left open without its namespace is closed after a grace second.
        """
        state = await self.socket_state(sid)
        if state is None or state.ended:
            return
        state.ended = True
        SESSIONS_ENDED.labels(reason).inc()
        info_line(log, "session ended", {"reason": reason, "walletHash": wallet_hash(state.wallet)})
        eio_sid = self.server.manager.eio_sid_from_sid(sid, "/")
        with contextlib.suppress(Exception):
            await self.emit("session:end", {"reason": reason}, to=sid)
            await self.disconnect(sid)
        if eio_sid is not None:
            asyncio.get_running_loop().call_later(
                SESSION_END_GRACE_SECONDS,
                self.server.start_background_task,
                self._close_transport,
                eio_sid,
            )

    def on_revocation(self, wallet: str, revocation: Revocation | None) -> None:
        """A revoked wallet's sockets on this instance get session:end `revoked` and close."""
        if revocation is None:
            return
        for sid, _eio_sid in list(self.server.manager.get_participants("/", f"user:{wallet}")):
            self.server.start_background_task(self.end_session, sid, "revoked")

    async def _close_transport(self, eio_sid: str) -> None:
        if eio_sid in self.server.eio.sockets:
            with contextlib.suppress(Exception):
                await self.server.eio.disconnect(eio_sid)

    async def _after_connect(self, sid: str, wallet: str, first: bool) -> None:
        deps = self._deps()
        try:
            contacts = await deps.access.mutual_contacts(wallet)
            online = await deps.presence.online(contacts)
            await self.emit("presence:snapshot", {"online": online}, to=sid)
            if first:
                await self.announcer.announce(wallet, online=True, contacts=online)
        except (ApiError, RedisError) as exc:
            log.warning("presence snapshot skipped", extra={"error": type(exc).__name__})

    async def on_disconnect(self, sid: str) -> None:
        self._ordering.pop(sid, None)
        state = await self.socket_state(sid)
        if state is None:
            return
        if state.expiry is not None:
            state.expiry.cancel()
        state.refusals.flush(state.wallet)
        self._refused.discard(sid)
        SOCKETS.dec()
        self._log_event("disconnect", "ok", 0.0, state.wallet)
        try:
            last = await self._deps().presence.unregister(sid, state.wallet)
        except RedisError as exc:
            log.warning("presence not updated", extra={"error": type(exc).__name__})
            return
        if last:
            await self.announcer.announce(state.wallet, online=False)

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
        if state is None or state.ended:
            raise Refusal("unauthorized")
        if state.expired():
            raise Refusal("token_expired")
        if self.authenticator.revocations.is_revoked(state.wallet):
            raise Refusal("revoked")  # its session is being ended (on_revocation)
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

        await self._check_access(state, to)
        # Published to the other instances holding `to` by the route script itself.
        message = emit_message(event, body, namespace="/", host_id=self.server.manager.host_id)
        remote, first, published = await self._route(state.wallet, to, signal_id, message)
        if not first:
            SIGNALS.labels(event, "duplicate").inc()
            return {"ok": True, "signalId": signal_id, "duplicate": True}
        if published:
            await self.emit(event, body, room=f"rtc:{to}", ignore_queue=True)
        else:
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

    async def _check_access(self, state: SocketState, to: str) -> None:
        """Mutual contacts, and both users' RTC switches on (the legacy event too)."""
        access = self._deps().access
        try:
            if not await access.are_mutual_contacts(state.wallet, to):
                raise Refusal("forbidden")
            if not state.rtc or not await access.is_rtc_enabled(state.wallet):
                raise Refusal("sender_not_rtc_eligible")
            if not await access.is_rtc_enabled(to):
                raise Refusal("target_not_rtc_eligible")
        except ApiError:
            raise Refusal("unavailable") from None

    async def _route(
        self, sender: str, to: str, signal_id: str, message: tuple[bytes, bytes]
    ) -> tuple[bool, bool, bool]:
        """(remote, first, published): does delivery cross instances, is the sender's signalId
        new, and did the route script already publish it to the instances holding `to`.
        Refuses when `to` cannot be reached now (see _reachable). One batched round trip; the
        step-by-step path (through the shared channel) when Redis failed."""
        key = dedup_key(sender, signal_id)
        try:
            route = await self._deps().bus.route_signal(
                to, message, dedup_key=key, dedup_seconds=DEDUP_SECONDS
            )
        except RedisError:
            route = None
        if route is None:
            remote = await self._reachable(to)
            return remote, await self._first_time(sender, signal_id), False
        if not route.reachable:
            raise Refusal("target_not_rtc_eligible")
        if not route.listening:
            # An instance holding the target is not subscribed (Redis just restarted): a
            # publish now would be acked and lost. The client retries.
            raise Refusal("unavailable")
        return route.remote, route.first, True

    async def _reachable(self, wallet: str) -> bool:
        """Refuse unless the wallet has an RTC-capable socket that a signal sent now reaches;
        True when some of them are on other instances (delivered through Redis pub/sub).

        A socket on another instance counts only while that instance's listener is subscribed:
        right after Redis restarts, a message published before it subscribed again would be
        acked and lost (pub/sub keeps nothing), so the signal is `unavailable` meanwhile.
        """
        manager = self.server.manager
        try:
            owners = await self._deps().presence.rtc_owners(wallet)
            remote = owners - {self.settings.instance_id}
            if remote and not await manager.listening(remote):
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
        key = dedup_key(sender, signal_id)
        self._local_dedup.seen.pop(key, None)
        with contextlib.suppress(RedisError):
            await self._deps().redis.delete(key)

    async def _first_time(self, sender: str, signal_id: str) -> bool:
        key = dedup_key(sender, signal_id)
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
        await self._check_access(state, to)
        if payload.signalId is not None and not await self._first_time(
            state.wallet, payload.signalId
        ):
            SIGNALS.labels(event, "duplicate").inc()
            return {"ok": True, "signalId": payload.signalId, "duplicate": True}
        await self.emit(
            "signal", {"from": state.wallet, "signal": payload.signal}, room=f"user:{to}"
        )
        SIGNALS.labels(event, "ok").inc()
        return (
            {"ok": True} if payload.signalId is None else {"ok": True, "signalId": payload.signalId}
        )

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


NAMESPACE_KEY = web.AppKey("signal_namespace", SignalNamespace)
DEPS_KEY = web.AppKey("signal_deps", SignalDeps)
