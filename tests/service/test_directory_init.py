"""deploy/directory_init.py (the compose stack's one-shot `directory-init` service).

Against mockupdb: the exact MongoDB commands (three unique indexes, then the `rtc.ice` flag
upserted without overwriting an existing one). Against a real Redis: the flag in the Redis
directory, created once and never overwritten. And the failure paths: a directory that never
answers (exit 1, URL with a password not printed), a malformed URL (exit 2).
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bson import ObjectId
from mockupdb import MockupDB, OpMsg, go
from rtc_common.directory import REDIS_FLAGS_KEY
from rtc_testkit.processes import RedisServer

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "directory_init.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("directory_init", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


directory_init = load_script()


@pytest.fixture
def mongo() -> Iterator[MockupDB]:
    server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    server.run()
    try:
        yield server
    finally:
        server.stop()


def command(request: Any) -> dict[str, Any]:
    """The command document without the driver's bookkeeping fields."""
    return {
        k: v
        for k, v in request.doc.items()
        if k not in {"$db", "lsid", "$clusterTime", "$readPreference", "txnNumber"}
    }


def run_in_thread(env: dict[str, str], lines: list[str]) -> Any:
    return go(directory_init.main, env, sleep=lambda _s: None, log=lines.append)


def test_mongo_indexes_and_flag_exact_commands(mongo: MockupDB) -> None:
    lines: list[str] = []
    env = {"DIRECTORY_URL": mongo.uri, "DIRECTORY_INIT_WAIT_SECONDS": "5"}
    future = run_in_thread(env, lines)

    request = mongo.receives(OpMsg("createIndexes", "featureflags"), timeout=10)
    assert request.doc["$db"] == "rtc"
    assert command(request) == {
        "createIndexes": "featureflags",
        "indexes": [{"key": {"key": 1}, "name": "key_unique", "unique": True}],
    }
    request.ok()
    request = mongo.receives(OpMsg("createIndexes", "contacts"), timeout=10)
    assert command(request) == {
        "createIndexes": "contacts",
        "indexes": [
            {"key": {"wallet": 1, "contact": 1}, "name": "wallet_contact_unique", "unique": True}
        ],
    }
    request.ok()
    request = mongo.receives(OpMsg("createIndexes", "users"), timeout=10)
    assert command(request) == {
        "createIndexes": "users",
        "indexes": [{"key": {"wallet": 1}, "name": "wallet_unique", "unique": True}],
    }
    request.ok()
    request = mongo.receives(OpMsg("update", "featureflags"), timeout=10)
    assert request.doc["$db"] == "rtc"
    assert request.doc["update"] == "featureflags"
    updates = request.doc.get("updates")
    assert updates == [
        {
            "q": {"key": "rtc.ice"},
            "u": {"$setOnInsert": {"key": "rtc.ice", "enabled": True}},
            "multi": False,
            "upsert": True,
        }
    ]
    request.ok(n=1, nModified=0, upserted=[{"index": 0, "_id": ObjectId()}])

    assert future() == 0
    assert lines == [
        "directory-init: mongodb: index key_unique on featureflags",
        "directory-init: mongodb: index wallet_contact_unique on contacts",
        "directory-init: mongodb: index wallet_unique on users",
        "directory-init: mongodb: flag rtc.ice created (enabled)",
    ]


def test_mongo_existing_flag_is_kept_and_names_come_from_env(mongo: MockupDB) -> None:
    lines: list[str] = []
    env = {
        "DIRECTORY_URL": mongo.uri,
        "MONGO_DB": "app",
        "MONGO_FLAGS_COLLECTION": "flags",
        "MONGO_CONTACTS_COLLECTION": "peers",
        "MONGO_USERS_COLLECTION": "people",
    }
    future = run_in_thread(env, lines)
    for collection in ("flags", "peers", "people"):
        mongo.receives(OpMsg("createIndexes", collection), timeout=10).ok()
    request = mongo.receives(OpMsg("update", "flags"), timeout=10)
    assert request.doc["$db"] == "app"
    # Already there (an operator may have disabled it): matched, nothing modified or inserted.
    request.ok(n=1, nModified=0)
    assert future() == 0
    assert lines == [
        "directory-init: mongodb: index key_unique on flags",
        "directory-init: mongodb: index wallet_contact_unique on peers",
        "directory-init: mongodb: index wallet_unique on people",
        "directory-init: mongodb: flag rtc.ice already set, kept",
    ]


def test_redis_directory_flag_created_once(redis_server: RedisServer) -> None:
    client = redis_server.client()
    lines: list[str] = []
    env = {"REDIS_URL": redis_server.url, "DIRECTORY_INIT_FLAGS": "rtc.ice,other.flag"}
    assert directory_init.main(env, log=lines.append) == 0
    assert client.hgetall(REDIS_FLAGS_KEY) == {b"rtc.ice": b"1", b"other.flag": b"1"}
    assert lines == [
        "directory-init: redis: flag rtc.ice created (enabled)",
        "directory-init: redis: flag other.flag created (enabled)",
    ]
    client.hset(REDIS_FLAGS_KEY, "rtc.ice", "0")  # the operator turned it off
    lines.clear()
    assert directory_init.main({"DIRECTORY_URL": redis_server.url}, log=lines.append) == 0
    assert client.hget(REDIS_FLAGS_KEY, "rtc.ice") == b"0"
    assert lines == ["directory-init: redis: flag rtc.ice already set, kept"]


def test_passwords_from_files_as_the_services_add_them(tmp_path: Path) -> None:
    (tmp_path / "redis").write_text("redis-pw\n")
    (tmp_path / "mongo").write_text("mongo-pw\n")
    files = {
        "REDIS_PASSWORD_FILE": str(tmp_path / "redis"),
        "DIRECTORY_PASSWORD_FILE": str(tmp_path / "mongo"),
    }
    url = directory_init.directory_url({"DIRECTORY_URL": "mongodb://rtc@mongo:27017/", **files})
    assert url == "mongodb://rtc:mongo-pw@mongo:27017/"
    assert directory_init.directory_url({"REDIS_URL": "redis://redis:6379/0", **files}) == (
        "redis://:redis-pw@redis:6379/0"
    )
    lines: list[str] = []
    env = {"DIRECTORY_URL": "redis://redis:6379/0", "REDIS_PASSWORD": "redis-pw", **files}
    assert directory_init.main(env, log=lines.append) == 2
    assert lines == [
        "directory-init: REDIS_PASSWORD and REDIS_PASSWORD_FILE are both set: use one of them"
    ]
    lines.clear()
    missing = {"DIRECTORY_PASSWORD_FILE": str(tmp_path / "absent")}
    assert (
        directory_init.main({"DIRECTORY_URL": "mongodb://rtc@m/", **missing}, log=lines.append) == 2
    )
    assert lines == [
        "directory-init: DIRECTORY_PASSWORD_FILE cannot be read (No such file or directory)"
    ]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_directory_fails_without_printing_the_url() -> None:
    lines: list[str] = []
    url = f"redis://:s3cret-pass@127.0.0.1:{closed_port()}/0"
    env = {"DIRECTORY_URL": url, "DIRECTORY_INIT_WAIT_SECONDS": "0"}
    assert directory_init.main(env, sleep=lambda _s: None, log=lines.append) == 1
    assert lines[0] == "directory-init: redis directory unavailable after 1 attempts"
    assert not any("s3cret" in line for line in lines)


def test_retries_until_the_directory_answers(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[str] = []
    real = directory_init.init_redis

    def flaky(url: str, env: Any) -> list[str]:
        attempts.append(url)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        result: list[str] = real(url, env)
        return result

    lines: list[str] = []
    monkeypatch.setattr(directory_init, "init_redis", flaky)
    code = directory_init.main(
        {"DIRECTORY_URL": redis_server.url}, sleep=lambda _s: None, log=lines.append
    )
    assert code == 0
    assert len(attempts) == 3
    assert lines[0] == "directory-init: waiting for the redis directory (ConnectionError: not yet)"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DIRECTORY_URL": "http://x"}, "DIRECTORY_URL must be a mongodb:// or redis:// URL"),
        ({"DIRECTORY_INIT_WAIT_SECONDS": "soon"}, "DIRECTORY_INIT_WAIT_SECONDS must be a number"),
    ],
)
def test_malformed_settings(env: dict[str, str], message: str) -> None:
    lines: list[str] = []
    assert directory_init.main(env, log=lines.append) == 2
    assert message in lines[0]
