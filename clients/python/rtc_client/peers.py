"""Peer connections (aiortc): one link per peer, its data channel, and the ICE configuration
they are built with.

ICE is re-fetched at `refresh_ratio` of its `ttl`; every open peer connection is then rebuilt
with the fresh credentials (aiortc has no `restartIce`): a new offer, and the old connection is
closed once the new channel is open. aiortc gathers before it writes the SDP, so the SDP carries
the candidates; they are also sent as `rtc:candidate` (browsers trickle), and candidates received
that way are added. Glare (both sides offer at once): the smaller wallet's offer wins."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

from rtc_client import frames
from rtc_client.clock import Clock
from rtc_client.errors import RtcClientError
from rtc_client.http_api import HttpApi
from rtc_client.ice import IceConfig, IceSource
from rtc_client.links import Link, PeerSession, selected_pair
from rtc_client.model import Delivery, IncomingMessage, conv_id, new_id, normalize_wallet
from rtc_client.options import ClientOptions
from rtc_client.tasks import Tasks

log = logging.getLogger("rtc_client")

Signal = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
Deliver = Callable[[IncomingMessage], Awaitable[bool]]


class Peers:
    """The peer side of one client: `signal` emits a signaling event with its ack, `deliver`
    hands a received message to the app (False when it was a duplicate)."""

    def __init__(
        self,
        wallet: str,
        options: ClientOptions,
        clock: Clock,
        http: HttpApi,
        tasks: Tasks,
        *,
        signal: Signal,
        deliver: Deliver,
    ) -> None:
        self.wallet = wallet
        self.options = options
        self.ice_source = IceSource(http, clock, options, self._rebuild_links)
        self.blocked = False
        self._tasks = tasks
        self._signal = signal
        self._deliver = deliver
        self._links: dict[str, Link] = {}
        self._acks: dict[str, asyncio.Future[None]] = {}

    # -- lifecycle and lookups ------------------------------------------------------------------

    async def start(self) -> None:
        await self.ice_source.start()

    async def close(self) -> None:
        await self.ice_source.close()
        await self.close_all("closed")

    async def stop(self) -> None:
        """No signaling any more: the ICE refresh and every peer connection go."""
        self.ice_source.stop()
        await self.close_all("session_ended")

    def _rebuild_links(self) -> None:
        """Rebuild open peer connections that use older credentials (no restartIce in aiortc)."""
        current = self.ice_source.current
        for link in self._links.values():
            if link.active is not None and link.active.open and link.active.ice is not current:
                self._start_negotiation(link, restart=True)

    async def close_all(self, reason: str) -> None:
        for link in list(self._links.values()):
            await self._close_link(link, reason)

    def set_blocked(self, blocked: bool) -> None:
        self.blocked = blocked
        if blocked:
            for link in list(self._links.values()):
                self._tasks.spawn(self._close_link(link, "blocked"))

    def active(self, peer: str) -> PeerSession | None:
        link = self._links.get(normalize_wallet(peer))
        return link.active if link is not None else None

    def sessions_made(self, peer: str) -> int:
        link = self._links.get(normalize_wallet(peer))
        return link.sessions_made if link is not None else 0

    async def connect(self, peer: str, within: float) -> tuple[str, str] | None:
        loop = asyncio.get_running_loop()
        session = await self._open_session(normalize_wallet(peer), loop.time() + within)
        if session is None:
            link = self._links.get(normalize_wallet(peer))
            raise RtcClientError((link.failure if link else None) or "timeout", "no data channel")
        return selected_pair(session.pc)

    # -- messages -------------------------------------------------------------------------------

    async def send(self, to: str, message_id: str, payload: str) -> tuple[int, Delivery | None]:
        """Up to `rtc_tries` tries over the data channel, each waiting at most `ack_window` for
        the channel and the ACK: how many were made, and the Delivery if one was ACKed."""
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()
        self._acks[message_id] = acked
        tries = 0
        try:
            frame = frames.encode_msg(message_id, payload)
            for _ in range(self.options.rtc_tries):
                tries += 1
                deadline = loop.time() + self.options.ack_window
                session = await self._open_session(to, deadline)
                if session is None or session.channel is None:
                    continue
                if not self.blocked:
                    try:
                        session.channel.send(frame)
                    except Exception as exc:  # InvalidStateError: the channel closed
                        log.info("data channel send failed", extra={"error": repr(exc)})
                        continue
                try:
                    await asyncio.wait_for(asyncio.shield(acked), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    continue
                pair = selected_pair(session.pc)
                return tries, Delivery(to, message_id, "rtc", False, tries, candidate_pair=pair)
        finally:
            self._acks.pop(message_id, None)
        return tries, None

    async def _on_frame(self, link: Link, session: PeerSession, data: str | bytes) -> None:
        frame = frames.decode(data)
        if isinstance(frame, frames.AckFrame):
            future = self._acks.get(frame.message_id)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if frame is None:
            return
        await self._deliver(
            IncomingMessage(
                sender=link.remote,
                conv_id=conv_id(self.wallet, link.remote),
                message_id=frame.message_id,
                payload=frame.payload,
                transport="rtc",
                sent_at=frame.sent_at,
            )
        )
        ack = frames.encode_ack(frame.message_id)
        for candidate in (session, link.active):
            if candidate is not None and candidate.open and candidate.channel is not None:
                with contextlib.suppress(Exception):
                    candidate.channel.send(ack)
                    return

    # -- peer connections and signaling ------------------------------------------------------

    def _link(self, remote: str) -> Link:
        link = self._links.get(remote)
        if link is None:
            link = self._links[remote] = Link(remote)
        return link

    def _new_session(self, link: Link, ice: IceConfig, initiator: bool) -> PeerSession:
        policy = (
            RTCIceTransportPolicy.RELAY
            if self.options.ice_transport_policy == "relay"
            else RTCIceTransportPolicy.ALL
        )
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=list(ice.ice_servers), iceTransportPolicy=policy)
        )
        session = PeerSession(pc, initiator, ice)
        link.sessions_made += 1

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == frames.CHANNEL_LABEL:
                self._wire_channel(link, session, channel)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._session_down(link, session, f"connection_{pc.connectionState}")

        return session

    def _wire_channel(self, link: Link, session: PeerSession, channel: RTCDataChannel) -> None:
        @channel.on("message")
        def on_message(data: str | bytes) -> None:
            if not self.blocked and not session.closed:
                self._tasks.spawn(self._on_frame(link, session, data))

        @channel.on("close")
        def on_close() -> None:
            self._session_down(link, session, "channel_closed")

        def on_open() -> None:
            session.channel = channel
            if session.closed:
                return
            if link.negotiating is session or link.active is None:
                old = link.active
                link.active = session
                if link.negotiating is session:
                    link.negotiating = None
                link.failure = None
                if old is not None and old is not session:
                    self._tasks.spawn(self._close_session(old))
                link.notify()
                log.info(
                    "data channel open",
                    extra={"peer": link.remote, "pair": selected_pair(session.pc)},
                )

        session.channel = channel
        if channel.readyState == "open":
            on_open()
        else:
            channel.on("open", on_open)

    def _session_down(self, link: Link, session: PeerSession, reason: str) -> None:
        if link.active is session:
            link.active = None
            link.notify()
        if link.negotiating is session:
            link.negotiating = None
            link.failure = reason
            link.notify()
        self._tasks.spawn(self._close_session(session))

    async def _close_session(self, session: PeerSession) -> None:
        if session.closed:
            return
        session.closed = True
        with contextlib.suppress(Exception):
            await session.pc.close()

    async def _close_link(self, link: Link, reason: str) -> None:
        sessions = [s for s in (link.active, link.negotiating) if s is not None]
        link.active = link.negotiating = None
        link.failure = reason
        if link.negotiation_task is not None and not link.negotiation_task.done():
            link.negotiation_task.cancel()
        link.notify()
        for session in sessions:
            await self._close_session(session)

    def _start_negotiation(self, link: Link, restart: bool = False) -> None:
        if link.negotiation_task is not None and not link.negotiation_task.done():
            return
        link.failure = None
        link.negotiation_task = asyncio.create_task(self._negotiate(link, restart))

    async def _negotiate(self, link: Link, restart: bool) -> None:
        """Offer a new peer connection to `link.remote` and wait for its channel."""
        session: PeerSession | None = None
        try:
            ice = await self.ice_source.for_new_connection()
            session = self._new_session(link, ice, initiator=True)
            previous = link.negotiating
            link.negotiating = session
            if previous is not None:
                await self._close_session(previous)
            channel = session.pc.createDataChannel(frames.CHANNEL_LABEL, ordered=True)
            self._wire_channel(link, session, channel)
            await session.pc.setLocalDescription(await session.pc.createOffer())
            local = session.pc.localDescription
            assert local is not None
            ack = await self._signal(
                "rtc:offer",
                {
                    "convId": conv_id(self.wallet, link.remote),
                    "to": link.remote,
                    "sdp": {"type": local.type, "sdp": local.sdp},
                    "signalId": new_id("offer"),
                },
            )
            if not ack.get("ok"):
                raise RtcClientError(str(ack.get("error") or "refused"), "offer refused")
            await self._send_candidates(link, session)
            deadline = asyncio.get_running_loop().time() + self.options.negotiation_timeout
            while not session.open and not session.closed:
                changed = link.changed
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise RtcClientError("negotiation_timeout", "no data channel in time")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        except RtcClientError as exc:
            log.info(
                "negotiation failed",
                extra={"peer": link.remote, "error": exc.code, "rebuild": restart},
            )
            if session is not None:
                self._fail_negotiation(link, session, exc.code)
            else:
                link.failure = exc.code
                link.notify()
        except Exception as exc:
            log.warning("negotiation error", extra={"peer": link.remote, "error": repr(exc)})
            if session is not None:
                self._fail_negotiation(link, session, "negotiation_error")
            else:
                link.failure = "negotiation_error"
                link.notify()

    def _fail_negotiation(self, link: Link, session: PeerSession, code: str) -> None:
        if link.negotiating is session:
            link.negotiating = None
        if link.active is not session:
            link.failure = code
            link.notify()
            self._tasks.spawn(self._close_session(session))

    async def _send_candidates(self, link: Link, session: PeerSession) -> None:
        sctp = session.pc.sctp
        if sctp is None:
            return
        gatherer = sctp.transport.transport.iceGatherer
        ufrag = gatherer.getLocalParameters().usernameFragment
        for candidate in gatherer.getLocalCandidates():
            ack = await self._signal(
                "rtc:candidate",
                {
                    "convId": conv_id(self.wallet, link.remote),
                    "to": link.remote,
                    "candidate": {
                        "candidate": "candidate:" + candidate_to_sdp(candidate),
                        "sdpMid": "0",
                        "sdpMLineIndex": 0,
                        "usernameFragment": ufrag,
                    },
                    "signalId": new_id("cand"),
                },
            )
            if not ack.get("ok"):
                log.info("candidate refused", extra={"error": ack.get("error")})

    async def on_offer(self, data: Any) -> None:
        if self.blocked or not self.options.rtc or not isinstance(data, dict):
            return
        remote = normalize_wallet(str(data.get("from", "")))
        sdp = data.get("sdp")
        if not remote or not isinstance(sdp, dict) or not isinstance(sdp.get("sdp"), str):
            return
        link = self._link(remote)
        pending = link.negotiating
        if pending is not None and pending.initiator and not pending.remote_set:
            if self.wallet < remote:
                return  # glare: our offer wins, they answer it
            if link.negotiation_task is not None:
                link.negotiation_task.cancel()
            await self._close_session(pending)
        ice = await self.ice_source.for_new_connection()
        session = self._new_session(link, ice, initiator=False)
        previous = link.negotiating
        link.negotiating = session
        if previous is not None and previous is not session:
            await self._close_session(previous)
        await session.pc.setRemoteDescription(RTCSessionDescription(sdp["sdp"], "offer"))
        await self._flush_candidates(session)
        await session.pc.setLocalDescription(await session.pc.createAnswer())
        local = session.pc.localDescription
        assert local is not None
        ack = await self._signal(
            "rtc:answer",
            {
                "convId": conv_id(self.wallet, remote),
                "to": remote,
                "sdp": {"type": local.type, "sdp": local.sdp},
                "signalId": new_id("answer"),
            },
        )
        if not ack.get("ok"):
            self._fail_negotiation(link, session, str(ack.get("error") or "refused"))
            return
        await self._send_candidates(link, session)

        async def expire() -> None:
            await asyncio.sleep(self.options.negotiation_timeout)
            if link.negotiating is session and not session.open:
                self._fail_negotiation(link, session, "negotiation_timeout")

        self._tasks.timer(expire())

    async def on_answer(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        link = self._links.get(normalize_wallet(str(data.get("from", ""))))
        sdp = data.get("sdp")
        if link is None or not isinstance(sdp, dict) or not isinstance(sdp.get("sdp"), str):
            return
        session = link.negotiating
        if session is None or not session.initiator or session.remote_set:
            return
        if session.pc.signalingState != "have-local-offer":
            return
        session.remote_set = True
        await session.pc.setRemoteDescription(RTCSessionDescription(sdp["sdp"], "answer"))
        await self._flush_candidates(session)

    async def on_candidate(self, data: Any) -> None:
        if self.blocked or not isinstance(data, dict):
            return
        link = self._links.get(normalize_wallet(str(data.get("from", ""))))
        body = data.get("candidate")
        if link is None or not isinstance(body, dict):
            return
        text = body.get("candidate")
        if not isinstance(text, str):
            return
        candidate: RTCIceCandidate | None = None
        if text.strip():
            try:
                candidate = candidate_from_sdp(text.split(":", 1)[1] if ":" in text else text)
            except (AssertionError, ValueError, IndexError):
                log.info("unparsable candidate ignored")
                return
            mid, index = body.get("sdpMid"), body.get("sdpMLineIndex")
            candidate.sdpMid = mid if isinstance(mid, str) else None
            candidate.sdpMLineIndex = index if isinstance(index, int) else None
            if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
                candidate.sdpMLineIndex = 0
        session = link.negotiating or link.active
        if session is None:
            return
        if not session.remote_set:
            session.early_candidates.append(candidate)
            return
        await self._add_candidate(session, candidate)

    async def _flush_candidates(self, session: PeerSession) -> None:
        session.remote_set = True
        queued, session.early_candidates = session.early_candidates, []
        for candidate in queued:
            await self._add_candidate(session, candidate)

    @staticmethod
    async def _add_candidate(session: PeerSession, candidate: RTCIceCandidate | None) -> None:
        try:
            await session.pc.addIceCandidate(candidate)
        except (ValueError, RuntimeError) as exc:
            log.info("candidate not added", extra={"error": type(exc).__name__})

    async def _open_session(self, remote: str, deadline: float) -> PeerSession | None:
        """An open session towards `remote` by `deadline` (loop time), negotiating if needed."""
        link = self._link(remote)
        loop = asyncio.get_running_loop()
        if link.active is not None and link.active.open:
            return link.active
        if link.negotiating is None:
            self._start_negotiation(link)
        while True:
            if link.active is not None and link.active.open:
                return link.active
            if link.failure is not None and link.negotiating is None:
                return None
            changed = link.changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return None

    async def on_presence(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("online") is not False:
            return
        link = self._links.get(normalize_wallet(str(data.get("wallet", ""))))
        if link is not None:
            await self._close_link(link, "peer_offline")
