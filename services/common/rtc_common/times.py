"""Times in bodies are ISO-8601 UTC with milliseconds, e.g. 2026-11-29T02:47:12.123Z."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_ms(unix_seconds: float) -> str:
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
