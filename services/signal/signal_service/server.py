"""The Socket.IO server: python-socketio's, with what the namespace needs from below it."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

import socketio
from rtc_common.errors import unauthorized
from socketio import packet

from .metrics import BINARY_REFUSED, SIGNALS

log = logging.getLogger("signal.server")

# Whether the event being handled asked for an ack (set by SignalServer per event).
ACK_REQUESTED: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested", default=False)
# Socket.IO packet types BINARY_EVENT (5) and BINARY_ACK (6).
BINARY_PACKET_TYPES = ("5", "6")


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

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # python-socketio buffers every binary frame announced by a `45<N>-` / `46<N>-` packet
        # before any handler or size check runs; this protocol has no binary data, so such a
        # packet (or a stray binary frame) closes the socket before anything is buffered.
        if isinstance(data, bytes | bytearray) or (
            isinstance(data, str) and data[:1] in BINARY_PACKET_TYPES
        ):
            environ = self.environ.get(eio_sid)
            if environ is None:
                return  # closed already: later frames of the same flood
            BINARY_REFUSED.inc()
            log.warning("binary socket.io packet refused, socket closed")
            await self.eio.disconnect(eio_sid)
            # engine.io's close leaves the websocket open until the client closes it or the
            # ping times out; a hostile client would keep sending, so the connection goes now.
            request = environ.get("aiohttp.request")
            if request is not None and request.transport is not None:
                request.transport.close()
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except ValueError:
            await self._refuse_malformed(eio_sid, data)

    async def _refuse_malformed(self, eio_sid: str, data: Any) -> None:
        """A packet python-socketio cannot decode. A number as the handshake's `auth` is one:
        `0` + `1.5` reads as packet id 1 and data `.5`. A handshake gets the refusal any other
        invalid `auth` gets (connect_error `unauthorized`); any other packet is dropped, and the
        socket keeps working (as python-socketio does with its own decode guards)."""
        if isinstance(data, str) and data[:1] == str(packet.CONNECT):
            refusal = unauthorized()
            SIGNALS.labels("connect", refusal.code).inc()
            reason = {"error": refusal.code, "message": refusal.message}
            await self._send_packet(
                eio_sid,
                self.packet_class(
                    packet.CONNECT_ERROR,
                    data={"message": refusal.code, "data": reason},
                    namespace="/",
                ),
            )
            return
        log.warning("undecodable socket.io packet dropped")
