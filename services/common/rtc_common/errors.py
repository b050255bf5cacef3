"""The one error envelope: `{"error": code, "message": text, "requestId": id}`."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from .context import request_id_var
from .responses import json_response

STATUS_BY_CODE: dict[str, int] = {
    "unauthorized": 401,
    "csrf_failed": 403,
    "forbidden": 403,
    "feature_disabled": 403,
    "revoked": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "invalid_payload": 400,
    "payload_too_large": 413,
    "rate_limited": 429,
    "queue_full": 507,
    "ice_unavailable": 503,
    "unavailable": 503,
    "internal": 500,
}


class ApiError(Exception):
    """An error with a stable code; the middleware renders it as the envelope."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else STATUS_BY_CODE.get(code, 400)
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message, "requestId": request_id_var.get()}


def error_response(
    code: str,
    message: str,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return json_response(
        error_body(code, message),
        status=status if status is not None else STATUS_BY_CODE.get(code, 400),
        headers=headers,
    )


def unauthorized(message: str = "authentication required") -> ApiError:
    return ApiError("unauthorized", message)


def invalid_payload(message: str) -> ApiError:
    return ApiError("invalid_payload", message)


def unavailable(message: str = "a dependency is unavailable, retry later") -> ApiError:
    return ApiError("unavailable", message)
