"""Ending a revoked wallet's TURN sessions on coturn, through coturn's admin CLI.

A TURN REST credential stays valid at coturn until the expiry in its username, whatever happens
here: a revoked wallet's clients could keep relaying, and allocate again, with credentials issued
before the revoke. So, from the revoke until TURN_CRED_TTL has passed (every credential issued
before it has expired by then) or the revocation ends, every SWEEP_SECONDS the wallet's sessions
are listed (`psp :<wallet>`) and those whose username expires no later than revoke + TTL (the
pre-revoke credentials) are cancelled (`cs <id>`). The ICE route issues none while the wallet is
revoked (403 `revoked`); after a timed revocation the new credentials expire later and are left
alone.

The CLI is a password-protected telnet-style interface (`cli-ip`, `cli-port`, `cli-password` in
turnserver.conf); docs/operating.md says where it listens in each deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator

from rtc_common.revocation import Revocation, Revocations

from .metrics import TURN_ADMIN_FAILURES, TURN_SESSIONS_ENDED

log = logging.getLogger("ice.turn_revoke")

SWEEP_SECONDS = 0.5
CLI_TIMEOUT_SECONDS = 3.0  # per connection and per command
# A sweep reads at most this much of one answer (coturn's per-user quota bounds it well below).
CLI_ANSWER_MAX_BYTES = 1024 * 1024
# `    1) id=000000000000000001, user <1796654233:0xabc>:`
_SESSION = re.compile(rb"\bid=([0-9]+), user <([0-9]+):([^>\r\n]*)>")
PROMPT = b"> "  # (in a session line a username's `>` is followed by `:`, never a space)
# Telnet negotiation (IAC WILL/WONT/DO/DONT <option>) coturn sends around its prompts.
_TELNET = re.compile(rb"\xff[\xfb-\xfe].")


class CoturnCli:
    """One connection per sweep to coturn's admin CLI at `host:port`."""

    def __init__(self, address: str, password: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self._password = password.encode()

    async def sessions(self, wallet: str) -> list[tuple[bytes, int]]:
        """(session id, username expiry) of `wallet`'s sessions."""
        async with self._connected() as (reader, writer):
            return await self._list(reader, writer, wallet)

    async def end_sessions(self, wallets: list[tuple[str, float]]) -> int:
        """Cancel the sessions whose REST username is `<expiry>:<wallet>` with `expiry` at most
        the wallet's bound, for each (wallet, bound) in order. Returns how many were
        cancelled."""
        ended = 0
        async with self._connected() as (reader, writer):
            for wallet, bound in wallets:
                for session_id, expiry in await self._list(reader, writer, wallet):
                    if expiry <= bound:
                        await self._command(reader, writer, b"cs " + session_id)
                        ended += 1
        return ended

    @contextlib.asynccontextmanager
    async def _connected(
        self,
    ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """A CLI connection, logged in."""
        async with asyncio.timeout(CLI_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            async with asyncio.timeout(CLI_TIMEOUT_SECONDS):
                await self._read(reader, b"Enter password: ")
                writer.write(self._password + b"\r\n")
                await self._read(reader, PROMPT)
            yield reader, writer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _list(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wallet: str
    ) -> list[tuple[bytes, int]]:
        """`psp :<wallet>` (it matches substrings), kept to the sessions of exactly `wallet`."""
        answer = await self._command(reader, writer, b"psp :" + wallet.encode())
        return [
            (session_id, int(expiry))
            for session_id, expiry, user in _SESSION.findall(answer)
            if user.decode(errors="replace") == wallet
        ]

    async def _command(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: bytes
    ) -> bytes:
        async with asyncio.timeout(CLI_TIMEOUT_SECONDS):
            writer.write(command + b"\r\n")
            await writer.drain()
            return await self._read(reader, PROMPT)

    @staticmethod
    async def _read(reader: asyncio.StreamReader, until: bytes) -> bytes:
        data = b""
        # coturn may end a prompt with a line break, or send none after the password prompt.
        while not _TELNET.sub(b"", data).rstrip(b"\r\n").endswith(until):
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("coturn's CLI closed the connection (wrong password?)")
            data += chunk
            if len(data) > CLI_ANSWER_MAX_BYTES:
                raise ConnectionError("coturn's CLI answer is too long")
        return _TELNET.sub(b"", data)


class TurnRevoker:
    """Keeps ending revoked wallets' TURN sessions until their pre-revoke credentials expired."""

    def __init__(self, cli: CoturnCli, revocations: Revocations, cred_ttl: float) -> None:
        self._cli = cli
        self._ttl = cred_ttl
        # wallet -> (the latest expiry a pre-revoke credential can carry, when to stop sweeping)
        self._until: dict[str, tuple[float, float]] = {}
        self._sweeps = 0
        self._wake = asyncio.Event()
        revocations.subscribe(self.on_revocation)
        for wallet, revocation in revocations.items():
            self.on_revocation(wallet, revocation)

    def on_revocation(self, wallet: str, revocation: Revocation | None) -> None:
        if revocation is None:
            self._until.pop(wallet, None)
            return
        # +1 s: coturn compares the username's expiry with its own clock, to the second.
        bound = revocation.at + self._ttl + 1
        until = bound if revocation.until is None else min(bound, revocation.until)
        if until > time.time():
            self._until[wallet] = (bound, until)
            self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._until:
                self._wake.clear()
                await self._wake.wait()
            now = time.time()
            for wallet in [w for w, (_, until) in self._until.items() if until <= now]:
                del self._until[wallet]
            if self._until:
                # A different wallet first each sweep: a slow CLI cannot starve the last ones.
                order = sorted(self._until)
                self._sweeps += 1
                start = self._sweeps % len(order)
                order = order[start:] + order[:start]
                try:
                    ended = await self._cli.end_sessions([(w, self._until[w][0]) for w in order])
                except (OSError, TimeoutError, ValueError) as exc:
                    TURN_ADMIN_FAILURES.inc()
                    log.warning("coturn's admin CLI failed", extra={"error": type(exc).__name__})
                else:
                    if ended:
                        TURN_SESSIONS_ENDED.inc(ended)
                        log.info("revoked TURN sessions ended", extra={"sessions": ended})
            await asyncio.sleep(SWEEP_SECONDS)
