"""The durable outbox: every outgoing message is written here before its first attempt, and stays
until it was accepted (data channel ACK or relay-service's 2xx) or refused for good.

SQLite (the standard library's): a file in the directory the app gives (`outbox_dir`), so queued
messages survive a process restart; in memory when it gives none. Messages leave in send order
per conversation; each keeps its messageId through every attempt, so relay-service and the
recipient deduplicate a retry that had in fact arrived.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rtc_client.model import Transport

MessageState = Literal["queued", "sent", "failed"]
# Settled messages kept for `messages()` (older ones are deleted as new ones settle).
KEEP_SETTLED = 1000

# relay-service's answers: what to do next.
RETRY_STATUS = frozenset({0, 408, 425, 429, 500, 502, 503, 504, 507})


@dataclass(frozen=True)
class OutgoingMessage:
    """One message the app sent, as the outbox holds it: `queued` until accepted (`sent`, with
    its transport) or refused for good (`failed`, with the server's code)."""

    message_id: str
    to: str
    conv_id: str
    payload: str
    state: MessageState
    transport: Transport | None = None
    error: str | None = None
    attempts: int = 0


def retry_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Capped exponential backoff with jitter (half to full of the step), never before a server's
    Retry-After."""
    step = min(cap, base * (2 ** min(attempt, 30)))
    delay = random.uniform(step / 2, step)
    return max(delay, retry_after or 0.0)


class OutboxStore:
    def __init__(self, directory: str | Path | None, wallet: str) -> None:
        if directory is None:
            target = ":memory:"
        else:
            # Message payloads: the folder and the file are the user's only (SQLite gives its
            # -wal and -shm files the database file's permissions).
            folder = Path(directory)
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = folder / f"outbox-{wallet}.sqlite3"
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            path.chmod(0o600)
            target = str(path)
        self.path = target
        self._settled_since_prune = 0
        self._db = sqlite3.connect(target, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # A message the app was told is queued must be on disk: fsync at every commit.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                message_id TEXT NOT NULL UNIQUE,
                recipient TEXT NOT NULL,
                conv_id TEXT NOT NULL,
                payload TEXT NOT NULL,
                state TEXT NOT NULL,
                transport TEXT,
                error TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                updated_at REAL NOT NULL)"""
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_queued ON outbox (state, conv_id, seq)")
        self._prune()

    def _prune(self) -> None:
        """Settled messages beyond the last KEEP_SETTLED are forgotten."""
        self._settled_since_prune = 0
        self._db.execute(
            "DELETE FROM outbox WHERE state != 'queued' AND seq NOT IN "
            "(SELECT seq FROM outbox WHERE state != 'queued' ORDER BY seq DESC LIMIT ?)",
            (KEEP_SETTLED,),
        )

    def add(self, to: str, conv_id: str, message_id: str, payload: str) -> OutgoingMessage:
        """Stored (and on disk) when this returns; a messageId already here is not added again."""
        self._db.execute(
            "INSERT OR IGNORE INTO outbox (message_id, recipient, conv_id, payload, state,"
            " updated_at) VALUES (?, ?, ?, ?, 'queued', ?)",
            (message_id, to, conv_id, payload, time.time()),
        )
        message = self.get(message_id)
        assert message is not None
        return message

    def get(self, message_id: str) -> OutgoingMessage | None:
        row = self._db.execute(
            "SELECT * FROM outbox WHERE message_id = ?", (message_id,)
        ).fetchone()
        return _message(row) if row else None

    def queued(self, conv_id: str | None = None) -> list[OutgoingMessage]:
        """Queued messages in send order (of one conversation, or all)."""
        if conv_id is None:
            rows = self._db.execute("SELECT * FROM outbox WHERE state = 'queued' ORDER BY seq")
        else:
            rows = self._db.execute(
                "SELECT * FROM outbox WHERE state = 'queued' AND conv_id = ? ORDER BY seq",
                (conv_id,),
            )
        return [_message(row) for row in rows]

    def messages(self) -> list[OutgoingMessage]:
        rows = self._db.execute("SELECT * FROM outbox ORDER BY seq")
        return [_message(row) for row in rows]

    def settle(
        self,
        message_id: str,
        state: MessageState,
        *,
        transport: Transport | None = None,
        error: str | None = None,
        attempts: int,
    ) -> OutgoingMessage:
        self._db.execute(
            "UPDATE outbox SET state = ?, transport = ?, error = ?, attempts = ?, updated_at = ?"
            " WHERE message_id = ?",
            (state, transport, error, attempts, time.time(), message_id),
        )
        self._settled_since_prune += 1
        if self._settled_since_prune >= KEEP_SETTLED // 10:
            self._prune()
        message = self.get(message_id)
        assert message is not None
        return message

    def close(self) -> None:
        self._db.close()


def _message(row: sqlite3.Row) -> OutgoingMessage:
    return OutgoingMessage(
        message_id=row["message_id"],
        to=row["recipient"],
        conv_id=row["conv_id"],
        payload=row["payload"],
        state=row["state"],
        transport=row["transport"],
        error=row["error"],
        attempts=row["attempts"],
    )
