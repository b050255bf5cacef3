"""Redis (REDIS_URL, RELAY_REDIS_URL), the directory and its `rtc.ice` flag."""

from __future__ import annotations

import asyncio

from rtc_common.clients import make_redis
from rtc_common.directory import open_directory
from rtc_common.settings import CommonSettings, with_redis_password

from .rendering import Result
from .target import Target, redact_url

ICE_FLAG = "rtc.ice"


async def _ping_redis(url: str, limit: float) -> str | None:
    client = make_redis(url)
    try:
        async with asyncio.timeout(limit):
            await client.ping()
    except Exception as exc:  # any failure is the answer
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        await client.aclose()
    return None


async def check_stores(target: Target, settings: CommonSettings | None) -> list[Result]:
    if settings is None:
        return [Result("SKIP", "redis/directory", "configuration did not load (see config)")]
    timeout = target.timeout
    results: list[Result] = []
    urls = [("REDIS_URL", settings.redis_url)]
    relay_url = target.env.get("RELAY_REDIS_URL") or None
    if relay_url and settings.redis_password is not None:
        # As the services do: REDIS_PASSWORD goes into a URL that carries none.
        relay_url = with_redis_password(relay_url, settings.redis_password.get_secret_value())
    if relay_url and relay_url != settings.redis_url:
        urls.append(("RELAY_REDIS_URL", relay_url))
    for var, url in urls:
        error = await _ping_redis(url, timeout)
        shown = redact_url(url) + ("" if target.env.get(var) else " (default)")
        if error is None:
            results.append(Result("PASS", f"redis {var}", f"{shown}: PONG"))
        else:
            results.append(
                Result(
                    "FAIL",
                    f"redis {var}",
                    f"{shown}: {redact_url(error)}",
                    f"start Redis or fix {var} (host, port, password, TLS as rediss://)",
                )
            )
    if relay_url is None or relay_url == settings.redis_url:
        why = "not set" if relay_url is None else "same as REDIS_URL"
        results.append(Result("PASS", "redis RELAY_REDIS_URL", f"{why}: the relay uses REDIS_URL"))

    directory_url = settings.effective_directory_url
    shown = redact_url(directory_url) + ("" if settings.directory_url else " (= REDIS_URL)")
    directory = open_directory(settings)
    try:
        try:
            async with asyncio.timeout(timeout):
                await directory.ping()
        except Exception as exc:  # any backend failure
            results.append(
                Result(
                    "FAIL",
                    "directory DIRECTORY_URL",
                    f"{shown} ({directory.backend}): {type(exc).__name__}",
                    "start the directory (MongoDB) or fix DIRECTORY_URL / MONGO_DB",
                )
            )
            results.append(Result("SKIP", f"flag {ICE_FLAG}", "the directory is unreachable"))
            return results
        results.append(
            Result("PASS", "directory DIRECTORY_URL", f"{shown}: {directory.backend} answers")
        )
        try:
            async with asyncio.timeout(timeout):
                enabled = await directory.get_flag(ICE_FLAG)
        except Exception as exc:  # any backend failure
            results.append(
                Result("FAIL", f"flag {ICE_FLAG}", f"read failed: {type(exc).__name__}", None)
            )
            return results
    finally:
        await directory.close()
    fix = f"rtcctl flags enable {ICE_FLAG}"
    if enabled is True:
        results.append(Result("PASS", f"flag {ICE_FLAG}", "enabled"))
    elif enabled is False:
        results.append(
            Result(
                "FAIL", f"flag {ICE_FLAG}", "disabled: /rtc/ice answers 403 feature_disabled", fix
            )
        )
    else:
        results.append(
            Result(
                "FAIL", f"flag {ICE_FLAG}", "not set: /rtc/ice answers 403 feature_disabled", fix
            )
        )
    return results
