"""signal-service's socket -> rooms index (rtc_common.rooms.IndexedRooms) against
python-socketio's own manager: any sequence of connects, room changes, closes and disconnects
leaves both managers in the same state and answering the same rooms, and a disconnect no longer
scans every room."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rtc_testkit.rooms import Indexed, Stock, new_manager

NAMESPACES = ["/", "/other"]
ROOMS = ["user:a", "user:b", "rtc:a", "lobby"]


def state(manager: Any, sids: list[str]) -> dict[str, Any]:
    return {
        "rooms": {
            ns: {room: dict(members) for room, members in rooms.items()}
            for ns, rooms in manager.rooms.items()
        },
        "callbacks": sorted(manager.callbacks),
        "pending_connect": manager.pending_connect,
        "pending_disconnect": manager.pending_disconnect,
        "get_rooms": {
            (sid, ns): set(manager.get_rooms(sid, ns)) for sid in sids for ns in NAMESPACES
        },
    }


def apply(manager: Any, op: tuple[Any, ...], sids: list[str]) -> str:
    """One operation; returns what it answered (an exception's type included)."""
    kind, n, ns, room = op
    sid = sids[n % len(sids)] if sids else "nobody"
    try:
        if kind == "connect":
            return str(manager.connect(f"eio{n}", ns))
        if kind == "pre_connect":
            return str(manager.pre_connect(f"eio{n}", ns))
        if kind == "enter":
            manager.basic_enter_room(sid, ns, room)
        elif kind == "leave":
            manager.basic_leave_room(sid, ns, room)
        elif kind == "close":
            manager.basic_close_room(room if n % 3 else sid, ns)
        elif kind == "ack":
            return str(manager._generate_ack_id(sid, print))
        elif kind == "pre_disconnect":
            return str(manager.pre_disconnect(sid, ns))
        else:
            manager.basic_disconnect(sid, ns)
    except (KeyError, ValueError) as exc:
        return type(exc).__name__
    return "ok"


operations = st.lists(
    st.tuples(
        st.sampled_from(
            ["connect", "pre_connect", "enter", "leave", "close", "ack", "pre_disconnect"]
            + ["disconnect"] * 2
        ),
        st.integers(0, 7),
        st.sampled_from(NAMESPACES),
        st.sampled_from(ROOMS),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, database=None)
@given(ops=operations)
def test_index_matches_python_socketio(ops: list[tuple[Any, ...]]) -> None:
    stock, indexed = new_manager(Stock), new_manager(Indexed)
    sids: list[str] = []
    for op in ops:
        answers = apply(stock, op, sids), apply(indexed, op, sids)
        assert answers[0] == answers[1], op
        if op[0] in ("connect", "pre_connect") and answers[0].startswith("sid"):
            sids.append(answers[0])
        assert state(stock, sids) == state(indexed, sids), op


def test_disconnect_does_not_scan_other_rooms() -> None:
    """The stock disconnect copies and scans every room of the namespace; the indexed one only
    looks at the leaving socket's rooms (a room table that refuses to be scanned proves it)."""

    class NoScan(dict[Any, Any]):
        def items(self) -> Any:
            raise AssertionError("scanned every room")

        def copy(self) -> Any:
            raise AssertionError("copied every room")

    manager = new_manager(Indexed)
    sids = [manager.connect(f"eio{n}", "/") for n in range(50)]
    for n, sid in enumerate(sids):
        manager.basic_enter_room(sid, "/", f"user:{n}")
    manager.rooms["/"] = NoScan(manager.rooms["/"])
    for sid in sids[:49]:
        assert manager.get_rooms(sid, "/") == [sid, f"user:{sids.index(sid)}"]
        manager.basic_disconnect(sid, "/")
    assert set(manager.rooms["/"]) == {None, sids[49], "user:49"}
    assert manager._rooms_of == {("/", sids[49]): {None: None, sids[49]: None, "user:49": None}}
