"""Redis connections that look the server's name up once, not once per connection.

A replica that takes over its restarting sibling's traffic opens new Redis connections under
load; each one used to look the name up, and a container's DNS can lose an answer (one lookup
took 5 s under podman's aardvark-dns, docs/reliability.md "Rolling restarts"). Here the first
connection that succeeds teaches its pool the address it reached; later connections go straight
to that address, and a connect that fails there forgets it, so the next one looks the name up
again (Redis moved, restarted elsewhere).

Only plain TCP URLs with a host name use it: an IP address needs no lookup, a unix socket none,
and TLS verifies the certificate against the name, so rediss:// keeps redis-py's own connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from redis.asyncio.connection import Connection


class AddressMemo:
    """The address one pool's connections last reached, shared by them."""

    def __init__(self) -> None:
        self.address: str | None = None

    def learn(self, address: str) -> None:
        self.address = address

    def forget(self, address: str) -> None:
        if self.address == address:
            self.address = None


# Overrides redis-py's private _connection_arguments/_connect (redis is pinned below 9 for that).
class RememberingConnection(Connection):
    memo: ClassVar[AddressMemo]

    def _connection_arguments(self) -> Mapping[str, Any]:
        arguments = dict(super()._connection_arguments())
        if self.memo.address is not None:
            arguments["host"] = self.memo.address
        return arguments

    async def _connect(self) -> None:
        tried = self.memo.address
        try:
            await super()._connect()  # type: ignore[no-untyped-call]
        except (TimeoutError, OSError):
            if tried is not None:
                self.memo.forget(tried)
            raise
        peer = self._writer.get_extra_info("peername") if self._writer else None
        if tried is None and peer:
            self.memo.learn(str(peer[0]))


def remembering_options(url: str) -> dict[str, Any]:
    """`connection_class` for a client of `url` (one memo per client), or nothing when the URL
    needs no lookup or keeps redis-py's own connection class."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        return {}
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        pass
    else:
        return {}
    connection_class = type(
        "RememberingConnection", (RememberingConnection,), {"memo": AddressMemo()}
    )
    return {"connection_class": connection_class}
