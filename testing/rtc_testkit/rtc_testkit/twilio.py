"""A local stand-in for Twilio's Tokens API (Network Traversal Service), as Twilio documents it.

`POST /2010-04-01/Accounts/{AccountSid}/Tokens.json`, HTTP Basic auth with an API key SID and its
secret, the form field `Ttl`; Twilio answers `201 Created` with a token resource of the documented
shape (fake values, fresh ones per call here), and Twilio's JSON error body
(`{"code", "message", "more_info", "status"}`) for a refused request.

`mode` chooses how a well-formed, authenticated request is answered:
`ok`, `hold` (wait for `release`, then answer), `hang` (never answer before `release`),
`http_500`, `garbage` (201 with a body that is not JSON), `no_ice_servers`, `empty_ice_servers`,
`oversized` / `oversized_chunked` (a valid token resource padded past 64 KiB, with a
Content-Length / chunked).
Every request is recorded, including refused ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from aiohttp import web

ACCOUNT_SID = "AC" + "0f" * 16
API_KEY = "SK" + "1e" * 16
API_SECRET = "twilio-api-secret-" + "9d" * 8

MODES = (
    "ok", "hold", "hang", "http_500", "garbage", "no_ice_servers", "empty_ice_servers",
    "oversized", "oversized_chunked",
)  # fmt: skip
OVERSIZED_PADDING = 80 * 1024


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: str | None
    content_type: str
    form: dict[str, list[str]]
    status: int | None = None  # what the stub answered (None while held)


@dataclass
class IssuedToken:
    username: str
    credential: str
    body: dict[str, Any]


def twilio_error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )


def token_body(account_sid: str, ttl: str, username: str, credential: str) -> dict[str, Any]:
    """A token resource with the sample's shape (STUN without credentials, TURN with them)."""
    now = formatdate(time.time(), usegmt=True)

    def server(url: str, with_credentials: bool) -> dict[str, Any]:
        return {
            "url": url,
            "urls": url,
            "username": username if with_credentials else None,
            "credential": credential if with_credentials else None,
        }

    return {
        "account_sid": account_sid,
        "date_created": now,
        "date_updated": now,
        "ice_servers": [
            server("stun:global.stun.twilio.com:3478", False),
            server("turn:global.turn.twilio.com:3478?transport=udp", True),
            server("turn:global.turn.twilio.com:3478?transport=tcp", True),
            server("turn:global.turn.twilio.com:443?transport=tcp", True),
        ],
        "password": credential,
        "ttl": ttl,
        "username": username,
    }


@dataclass
class TwilioStub:
    account_sid: str = ACCOUNT_SID
    api_key: str = API_KEY
    api_secret: str = API_SECRET
    mode: str = "ok"
    # Seconds to wait before answering an authenticated token request (a slow upstream).
    delay: float = 0.0
    # Applied to each successful body before it is sent (e.g. to drop `urls` from an entry).
    shape: Callable[[dict[str, Any]], None] | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    issued: list[IssuedToken] = field(default_factory=list)
    # Set by the test (hold) or at teardown (hang): held handlers then return.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when a token request has arrived and passed the checks.
    received: asyncio.Event = field(default_factory=asyncio.Event)
    base_url: str = ""  # filled in by the fixture that serves the stub

    @property
    def tokens_path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account_sid}/Tokens.json"

    @property
    def token_calls(self) -> int:
        return sum(1 for r in self.requests if r.path == self.tokens_path)

    def env(self) -> dict[str, str]:
        """The ice-service variables that point its Twilio provider at this stub."""
        return {
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_API_KEY": self.api_key,
            "TWILIO_API_SECRET": self.api_secret,
            "TWILIO_API_BASE_URL": self.base_url,
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[len("Basic ") :], validate=True).decode()
        except ValueError:
            return False
        expected = f"{self.api_key}:{self.api_secret}"
        return secrets.compare_digest(decoded.encode(), expected.encode())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form: dict[str, list[str]] = {}
        if request.method == "POST":
            posted = await request.post()
            for key in set(posted):
                form[key] = [str(v) for v in posted.getall(key)]
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            authorization=request.headers.get("Authorization"),
            content_type=request.content_type,
            form=form,
        )
        self.requests.append(record)
        response = await self._answer(request, form)
        record.status = response.status
        return response

    async def _answer(self, request: web.Request, form: dict[str, list[str]]) -> web.StreamResponse:
        if not self._authorized(request.headers.get("Authorization")):
            return twilio_error(401, 20003, "Authenticate")
        if request.path != self.tokens_path:
            return twilio_error(404, 20404, "The requested resource was not found")
        if request.method != "POST":
            return twilio_error(405, 20004, "Method not allowed")
        ttl = form.get("Ttl", [])
        if len(ttl) != 1 or not ttl[0].isdigit():
            return twilio_error(400, 21212, "Invalid Ttl")
        self.received.set()
        if self.delay > 0:
            await asyncio.sleep(self.delay)  # the slow upstream itself, not a synchronisation

        if self.mode in ("hold", "hang"):
            await self.release.wait()
        if self.mode == "http_500":
            return twilio_error(500, 20500, "Internal Server Error")
        if self.mode == "garbage":
            return web.Response(
                status=201, body=b'{"ice_servers": [', content_type="application/json"
            )
        username = secrets.token_hex(32)
        credential = base64.b64encode(secrets.token_bytes(24)).decode()
        body = token_body(self.account_sid, ttl[0], username, credential)
        if self.mode == "no_ice_servers":
            del body["ice_servers"]
        elif self.mode == "empty_ice_servers":
            body["ice_servers"] = []
        elif self.shape is not None:
            self.shape(body)
        self.issued.append(IssuedToken(username, credential, body))
        if self.mode.startswith("oversized"):
            body["padding"] = "x" * OVERSIZED_PADDING  # an unknown field: valid, only too big
        if self.mode == "oversized_chunked":
            response = web.StreamResponse(status=201)
            response.content_type = "application/json"
            response.enable_chunked_encoding()
            await response.prepare(request)
            data = json.dumps(body).encode()
            for start in range(0, len(data), 8192):
                await response.write(data[start : start + 8192])
            await response.write_eof()
            return response
        return web.json_response(body, status=201)


@contextlib.asynccontextmanager
async def serve_twilio(stub: TwilioStub | None = None) -> AsyncIterator[TwilioStub]:
    """The stub served on 127.0.0.1 from the running loop, `base_url` set; held handlers are
    released before the server closes."""
    stub = stub or TwilioStub()
    runner = web.AppRunner(stub.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        stub.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield stub
    finally:
        stub.release.set()
        await runner.cleanup()
