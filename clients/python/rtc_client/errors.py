"""Errors of the SDK (messages never contain tokens or credentials)."""

from __future__ import annotations


class RtcClientError(Exception):
    def __init__(self, code: str, message: str = "", status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.status = status
