"""JSON answers: every service's bodies are encoded here, with orjson.

aiohttp's `json_response` encodes with the standard library's `json` and then encodes the text
again to bytes; orjson writes the bytes directly, a measured share of an ICE answer's cost
(docs/benchmarks.md). The body is compact JSON, `Content-Type: application/json; charset=utf-8`
as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )
