"""The HTTP routes the client calls through the gateway, each with `Authorization: Bearer`:
ICE, relay enqueue / pull / ack, telemetry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from multidict import CIMultiDict

from rtc_client.errors import RtcClientError
from rtc_client.model import Transport, conv_id, normalize_wallet

log = logging.getLogger("rtc_client")

_RETRYABLE_STATUS = {429, 502, 503, 504}
_CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")


def http_error(status: int, data: Any, what: str) -> RtcClientError:
    code = data.get("error") if isinstance(data, dict) else None
    return RtcClientError(str(code or f"http_{status}"), f"{what} answered {status}", status)


class HttpApi:
    def __init__(
        self,
        base_url: str,
        token: str,
        wallet: str,
        *,
        session: aiohttp.ClientSession | None = None,
        local_addr: str | None = None,
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.wallet = wallet
        self.telemetry_sent: list[dict[str, Any]] = []
        # Asks the app for a fresh token (its token provider); None: a 401 is final.
        self.renew: Callable[[], Awaitable[str]] | None = None
        self._renewing: asyncio.Task[str] | None = None
        self._session = session
        self._own_session = session is None
        self._local_addr = local_addr

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    def open(self) -> None:
        if self._session is None:
            connector = (
                aiohttp.TCPConnector(local_addr=(self._local_addr, 0))
                if self._local_addr
                else aiohttp.TCPConnector()
            )
            self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, data, _ = await self.request_with_headers(method, path, body)
        return status, data

    async def request_with_headers(
        self, method: str, path: str, body: Any = None
    ) -> tuple[int, Any, CIMultiDict[str]]:
        """One call; a 401 asks the token provider (if any) for a fresh token and is tried once
        more with it."""
        token = self.token
        answer = await self._once(method, path, body)
        if answer[0] == 401 and self.renew is not None:
            if self.token == token:  # not renewed meanwhile by a concurrent call
                await self.renew_token()
            answer = await self._once(method, path, body)
        return answer

    async def renew_token(self) -> str:
        """The token provider's fresh token, asked once for concurrent callers."""
        assert self.renew is not None
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.ensure_future(self.renew())
        self.token = await asyncio.shield(self._renewing)
        return self.token

    async def _once(self, method: str, path: str, body: Any) -> tuple[int, Any, CIMultiDict[str]]:
        async with self.session.request(
            method,
            self.base_url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            text = await response.text()
            try:
                data = await response.json(content_type=None) if text else None
            except ValueError:
                data = None
            return response.status, data, CIMultiDict(response.headers)

    async def fetch_ice(self) -> dict[str, Any]:
        """`GET /api/v1/rtc/ice`: the answer's body, parsed by the caller."""
        status, data = await self.request("GET", "/api/v1/rtc/ice")
        if status != 200 or not isinstance(data, dict):
            raise http_error(status, data, "ICE")
        return data

    async def post_telemetry(
        self, transport: Transport, candidate_type: str | None, forced: bool
    ) -> None:
        body: dict[str, Any] = {"transport": transport, "forced": forced}
        if candidate_type in _CANDIDATE_TYPES:
            body["candidateType"] = candidate_type
        try:
            status, _ = await self.request("POST", "/api/v1/rtc/telemetry", body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("telemetry not sent", extra={"error": type(exc).__name__})
            return
        if status == 204:
            self.telemetry_sent.append(body)
        else:
            log.warning("telemetry refused", extra={"status": status})

    async def relay_enqueue(
        self, to: str, message_id: str, payload: str, force: bool
    ) -> dict[str, Any]:
        """POST /api/v1/relay/enqueue (idempotent by messageId), retried 3 times on 429/5xx/no
        answer (the outbox retries for as long as it takes; this is the direct call)."""
        delay = 0.25
        for attempt in range(4):
            status, data, _ = await self.relay_enqueue_once(to, message_id, payload, force)
            if status in (200, 202) and isinstance(data, dict):
                return data
            if (status not in _RETRYABLE_STATUS and status != 0) or attempt == 3:
                raise http_error(status, data, "relay enqueue")
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def relay_enqueue_once(
        self, to: str, message_id: str, payload: str, force: bool
    ) -> tuple[int, Any, float | None]:
        """One enqueue attempt: (status, body, Retry-After seconds); status 0 when the gateway
        could not be reached."""
        to = normalize_wallet(to)
        body = {
            "to": to,
            "convId": conv_id(self.wallet, to),
            "messageId": message_id,
            "payload": payload,
            "force": force,
        }
        try:
            status, data, headers = await self.request_with_headers(
                "POST", "/api/v1/relay/enqueue", body
            )
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0, None, None
        retry_after: float | None = None
        with contextlib.suppress(ValueError):
            retry_after = float(headers.get("Retry-After", ""))
        return status, data, retry_after

    async def relay_pull(self, limit: int = 100) -> tuple[list[dict[str, Any]], bool]:
        """One page of the relay queue: its messages and whether more are waiting."""
        status, data = await self.request("GET", f"/api/v1/relay/pull?limit={limit}")
        if status != 200 or not isinstance(data, dict):
            raise http_error(status, data, "relay pull")
        messages = [m for m in data.get("messages", []) if isinstance(m, dict)]
        return messages, bool(data.get("more"))

    async def relay_ack(self, ids: list[str]) -> None:
        status, data = await self.request("POST", "/api/v1/relay/ack", {"ids": ids})
        if status != 200:
            raise http_error(status, data, "relay ack")
