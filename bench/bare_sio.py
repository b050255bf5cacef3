"""Signaling ceiling in Python: python-socketio + AsyncRedisManager, a room emit, nothing else.

`python -m bench.bare_sio` on PORT with REDIS_URL. A client connects with auth {wallet} and joins
room user:<wallet>; event `signal` {to, ...} is emitted as `signal` to room user:<to> through the
Redis manager (so it crosses instances), with no auth, validation, dedup or rate limit.
Websockets without permessage-deflate, as signal-service and Node's socket.io (python-socketio's
own default accepts it: BARE_WS_COMPRESSION=1 measures that).
"""

from __future__ import annotations

import os
from typing import Any

import socketio
from aiohttp import web
from rtc_common.middlewares import refuse_websocket_compression

from bench.baselines import serve


def create_app() -> web.Application:
    manager = socketio.AsyncRedisManager(os.environ["REDIS_URL"], channel="bench-bare")
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=manager, cors_allowed_origins="*"
    )

    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
        await sio.enter_room(sid, f"user:{(auth or {}).get('wallet', sid)}")

    async def signal(sid: str, data: dict[str, Any]) -> None:
        await sio.emit("signal", data, room=f"user:{data['to']}")

    # Registered by call, not as decorators: socketio is untyped, and its decorators would
    # leave the handlers untyped.
    sio.on("connect", connect)
    sio.on("signal", signal)

    app = web.Application()
    if os.environ.get("BARE_WS_COMPRESSION") != "1":
        app.middlewares.append(refuse_websocket_compression)
    sio.attach(app)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    return app


if __name__ == "__main__":
    serve(create_app())
