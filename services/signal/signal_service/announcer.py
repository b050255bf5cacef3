"""Presence announcements: who is told when a wallet comes online or goes offline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from rtc_common.errors import ApiError
from rtc_common.times import iso_ms

from .metrics import LEGACY_USED, PRESENCE_CHANGES
from .settings import SignalSettings
from .sockets import SignalDeps

log = logging.getLogger("signal.presence")


@dataclass
class _Debounced:
    """A wallet's open presence debounce window."""

    announced: bool  # the state announced when the window opened
    pending: bool | None = None  # the latest transition seen within it
    changes: int = 0  # transitions seen within it
    timer: asyncio.TimerHandle | None = None


class Announcer:
    """Fans presence changes out to the wallet's online mutual contacts, debounced per wallet.

    Changes that cannot be announced (directory or Redis down) wait in `pending` for the
    watchdog's `retry_pending`.
    """

    def __init__(self, settings: SignalSettings, deps: Callable[[], SignalDeps], sio: Any) -> None:
        self.settings = settings
        self._deps = deps
        self._sio = sio
        # wallet -> its presence debounce window (open while the wallet is in it)
        self._debounce: dict[str, _Debounced] = {}
        # wallet -> online: presence changes that could not be announced yet (directory down).
        self.pending: dict[str, bool] = {}

    async def retry_pending(self) -> None:
        """Announce the waiting changes that are still true (the wallet may be back)."""
        presence = self._deps().presence
        for wallet, online in list(self.pending.items()):
            if bool(await presence.online([wallet])) == online:
                await self.announce(wallet, online=online)
            else:
                self.pending.pop(wallet, None)

    async def announce(
        self, wallet: str, *, online: bool, contacts: list[str] | None = None
    ) -> None:
        """Tell the wallet's online mutual contacts that it came online or went offline.

        The first transition goes out at once; later ones within PRESENCE_DEBOUNCE_SECONDS are
        coalesced, and when the window closes the latest state goes out if it differs from the
        one announced (a flapping client costs one fan-out per window, not one per flap).
        """
        window = self.settings.presence_debounce_seconds
        entry = self._debounce.get(wallet)
        if entry is not None:
            entry.pending = online
            entry.changes += 1
            return
        if window > 0:
            entry = _Debounced(announced=online)
            self._debounce[wallet] = entry
            entry.timer = asyncio.get_running_loop().call_later(window, self._window_closed, wallet)
        await self._fan_out(wallet, online=online, contacts=contacts)

    def _window_closed(self, wallet: str) -> None:
        entry = self._debounce.get(wallet)
        if entry is None or entry.pending is None:
            self._debounce.pop(wallet, None)
            return
        self._sio.start_background_task(self._settle, wallet, entry)

    async def _settle(self, wallet: str, entry: _Debounced) -> None:
        """Announce the wallet's state at the window's end if it is not the one announced.

        Read from presence rather than taken from the last transition seen: a connect's
        announcement runs in the background and can arrive after the disconnect that followed.
        """
        for _ in range(3):  # a transition during the read: read again
            seen = entry.changes
            try:
                online = bool(await self._deps().presence.online([wallet]))
            except RedisError:
                online = bool(entry.pending)
            if entry.changes == seen:
                break
        if self._debounce.get(wallet) is entry:
            del self._debounce[wallet]
        if online != entry.announced:
            await self.announce(wallet, online=online)

    async def _fan_out(
        self, wallet: str, *, online: bool, contacts: list[str] | None = None
    ) -> None:
        deps = self._deps()
        try:
            if contacts is None:
                contacts = await deps.presence.online(await deps.access.mutual_contacts(wallet))
        except (ApiError, RedisError) as exc:
            # Kept for the watchdog to retry: a lost offline event would leave contacts
            # believing the wallet is online.
            self.pending[wallet] = online
            log.warning("presence change not announced yet", extra={"error": type(exc).__name__})
            return
        self.pending.pop(wallet, None)
        PRESENCE_CHANGES.labels("online" if online else "offline").inc()
        update = {"wallet": wallet, "online": online, "at": iso_ms(time.time())}
        legacy = self.settings.presence_legacy_enabled
        # One emit per event for all the contacts' rooms: one pub/sub message each, where a
        # per-contact loop published 500 (x3 with the legacy events) for 500 online contacts.
        rooms = [f"user:{contact}" for contact in contacts]
        if rooms:
            await self._sio.emit("presence:update", update, room=rooms)
            if legacy:
                await self._sio.emit("presence", {"wallet": wallet, "online": online}, room=rooms)
                await self._sio.emit(
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
