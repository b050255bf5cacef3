"""Each service instance's own view of its dependencies: `/healthz/deps` (state, since when,
required or not) on its own port."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from .http_get import http_get
from .rendering import Result
from .target import Target

# What to look at when a dependency is down.
FIXES = {
    "redis": "check REDIS_URL (and REDIS_PASSWORD) from that instance; is Redis up?",
    "relay_store": "check RELAY_REDIS_URL from that instance; is the relay's Redis up?",
    "directory": "check DIRECTORY_URL (MongoDB or Redis) from that instance",
    "provider": "the ICE provider's variables are missing: see the config checks above",
    "pubsub": "its Redis pub/sub listener does not hear itself: see the signal pub/sub check",
    "revocations": "it never read the revoked set: Redis (REDIS_URL) was unreachable since start",
}


async def check_services(target: Target, session: aiohttp.ClientSession) -> list[Result]:
    instances = [*target.service_urls, *(("signal", url) for url in target.signal_urls)]
    if not instances:
        return [
            Result(
                "SKIP",
                "service dependencies",
                "no instance known: pass --ice, --relay and --signal URLs (their own ports)",
            )
        ]
    return list(await asyncio.gather(*(_instance(k, u, target, session) for k, u in instances)))


async def _instance(kind: str, url: str, target: Target, session: aiohttp.ClientSession) -> Result:
    name = f"{kind} {url.removeprefix('http://')} dependencies"
    try:
        status, body = await http_get(session, f"{url}/healthz/deps", target.timeout)
        report: Any = json.loads(body)
        dependencies: dict[str, Any] = report["dependencies"]
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(
            "FAIL",
            name,
            f"{url}/healthz/deps unreachable ({type(exc).__name__})",
            f"start that {kind}-service instance (or correct its URL)",
        )
    except (ValueError, KeyError, TypeError):
        return Result("FAIL", name, f"/healthz/deps answered {status} without a report", "")
    down = {n: d for n, d in dependencies.items() if d.get("state") != "up"}
    up = ", ".join(sorted(n for n in dependencies if n not in down))
    if not down:
        return Result("PASS", name, f"ready; up: {up}")

    def described(dep: str) -> str:
        info = down[dep]
        error = f", {info['error']}" if info.get("error") else ""
        return f"{dep} down since {info.get('since', '?')}{error}"

    required = sorted(n for n, d in down.items() if d.get("required"))
    optional = sorted(n for n in down if n not in required)
    fixes = "; ".join(FIXES.get(n, f"check {n}") for n in [*required, *optional])
    if required:
        detail = "NOT READY: " + "; ".join(described(n) for n in [*required, *optional])
        return Result("FAIL", name, detail, fixes)
    detail = "ready, degraded: " + "; ".join(described(n) for n in optional)
    return Result("WARN", name, detail, fixes)
