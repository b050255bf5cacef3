"""Mass disconnect: python-socketio's stock manager against signal-service's indexed rooms.

`python -m bench.rooms [--sockets N ...]`: N sockets, each in the rooms signal-service gives it
(its sid room, user:<wallet>, rtc:<wallet>), then all of them disconnect, as when a network
blip or a gateway restart drops an instance's clients. Prints the seconds per thousand
disconnects for both managers and their ratio, measured in the same run; the stock manager's
cost per disconnect grows with the number of rooms, the indexed one's does not.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rtc_testkit.rooms import Indexed, Stock, new_manager


def mass_disconnect(cls: type[Any], sockets: int) -> float:
    """Seconds for `sockets` sockets (three rooms each) to disconnect, one after the other."""
    manager = new_manager(cls)
    sids = []
    for n in range(sockets):
        sid = manager.connect(f"eio{n}", "/")
        manager.basic_enter_room(sid, "/", f"user:0x{n:x}")
        manager.basic_enter_room(sid, "/", f"rtc:0x{n:x}")
        sids.append(sid)
    started = time.perf_counter()
    for sid in sids:
        manager.basic_disconnect(sid, "/")
    elapsed = time.perf_counter() - started
    assert not manager.rooms, "every room is gone once every socket left"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, nargs="+", default=[1000, 4000])
    args = parser.parse_args()
    print(f"{'sockets':>8} {'stock s/1k':>11} {'indexed s/1k':>13} {'stock/indexed':>14}")
    for sockets in args.sockets:
        stock = mass_disconnect(Stock, sockets)
        indexed = mass_disconnect(Indexed, sockets)
        per_k = 1000 / sockets
        print(
            f"{sockets:>8} {stock * per_k:>11.4f} {indexed * per_k:>13.4f}"
            f" {stock / indexed:>13.0f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
