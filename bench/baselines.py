"""The framework's ceilings: the same answers with nothing of the product in between.

`python -m bench.baselines` serves, on PORT:
- GET  /bench/bare/ice    the JSON in BENCH_ICE_BODY (an ice-service answer of the same size),
- POST /bench/bare/relay  one XADD of the posted message to Redis (REDIS_URL), 202,
- GET  /healthz.
No auth, no validation, no rate limit, no logging: what a bare aiohttp handler costs.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import uvloop
from aiohttp import web
from rtc_common.clients import as_text

REDIS = web.AppKey("redis", aioredis.Redis)


async def ice(request: web.Request) -> web.Response:
    return web.Response(body=request.app["ice_body"], content_type="application/json")


async def relay(request: web.Request) -> web.Response:
    message = json.loads(await request.read())
    entry_id = await request.app[REDIS].xadd(f"bare:{message['to']}", {"m": json.dumps(message)})
    return web.json_response({"id": as_text(entry_id)}, status=202)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app() -> web.Application:
    app = web.Application()
    app["ice_body"] = os.environ.get("BENCH_ICE_BODY", "{}").encode()

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        app[REDIS] = aioredis.from_url(os.environ["REDIS_URL"])
        yield
        await app[REDIS].aclose()

    app.cleanup_ctx.append(redis_ctx)
    app.router.add_get("/bench/bare/ice", ice)
    app.router.add_post("/bench/bare/relay", relay)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    return app


def serve(app: web.Application) -> None:
    """Run a baseline on PORT (loopback), uvloop, no access log: the framework at its best."""
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    serve(create_app())
