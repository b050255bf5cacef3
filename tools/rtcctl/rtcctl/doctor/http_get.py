"""One HTTP GET with a deadline (the gateway's routes, the signal instances' /readyz)."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp


async def http_get(
    session: aiohttp.ClientSession,
    url: str,
    limit: float,
    headers: Mapping[str, str] | None = None,
    cookies: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    cookie_header = "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())
    all_headers = dict(headers or {})
    if cookie_header:
        all_headers["Cookie"] = cookie_header
    async with session.get(
        url, headers=all_headers, timeout=aiohttp.ClientTimeout(total=limit)
    ) as response:
        return response.status, await response.read()
