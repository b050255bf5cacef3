"""python-socketio managers without a server: the stock one and signal-service's indexed one,
for the test and the benchmark that compare them."""

from __future__ import annotations

from typing import Any

import socketio
from rtc_common.rooms import IndexedRooms


class SequentialIds:
    """What the manager asks of its server here: socket ids, the same sequence every time."""

    def __init__(self) -> None:
        self.eio = self
        self.count = 0

    def generate_id(self) -> str:
        self.count += 1
        return f"sid{self.count}"


class Stock(socketio.Manager):  # type: ignore[misc]
    pass


class Indexed(IndexedRooms, socketio.Manager):  # type: ignore[misc]
    pass


def new_manager(cls: type[Any]) -> Any:
    manager = cls()
    manager.server = SequentialIds()
    return manager
