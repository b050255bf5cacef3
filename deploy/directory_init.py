"""One-shot directory setup of a compose deployment (the `directory-init` service).

Run with the ice-service image (`python /app/directory_init.py`), reading the services' variables:

- MongoDB directory (`DIRECTORY_URL=mongodb://...`): creates the indexes the directory relies on
  in `MONGO_DB` — unique `{key}` on `MONGO_FLAGS_COLLECTION`, unique `{wallet, contact}` on
  `MONGO_CONTACTS_COLLECTION`, unique `{wallet}` on `MONGO_USERS_COLLECTION` — then the flag
  documents `{key, enabled: true}` for `DIRECTORY_INIT_FLAGS` (default `rtc.ice`).
- Redis directory (`DIRECTORY_URL`, or `REDIS_URL` when unset, `redis://...`): only the flags.

Passwords are added as the services add them: `REDIS_PASSWORD` (or `REDIS_PASSWORD_FILE`) to a
redis:// URL, `DIRECTORY_PASSWORD` (or `DIRECTORY_PASSWORD_FILE`) to a mongodb:// URL's user.

A flag that already exists is left as it is (an operator's `rtcctl flags disable rtc.ice`
survives a redeploy); every step is idempotent. The directory may still be starting: the script
retries for up to `DIRECTORY_INIT_WAIT_SECONDS` (default 60). Exit status 0 when done, 1 when the
directory never answered or refused, 2 for a malformed setting. Secrets are never printed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from rtc_common.settings import secret_or_file, with_directory_password, with_redis_password

DEFAULTS = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "MONGO_DB": "rtc",
    "MONGO_FLAGS_COLLECTION": "featureflags",
    "MONGO_CONTACTS_COLLECTION": "contacts",
    "MONGO_USERS_COLLECTION": "users",
    "DIRECTORY_INIT_FLAGS": "rtc.ice",
    "DIRECTORY_INIT_WAIT_SECONDS": "60",
}
# The Redis directory keeps every flag in this hash (rtc_common.directory.REDIS_FLAGS_KEY).
REDIS_FLAGS_KEY = "rtc:flags"


def setting(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    return value or DEFAULTS.get(name, "")


def secret(env: Mapping[str, str], name: str) -> str:
    """`name`'s value, or the content of the file `<name>_FILE` names ("" when neither)."""
    return secret_or_file(name, setting(env, name), setting(env, f"{name}_FILE")) or ""


def directory_url(env: Mapping[str, str]) -> str:
    """The directory's URL with the password the services would add to it."""
    url = setting(env, "DIRECTORY_URL") or setting(env, "REDIS_URL")
    if redis_password := secret(env, "REDIS_PASSWORD"):
        url = with_redis_password(url, redis_password)
    if directory_password := secret(env, "DIRECTORY_PASSWORD"):
        url = with_directory_password(url, directory_password)
    return url


def init_mongo(url: str, env: Mapping[str, str], *, timeout_ms: int = 2000) -> list[str]:
    """Indexes and flags in MongoDB; returns what was done, one line each."""
    from pymongo import ASCENDING, MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(
        url,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        appname="directory-init",
    )
    try:
        db = client[setting(env, "MONGO_DB")]
        done = []
        indexes = [
            (setting(env, "MONGO_FLAGS_COLLECTION"), [("key", ASCENDING)], "key_unique"),
            (
                setting(env, "MONGO_CONTACTS_COLLECTION"),
                [("wallet", ASCENDING), ("contact", ASCENDING)],
                "wallet_contact_unique",
            ),
            (setting(env, "MONGO_USERS_COLLECTION"), [("wallet", ASCENDING)], "wallet_unique"),
        ]
        for collection, keys, name in indexes:
            db[collection].create_index(keys, name=name, unique=True)
            done.append(f"index {name} on {collection}")
        flags = db[setting(env, "MONGO_FLAGS_COLLECTION")]
        for key in flag_keys(env):
            result = flags.update_one(
                {"key": key}, {"$setOnInsert": {"key": key, "enabled": True}}, upsert=True
            )
            created = result.upserted_id is not None
            done.append(f"flag {key} {'created (enabled)' if created else 'already set, kept'}")
        return done
    finally:
        client.close()


def init_redis(url: str, env: Mapping[str, str], *, timeout_s: float = 2.0) -> list[str]:
    """Flags in the Redis directory; returns what was done, one line each."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        done = []
        for key in flag_keys(env):
            created = client.hsetnx(REDIS_FLAGS_KEY, key, "1")
            done.append(f"flag {key} {'created (enabled)' if created else 'already set, kept'}")
        return done
    finally:
        client.close()


def flag_keys(env: Mapping[str, str]) -> list[str]:
    return [key.strip() for key in setting(env, "DIRECTORY_INIT_FLAGS").split(",") if key.strip()]


def main(
    env: Mapping[str, str] | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> int:
    env = os.environ if env is None else env
    try:
        url = directory_url(env)
    except ValueError as exc:  # names the variable, never the secret
        log(f"directory-init: {exc}")
        return 2
    try:
        wait = float(setting(env, "DIRECTORY_INIT_WAIT_SECONDS"))
    except ValueError:
        log("directory-init: DIRECTORY_INIT_WAIT_SECONDS must be a number of seconds")
        return 2
    if url.startswith(("mongodb://", "mongodb+srv://")):
        backend, run = "mongodb", init_mongo
    elif url.startswith(("redis://", "rediss://", "unix://")):
        backend, run = "redis", init_redis
    else:
        log("directory-init: DIRECTORY_URL must be a mongodb:// or redis:// URL")
        return 2
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        attempt += 1
        try:
            done = run(url, env)
        except Exception as exc:  # the server may still be starting: retry until the deadline
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if time.monotonic() >= deadline:
                log(f"directory-init: {backend} directory unavailable after {attempt} attempts")
                log(f"directory-init: last error {_redact(reason, url)}")
                return 1
            if attempt == 1:
                log(f"directory-init: waiting for the {backend} directory ({_redact(reason, url)})")
            sleep(1.0)
            continue
        for line in done:
            log(f"directory-init: {backend}: {line}")
        return 0


def _redact(text: str, url: str) -> str:
    """Error texts may quote the URL, which may carry a password."""
    return text.replace(url, "<DIRECTORY_URL>")


if __name__ == "__main__":
    sys.exit(main())
