"""The hot-path shortcuts the benchmarks led to keep their guarantees.

- A verified JWT is remembered until its exp: it is refused once expired, and a token that
  differs in any byte (a forged signature on the same claims) is verified from scratch.
- Lua scripts of one loop turn share a pipeline, and a limiter's hits of one turn are one script
  call: each caller still gets its own answer, a flushed script cache is reloaded, and a failed
  round trip reaches every caller as RedisError.
- Log lines are written in batches: INFO lines appear within the flush interval, warnings at
  once, and a close writes what is pending; the redaction shortcut still masks secrets.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import jwt
import pytest
from redis.exceptions import RedisError
from rtc_common.auth import VERIFIED_CACHE_SIZE, JwtVerifier
from rtc_common.batching import batcher_for
from rtc_common.clients import make_redis
from rtc_common.errors import ApiError
from rtc_common.logs import BufferedLineHandler, JsonFormatter, redact
from rtc_common.ratelimit import RateLimiter
from rtc_common.settings import CommonSettings, load_settings
from rtc_testkit.contract import JWT_SECRET, make_token
from rtc_testkit.processes import RedisServer, wait_for


def verifier() -> JwtVerifier:
    settings = load_settings(CommonSettings, {"JWT_SECRET": JWT_SECRET})
    return JwtVerifier(settings)


def test_remembered_token_is_refused_after_its_exp() -> None:
    check = verifier()
    token = make_token("0xcafe", expires_in=1.5)
    assert check.verify(token, "bearer").wallet == "0xcafe"
    assert token in check._verified  # the second call is answered from memory

    def refused() -> bool:
        try:
            check.verify(token, "bearer")
        except ApiError as exc:
            assert exc.code == "unauthorized"
            assert exc.message == "token expired"
            return True
        return False

    wait_for(refused, timeout=5, what="the remembered token to expire")
    assert token not in check._verified


def test_forged_signature_on_remembered_claims_is_refused() -> None:
    check = verifier()
    claims = {"wallet": "0xcafe", "exp": int(time.time()) + 600}
    good = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    forged = jwt.encode(claims, "another-secret-0123456789abcdef0123", algorithm="HS256")
    assert check.verify(good, "bearer").wallet == "0xcafe"
    with pytest.raises(ApiError) as refused:
        check.verify(forged, "bearer")
    assert refused.value.code == "unauthorized"
    assert forged not in check._verified


def test_memory_is_bounded() -> None:
    check = verifier()
    first = make_token("0xw0")
    identity = check.verify(first, "bearer")
    for n in range(1, VERIFIED_CACHE_SIZE + 5):
        check._remember(f"token-{n}", identity)
    assert len(check._verified) <= VERIFIED_CACHE_SIZE
    assert first not in check._verified  # the oldest went first


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "rtc.test", "levelno": level, "levelname": logging.getLevelName(level), "msg": msg}
    )


def test_info_lines_are_flushed_within_the_interval_and_warnings_at_once() -> None:
    stream = io.StringIO()
    handler = BufferedLineHandler(stream, interval=0.1)
    handler.setFormatter(JsonFormatter("test"))
    try:
        handler.emit(_record(logging.INFO, "first"))
        handler.emit(_record(logging.WARNING, "second"))
        # The warning wrote everything pending, in order, without waiting for the timer.
        lines = stream.getvalue().splitlines()
        assert ['"msg":"first"' in lines[0], '"msg":"second"' in lines[1]] == [True, True]
        handler.emit(_record(logging.INFO, "third"))
        wait_for(lambda: '"msg":"third"' in stream.getvalue(), timeout=2, what="the timed flush")
        handler.emit(_record(logging.INFO, "fourth"))
    finally:
        handler.close()
    assert '"msg":"fourth"' in stream.getvalue()  # close writes what is pending


def test_redaction_shortcut_still_masks() -> None:
    token = make_token("0xcafe")
    assert token not in redact(f"got {token}")
    assert "s3cr3t" not in redact("TURN_SECRET=s3cr3t")
    assert "s3cr3t" not in redact('{"credential": "s3cr3t"}')
    assert "abc.def" not in redact("Authorization: Bearer abc.def")
    plain = '{"msg":"request","path":"/api/v1/rtc/ice","status":200}'
    assert redact(plain) is plain


async def test_batched_scripts_answer_each_caller(redis_server: RedisServer) -> None:
    client = make_redis(redis_server.url)
    try:
        limiter = RateLimiter(client, scope="batch", limit=10)
        assert (await limiter.hit("warm-up")).allowed  # loads the script into Redis
        direct = redis_server.client()
        direct.config_resetstat()
        # 50 hits in one loop turn: ONE script call, and exactly the limit is allowed.
        verdicts = await asyncio.gather(*(limiter.hit("same") for _ in range(50)))
        assert sum(v.allowed for v in verdicts) == 10
        assert [v.remaining for v in verdicts[:10]] == list(range(9, -1, -1))  # in call order
        assert direct.info("commandstats")["cmdstat_evalsha"]["calls"] == 1
        others = await asyncio.gather(*(limiter.hit(f"k{n}") for n in range(20)))
        assert all(v.allowed for v in others)
        # Scripts gone from Redis (a restart, SCRIPT FLUSH): the batch loads them again.
        redis_server.client().script_flush()
        again = await asyncio.gather(*(limiter.hit(f"j{n}") for n in range(5)))
        assert all(v.allowed for v in again)
        batcher = batcher_for(client)
        script = client.register_script("return redis.call('INCR', KEYS[1])")
        counts = await asyncio.gather(*(batcher.run(script, ["ctr"], []) for _ in range(30)))
        assert sorted(counts) == list(range(1, 31))
    finally:
        await client.aclose()


async def test_a_failed_batch_reaches_every_caller(redis_server: RedisServer) -> None:
    client = make_redis(redis_server.url)
    try:
        batcher = batcher_for(client)
        script = client.register_script("return 1")
        assert await batcher.run(script, [], []) == 1
        redis_server.stop()
        results = await asyncio.gather(
            *(batcher.run(script, [], []) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, RedisError) for r in results)
        # A limiter's one call for the turn: every hit of it is refused, none left waiting.
        limiter = RateLimiter(client, scope="down", limit=10, fallback=False)
        hits = await asyncio.gather(
            *(limiter.hit(f"k{n}") for n in range(5)), return_exceptions=True
        )
        assert [getattr(r, "code", r) for r in hits] == ["unavailable"] * 5
    finally:
        await client.aclose()


def test_a_line_orjson_refuses_is_still_written() -> None:
    formatter = JsonFormatter("test")
    fields = {"big": 2**70, "by": {3: "key"}, "é": "ü"}
    line = formatter.line(0.0, "INFO", "rtc.test", "m", "-", fields)
    assert json.loads(line) == {
        "ts": "1970-01-01T00:00:00.000Z", "level": "INFO", "service": "test",
        "logger": "rtc.test", "msg": "m", "big": 2**70, "by": {"3": "key"}, "é": "ü",
    }  # fmt: skip


def test_fast_info_line_is_the_line_logger_info_writes() -> None:
    import json as _json

    from rtc_common import logs

    stream = io.StringIO()
    handler = BufferedLineHandler(stream, interval=60)
    handler.setFormatter(JsonFormatter("test-service"))
    root = logging.getLogger()
    saved, saved_handler = root.handlers[:], logs._ROOT_HANDLER
    root.handlers[:] = [handler]
    logs._ROOT_HANDLER = handler
    logger = logging.getLogger("rtc.fastpath")
    logger.setLevel(logging.INFO)
    try:
        fields = {"event": "rtc:offer", "outcome": "ok", "durationMs": 1.5}
        logs.info_line(logger, "event", dict(fields), request_id="req-1")
        logger.info("event", extra={**fields, "request_id": "req-1"})
        handler.flush()
    finally:
        root.handlers[:] = saved
        logs._ROOT_HANDLER = saved_handler
        handler.close()
    fast, standard = (_json.loads(line) for line in stream.getvalue().splitlines())
    fast.pop("ts")
    standard.pop("ts")
    assert fast == standard
    assert fast["requestId"] == "req-1" and fast["logger"] == "rtc.fastpath"
