"""Each signal-service instance's /readyz, and its Redis pub/sub listener in it."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from .http_get import http_get
from .rendering import Result
from .target import Target


async def check_signal(target: Target, session: aiohttp.ClientSession) -> list[Result]:
    if not target.signal_urls:
        return [
            Result(
                "SKIP",
                "signal pub/sub",
                "no signal instance known: pass --signal URL for each instance (its own port,"
                " /readyz is not routed by the gateway)",
            )
        ]
    checks = await asyncio.gather(
        *(_signal_instance(u, target, session) for u in target.signal_urls)
    )
    return list(checks)


async def _signal_instance(url: str, target: Target, session: aiohttp.ClientSession) -> Result:
    readyz = url if url.endswith("/readyz") else f"{url}/readyz"
    name = f"signal {url.removeprefix('http://').removesuffix('/readyz')} pub/sub"
    try:
        status, body = await http_get(session, readyz, target.timeout)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(
            "FAIL",
            name,
            f"{readyz} unreachable ({type(exc).__name__})",
            "start that signal-service instance (or correct --signal / stack.json)",
        )
    try:
        checks = json.loads(body).get("checks") or {}
    except (ValueError, AttributeError):
        checks = {}
    pubsub = checks.get("pubsub")
    others = ", ".join(f"{k}: {v}" for k, v in checks.items() if k != "pubsub" and v != "ok")
    if pubsub == "ok":
        detail = f"/readyz {status}: pubsub ok" + (f"; also failing: {others}" if others else "")
        return Result("PASS" if status == 200 else "WARN", name, detail)
    if pubsub is None:
        return Result(
            "FAIL",
            name,
            f"/readyz {status} reports no pubsub check",
            "is this a signal-service instance? pass its own URL with --signal",
        )
    return Result(
        "FAIL",
        name,
        f"/readyz {status}: pubsub {pubsub}" + (f"; {others}" if others else ""),
        "its Redis pub/sub listener does not receive its own messages: check REDIS_URL from"
        " that instance; it resubscribes by itself, restart it if it stays failed",
    )
