"""JSON request bodies with a nesting limit.

Bodies are already bounded in size (the gateway's `client_max_body_size`, aiohttp's
`client_max_size`); depth is bounded here so that no payload can nest deeper than any real
client needs (a relay message, a telemetry event, a signal: three or four levels).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .errors import invalid_payload

MAX_JSON_DEPTH = 32


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` nests lists/objects more than `limit` levels (iteratively, no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


async def read_json(request: web.Request, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The request body as JSON, or 400 invalid_payload (malformed, or nested too deeply)."""
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: nesting deeper than the decoder's stack (e.g. "[" * 100000).
        raise invalid_payload("body must be JSON") from None
    if too_deep(data, max_depth):
        raise invalid_payload(f"JSON nested deeper than {max_depth} levels")
    return data


def error_fields(exc: ValidationError, whole: str = "body") -> str:
    """The fields a validation failed on, sorted ("a, b.c"; `whole` for the object itself), never
    their values."""
    return ", ".join(sorted({".".join(str(p) for p in e["loc"]) or whole for e in exc.errors()}))


ModelT = TypeVar("ModelT", bound=BaseModel)


async def parse_body(request: web.Request, model: type[ModelT]) -> ModelT:
    """The request's JSON object as `model`, or 400 invalid_payload naming the bad fields."""
    data = await read_json(request)
    if not isinstance(data, dict):
        raise invalid_payload("body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_payload(f"invalid fields: {error_fields(exc)}") from None
