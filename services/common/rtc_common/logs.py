"""One logging setup for every service: JSON lines on stderr, with the request id.

Defence in depth: whatever a caller passes, anything shaped like a JWT, a Basic/Bearer
credential or a `secret=`/`credential=` pair is masked before the line is written.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import re
import secrets
import sys
import threading
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .auth import IDENTITY_KEY
from .context import request_id_var
from .keys import REQUEST_ID_KEY, STARTED_KEY, route_label
from .times import iso_ms

_REDACTIONS = (
    # JWTs and any other three-part base64url token.
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)(secret|password|credential|token|api_key|apikey)([\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
    ),
)
_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


# Words without which no redaction can apply: most lines (every access line) have none, and
# plain substring checks on the lowered line cost far less than the substitutions (or a single
# case-insensitive alternation regex, which Python's re scans position by position).
_SUSPECT_WORDS = (
    "eyj", "bearer", "basic", "secret", "password", "credential", "token", "api_key", "apikey",
)  # fmt: skip


def redact(text: str) -> str:
    lowered = text.lower()
    if not any(word in lowered for word in _SUSPECT_WORDS):
        return text
    for pattern in _REDACTIONS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
        elif pattern.groups == 1:
            text = pattern.sub(lambda m: f"{m.group(1)} [redacted]", text)
        else:
            text = pattern.sub("[redacted]", text)
    return text


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes lines in batches: at most every `interval` seconds, at once for WARNING and up.

    One write per log line is a measurable share of a request's cost (docs/benchmarks.md).
    A kill -9 can lose the last `interval` seconds of INFO lines; warnings
    and errors are never held back, and a normal exit flushes everything.
    """

    def __init__(self, stream: Any, interval: float = 0.2, max_lines: int = 512) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._interval = interval
        self._max_lines = max_lines
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_periodically, daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(line, record.levelno)

    def write_line(self, line: str, levelno: int) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
            if levelno >= logging.WARNING or len(self._pending) >= self._max_lines:
                self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # the stream is gone (shutdown); nothing better to do with log lines

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()


# Until set_pseudonym_key runs (run_service does, from LOG_PSEUDONYM_KEY): a random key, so a
# pseudonym is never the bare hash of an address, which hashing known addresses would reverse.
_pseudonym_key = secrets.token_bytes(32)


def set_pseudonym_key(key: bytes | None) -> None:
    """The key of `wallet_hash`; None: a new random one (pseudonyms then hold for this process)."""
    global _pseudonym_key
    _pseudonym_key = key if key is not None else secrets.token_bytes(32)
    wallet_hash.cache_clear()


# Cached: an HMAC per logged event was a measured share of a signal's cost, and the same
# wallets log many lines (bounded, so a flood of distinct wallets holds at most this many).
@functools.lru_cache(maxsize=4096)
def wallet_hash(wallet: str) -> str:
    """A short pseudonym for a wallet in logs (an HMAC under LOG_PSEUDONYM_KEY): lines of one
    user can be correlated without the wallet being written or recoverable from the log."""
    return hmac.digest(_pseudonym_key, wallet.encode(), "sha256").hex()[:16]


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        fields = {
            key: value
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRS and key != "request_id" and not key.startswith("_")
        }
        if record.exc_info:
            # The exception type only: tracebacks can carry request data and secrets.
            fields["exc"] = record.exc_info[0].__name__ if record.exc_info[0] else "Exception"
        return self.line(
            record.created, record.levelname, record.name, record.getMessage(), request_id, fields
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        msg: str,
        request_id: str,
        fields: dict[str, Any],
    ) -> str:
        entry: dict[str, Any] = {
            "ts": iso_ms(created),
            "level": level,
            "service": self.service,
            "logger": logger,
            "msg": msg,
        }
        if request_id != "-":
            entry["requestId"] = request_id
        entry.update(fields)
        try:
            text = orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:  # what orjson refuses (e.g. an int beyond 64 bits)
            text = json.dumps(entry, default=str, separators=(",", ":"))
        return redact(text)


# The handler setup_logging installed: access lines go to it directly (see JsonAccessLogger).
_ROOT_HANDLER: BufferedLineHandler | None = None


def info_line(
    logger: logging.Logger, msg: str, fields: dict[str, Any], *, request_id: str | None = None
) -> None:
    """`logger.info(msg, extra=fields)`, the same line, for the per-request/per-event lines.

    When the setup is the one setup_logging made (the logger has no handler of its own, the root
    has only ours), the line goes straight to the handler: building a LogRecord and walking the
    logger tree was a measured share of a request's cost. Anything else (a test's capture
    handler, another setup) takes the standard path.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _ROOT_HANDLER
    formatter = handler.formatter if handler is not None else None
    if (
        handler is None
        or not isinstance(formatter, JsonFormatter)
        or logger.handlers
        or not logger.propagate
        or logging.getLogger().handlers != [handler]
    ):
        extra = dict(fields) if request_id is None else {**fields, "request_id": request_id}
        logger.info(msg, extra=extra)
        return
    if request_id is None:
        request_id = request_id_var.get()
    line = formatter.line(time.time(), "INFO", logger.name, msg, request_id, fields)
    handler.write_line(line, logging.INFO)


def setup_logging(service: str, level: str = "INFO") -> None:
    global _ROOT_HANDLER
    if _ROOT_HANDLER is not None:
        _ROOT_HANDLER.close()  # writes what it holds and stops its flusher thread
    handler = _ROOT_HANDLER = BufferedLineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own low-level error logger prints tracebacks of bad requests; keep it quiet.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


class JsonAccessLogger(AbstractAccessLogger):
    """One line per request: request id, method, path (never the query string: it may carry
    tokens), route template, status, latency and the caller's wallet hash (never the wallet)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        started = request.get(STARTED_KEY)
        if started is not None:
            time_ = time.perf_counter() - started

        extra: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "route": route_label(request) if isinstance(request, web.Request) else "unmatched",
            "status": response.status,
            "durationMs": round(time_ * 1000, 3),
        }
        identity = request.get(IDENTITY_KEY)
        if identity is not None:
            extra["walletHash"] = wallet_hash(identity.wallet)
        info_line(self.logger, "request", extra, request_id=request.get(REQUEST_ID_KEY, "-"))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
