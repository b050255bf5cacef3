"""Health routes on each service's own port: `/healthz` (liveness), `/readyz` (readiness: it can
answer its routes now, degraded modes included) and `/healthz/deps` (every dependency's state
and since when).

Services register each dependency with `add_dependency(app, name, check, required=...)`: a
required one failing makes the service not ready (it cannot answer at all: relay-service without
its store, signal-service without Redis or its pub/sub listener, any service that never read the
revoked set); an optional one failing is a degraded mode the service answers through (ice-service
on its fallback limiter or without a provider, a directory past its stale window answering 503
per request). Each probe run records the state; `since` is when this process first saw it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

from .errors import error_body
from .keys import DEPENDENCIES_KEY, READINESS_KEY, ReadinessCheck
from .metrics import READY, READY_CHECK
from .responses import json_response
from .sampling import READINESS_TIMEOUT, Sampler
from .times import iso_ms


@dataclass
class DependencyState:
    up: bool
    since: float
    error: str | None = None


STATES_KEY = web.AppKey("rtc_dependency_states", dict[str, DependencyState])


async def _probe(check: ReadinessCheck) -> str | None:
    """None when the check passes, else the failure's type name."""
    try:
        async with asyncio.timeout(READINESS_TIMEOUT):
            await check()
    except Exception as exc:  # a probe reports any failure, it must not raise
        return type(exc).__name__
    return None


async def probe_dependencies(app: web.Application) -> dict[str, DependencyState]:
    """Every dependency, concurrently; the states (and since when) are kept in the app."""
    checks = app[DEPENDENCIES_KEY]
    names = list(checks)
    errors = await asyncio.gather(*(_probe(checks[n]) for n in names))
    states = app[STATES_KEY]
    now = time.time()
    for name, error in zip(names, errors, strict=True):
        state = states.get(name)
        if state is None or state.up != (error is None):
            states[name] = DependencyState(error is None, now, error)
        else:
            state.error = error
    return {name: states[name] for name in names}


async def run_readiness(app: web.Application) -> dict[str, str]:
    """The required dependencies: name -> "ok" or "failed: <type>" (all are probed)."""
    states = await probe_dependencies(app)
    return {
        name: "ok" if states[name].up else f"failed: {states[name].error}"
        for name in app[READINESS_KEY]
    }


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    app = request.app
    results = await run_readiness(app)
    failing = [name for name, result in results.items() if result != "ok"]
    degraded = sorted(
        name
        for name, state in app[STATES_KEY].items()
        if not state.up and name not in app[READINESS_KEY]
    )
    if failing:
        body = {**error_body("unavailable", "not ready: " + ", ".join(failing)), "checks": results}
        return json_response(body, status=503)
    return json_response({"status": "ready", "checks": results, "degraded": degraded})


async def _deps(request: web.Request) -> web.Response:
    app = request.app
    states = await probe_dependencies(app)
    required = app[READINESS_KEY]
    body = {
        "ready": all(states[name].up for name in required),
        "dependencies": {
            name: {
                "state": "up" if state.up else "down",
                "since": iso_ms(state.since),
                "required": name in required,
                **({"error": state.error} if state.error else {}),
            }
            for name, state in states.items()
        },
    }
    return json_response(body)


def readiness_sampler(app: web.Application) -> Sampler:
    async def sample() -> None:
        results = await run_readiness(app)
        for name, state in app[STATES_KEY].items():
            READY_CHECK.labels(name).set(1 if state.up else 0)
        READY.set(1 if all(r == "ok" for r in results.values()) else 0)

    return sample


def add_health_routes(app: web.Application) -> None:
    app[STATES_KEY] = {}
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/healthz/deps", _deps)
