"""A socket -> rooms index for python-socketio's managers (a mixin, imported by signal-service
and by the benchmark and test that compare it with the stock manager)."""

from __future__ import annotations

from typing import Any


class IndexedRooms:
    """A socket -> rooms index for python-socketio's manager.

    python-socketio (5.x, `BaseManager.basic_disconnect` and `get_rooms`) finds a socket's rooms
    by scanning, and on disconnect first copying, every room of the namespace: O(all rooms) per
    socket. An instance holds about three rooms per socket, so 20,000 sockets leaving together
    cost minutes of CPU (seen in the connection benchmark). With the index both are O(the
    socket's own rooms). Mixed in before the manager class; `rooms` stays the manager's own.
    """

    rooms: dict[Any, dict[Any, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (namespace, sid) -> its rooms, in the order it entered them (a dict as an ordered set)
        self._rooms_of: dict[tuple[str, str], dict[Any, None]] = {}

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self._rooms_of.setdefault((namespace, sid), {})[room] = None

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.pop(room, None)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        # The rest of the stock method, which needs no scan.
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if sid in pending.get(namespace, ()):
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]
