"""One logging setup for every service: JSON lines on stderr, with the request id.

Defence in depth: whatever a caller passes, anything shaped like a JWT, a Basic/Bearer
credential or a `secret=`/`credential=` pair is masked before the line is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .context import request_id_var

_REDACTIONS = (
    # JWTs and any other three-part base64url token.
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)\b(secret|password|credential|token|api_key|apikey)([\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
    ),
)
_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def redact(text: str) -> str:
    for pattern in _REDACTIONS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
        elif pattern.groups == 1:
            text = pattern.sub(lambda m: f"{m.group(1)} [redacted]", text)
        else:
            text = pattern.sub("[redacted]", text)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id != "-":
            entry["requestId"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key != "request_id" and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            # The exception type only: tracebacks can carry request data and secrets.
            entry["exc"] = record.exc_info[0].__name__ if record.exc_info[0] else "Exception"
        return redact(json.dumps(entry, default=str, separators=(",", ":")))


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own low-level error logger prints tracebacks of bad requests; keep it quiet.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


class JsonAccessLogger(AbstractAccessLogger):
    """Access lines without the query string (it may carry tokens) and with the request id."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        from .web import REQUEST_ID_KEY  # local import: web imports this module

        self.logger.info(
            "request",
            extra={
                "request_id": request.get(REQUEST_ID_KEY, "-"),
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "durationMs": round(time_ * 1000, 2),
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
