"""Secrets and token settings: `*_FILE` secrets, weak HMAC keys refused at start, the local
stack's issuer and audience (and the tokens `rtcctl token` mints for it), the startup warnings,
keyed wallet pseudonyms in logs, REDIS_PASSWORD, Twilio's base URL and answer size, and the
Mongo contacts check in both directions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from aiohttp.test_utils import TestClient
from conftest import IceClientFactory
from ice_service.settings import IceSettings
from mockupdb import MockupDB, OpMsg
from pymongo import AsyncMongoClient
from relay_service.settings import RelaySettings
from rtc_common import logs
from rtc_common.auth import JwtVerifier
from rtc_common.directory import MongoDirectory
from rtc_common.errors import ApiError
from rtc_common.settings import CommonSettings, SettingsError, load_settings
from rtc_testkit.contract import JWT_SECRET, make_token
from rtc_testkit.processes import (
    Process,
    RedisServer,
    ServiceProcess,
    free_port,
    http_status,
    wait_for,
)
from rtc_testkit.stack import base_env, set_flag
from rtc_testkit.twilio import API_SECRET, TwilioStub
from rtcctl.local import StackPorts, prepare, read_env_file

RTCCTL = Path(sys.executable).with_name("rtcctl")
ICE = "/api/v1/rtc/ice"
PSEUDONYM_KEY = "pseudonym-key-for-the-test-0123456789abcdef"
REDIS_PASSWORD = "redis p@ss/word:with%odd chars"


def settings_error(cls: type[CommonSettings], env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as refused:
        load_settings(cls, env)
    return str(refused.value)


# --- 1. The local stack names an issuer and an audience; rtcctl's tokens carry them ---------


def local_stack(run_dir: Path) -> dict[str, str]:
    prepare(run_dir, StackPorts(gateway=free_port(), redis=free_port(), turn=free_port()))
    return read_env_file(run_dir / "env")


def test_local_stack_sets_issuer_audience_and_pseudonym_key(tmp_path: Path) -> None:
    env = local_stack(tmp_path / "run")
    assert env["JWT_ISSUER"] and env["JWT_AUDIENCE"]
    secrets_env = read_env_file(tmp_path / "run" / "secrets.env")
    assert env["LOG_PSEUDONYM_KEY"] == secrets_env["LOG_PSEUDONYM_KEY"]
    assert stat.S_IMODE((tmp_path / "run" / "secrets.env").stat().st_mode) == 0o600
    # Not secrets: kept out of secrets.env, whose values the newcomer test looks for in logs.
    assert "JWT_ISSUER" not in secrets_env and "JWT_AUDIENCE" not in secrets_env
    settings = load_settings(CommonSettings, env)
    assert settings.startup_warnings() == []


def test_local_stack_completes_an_older_secrets_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    older = {"JWT_SECRET": "k" * 64, "TURN_SECRET": "t" * 43}
    (run_dir / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in older.items()))
    env = local_stack(run_dir)
    assert env["JWT_SECRET"] == older["JWT_SECRET"]
    assert env["TURN_SECRET"] == older["TURN_SECRET"]
    key = env["LOG_PSEUDONYM_KEY"]
    assert len(key) >= 32
    assert local_stack(run_dir)["LOG_PSEUDONYM_KEY"] == key  # generated once, then kept


def rtcctl(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RTC_RUN_DIR": str(run_dir)}
    return subprocess.run(
        [str(RTCCTL), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_local_stack_accepts_rtcctl_tokens_not_other_tokens_of_the_same_key(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    env = local_stack(run_dir)
    verifier = JwtVerifier(load_settings(CommonSettings, env))
    minted = rtcctl(run_dir, "token", "0xABC")
    assert minted.returncode == 0, minted.stderr
    claims = jwt.decode(minted.stdout.strip(), options={"verify_signature": False})
    assert claims["iss"] == env["JWT_ISSUER"] and claims["aud"] == env["JWT_AUDIENCE"]
    assert verifier.verify(minted.stdout.strip(), "bearer").wallet == "0xabc"

    # The main application's other tokens (password reset, e-mail confirmation...) carry a `sub`
    # and are signed with the same key, but are not meant for the RTC services.
    secret = env["JWT_SECRET"]
    others = {
        "no aud, no iss": make_token(None, secret=secret, sub="0xabc"),
        "no aud": make_token(None, secret=secret, sub="0xabc", iss=env["JWT_ISSUER"]),
        "other aud": make_token(
            None, secret=secret, sub="0xabc", iss=env["JWT_ISSUER"], aud="password-reset"
        ),
        "no iss": make_token(None, secret=secret, sub="0xabc", aud=env["JWT_AUDIENCE"]),
    }
    for name, token in others.items():
        with pytest.raises(ApiError) as refused:
            verifier.verify(token, "bearer")
        assert refused.value.status == 401, name


# --- 2. Startup warnings, keyed wallet pseudonyms: a real service process --------------------


def warnings_in(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == "WARNING"]


def test_startup_warnings_and_keyed_wallet_hash_in_a_service_process(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    set_flag(redis_server)
    bare = ServiceProcess("ice_service", tmp_path / "bare", base_env(redis_server.url))
    bare.start()
    try:
        wait_for(lambda: "starting" in bare.log_text(), what="the starting line")
    finally:
        bare.stop()
    unset = warnings_in(bare.log_text())
    assert [w["variables"] for w in unset] == [
        ["JWT_ISSUER", "JWT_AUDIENCE"],
        ["LOG_PSEUDONYM_KEY"],
    ], unset

    # Every secret from a file (a compose / Kubernetes secret mount), issuer and audience set.
    files = {"JWT_SECRET": JWT_SECRET, "LOG_PSEUDONYM_KEY": PSEUDONYM_KEY}
    env = base_env(redis_server.url, JWT_ISSUER="https://app.example", JWT_AUDIENCE="rtc")
    del env["JWT_SECRET"]
    for name, value in files.items():
        path = tmp_path / name.lower()
        path.write_text(value + "\n")
        env[f"{name}_FILE"] = str(path)
    configured = ServiceProcess("ice_service", tmp_path / "configured", env)
    configured.start()
    try:
        token = make_token("0xAbC", iss="https://app.example", aud="rtc")
        status = http_status(f"{configured.url}{ICE}", {"Authorization": f"Bearer {token}"})
        assert status == 200, configured.log_text()[-2000:]
        wait_for(lambda: '"walletHash"' in configured.log_text(), what="the access line")
    finally:
        configured.stop()
    text = configured.log_text()
    assert warnings_in(text) == []
    [access] = [
        line
        for line in map(json.loads, filter(None, text.splitlines()))
        if line.get("walletHash") and line.get("path") == ICE
    ]
    keyed = hmac.new(PSEUDONYM_KEY.encode(), b"0xabc", hashlib.sha256).hexdigest()[:16]
    assert access["walletHash"] == keyed
    assert access["walletHash"] != hashlib.sha256(b"0xabc").hexdigest()[:16]
    for secret in (JWT_SECRET, PSEUDONYM_KEY, token):
        assert secret not in text


def test_wallet_hash_is_keyed() -> None:
    bare = hashlib.sha256(b"0xabc").hexdigest()[:16]
    try:
        # Without a configured key: a random one, never the bare (reversible) hash.
        assert logs.wallet_hash("0xabc") != bare
        logs.set_pseudonym_key(PSEUDONYM_KEY.encode())
        first = logs.wallet_hash("0xabc")
        assert first == hmac.new(PSEUDONYM_KEY.encode(), b"0xabc", hashlib.sha256).hexdigest()[:16]
        assert logs.wallet_hash("0xabd") != first
        logs.set_pseudonym_key(b"another-pseudonym-key-0123456789abcdef")
        assert logs.wallet_hash("0xabc") != first
    finally:
        logs.set_pseudonym_key(None)


def test_short_pseudonym_key_refused() -> None:
    message = settings_error(CommonSettings, {"JWT_SECRET": JWT_SECRET, "LOG_PSEUDONYM_KEY": "k"})
    assert "LOG_PSEUDONYM_KEY" in message


# --- 3. Weak HMAC secrets are refused at start -----------------------------------------------


@pytest.mark.parametrize("variable", ["JWT_SECRET", "JWT_SECRET_PREVIOUS"])
@pytest.mark.parametrize(("algorithms", "needed"), [
    ("HS256", 32), ("HS384", 48), ("HS512", 64),
    # The strongest HMAC algorithm accepted decides.
    ("HS256,HS512", 64), ("HS384,HS256", 48),
])  # fmt: skip
def test_short_hmac_secret_refused(variable: str, algorithms: str, needed: int) -> None:
    env = {"JWT_SECRET": "s" * 64, "JWT_ALGORITHMS": algorithms}
    short = "w" * (needed - 1)
    message = settings_error(CommonSettings, {**env, variable: short})
    assert variable in message
    assert short not in message
    assert load_settings(CommonSettings, {**env, variable: "w" * needed})


def test_secret_length_counts_bytes() -> None:
    # 16 two-byte characters: 32 bytes, enough for HS256.
    assert load_settings(CommonSettings, {"JWT_SECRET": "é" * 16}).jwt_secret


# --- 4. `*_FILE` for every secret ------------------------------------------------------------

COMMON_SECRETS = ["JWT_SECRET", "JWT_SECRET_PREVIOUS", "REDIS_PASSWORD", "LOG_PSEUDONYM_KEY"]
ICE_SECRETS = ["TURN_SECRET", "TWILIO_API_SECRET"]
SECRET_CASES = [(CommonSettings, name) for name in COMMON_SECRETS] + [
    (IceSettings, name) for name in ICE_SECRETS
]
FILE_VALUE = "a-secret-read-from-a-file-0123456789abcdef-0123456789abcdef-xyz"


def secret_value(settings: CommonSettings, variable: str) -> str:
    value = getattr(settings, variable.lower())
    return str(value.get_secret_value())


def base_for(variable: str) -> dict[str, str]:
    return {} if variable == "JWT_SECRET" else {"JWT_SECRET": JWT_SECRET}


@pytest.mark.parametrize(("cls", "variable"), SECRET_CASES)
def test_secret_from_file(tmp_path: Path, cls: type[CommonSettings], variable: str) -> None:
    path = tmp_path / "secret"
    for content, expected in [
        (FILE_VALUE + "\n", FILE_VALUE),  # one trailing newline (echo, editors) is not part of it
        (FILE_VALUE + "\r\n", FILE_VALUE),
        (FILE_VALUE, FILE_VALUE),
        (FILE_VALUE + "\n\n", FILE_VALUE + "\n"),  # only one
    ]:
        path.write_text(content, newline="")
        settings = load_settings(cls, {**base_for(variable), f"{variable}_FILE": str(path)})
        assert secret_value(settings, variable) == expected


@pytest.mark.parametrize(("cls", "variable"), SECRET_CASES)
def test_secret_and_secret_file_both_set(
    tmp_path: Path, cls: type[CommonSettings], variable: str
) -> None:
    path = tmp_path / "secret"
    path.write_text(FILE_VALUE + "\n")
    inline = "an-inline-secret-value-0123456789abcdef-0123456789abcdef-0123"
    env = {**base_for(variable), variable: inline, f"{variable}_FILE": str(path)}
    message = settings_error(cls, env)
    assert f"{variable} and {variable}_FILE" in message
    assert inline not in message and FILE_VALUE not in message


@pytest.mark.parametrize(("cls", "variable"), SECRET_CASES)
def test_secret_file_unusable(tmp_path: Path, cls: type[CommonSettings], variable: str) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    not_text = tmp_path / "binary"
    not_text.write_bytes(b"\xff\xfe" + FILE_VALUE.encode())
    for path in (tmp_path / "missing", tmp_path, empty, not_text):
        message = settings_error(cls, {**base_for(variable), f"{variable}_FILE": str(path)})
        assert f"{variable}_FILE" in message, message
        assert FILE_VALUE not in message


def test_unreadable_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(FILE_VALUE)
    path.chmod(0)
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    message = settings_error(CommonSettings, {"JWT_SECRET_FILE": str(path)})
    assert "JWT_SECRET_FILE" in message and "denied" in message


def test_secret_file_size_is_bounded(tmp_path: Path) -> None:
    # A mistake such as /dev/zero must fail the start, not hang it or fill the memory.
    message = settings_error(CommonSettings, {"JWT_SECRET_FILE": "/dev/zero"})
    assert "JWT_SECRET_FILE" in message


def test_public_key_and_its_file_both_set(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN PUBLIC KEY-----\n")
    message = settings_error(
        CommonSettings,
        {"JWT_ALGORITHMS": "RS256", "JWT_PUBLIC_KEY": "pem", "JWT_PUBLIC_KEY_FILE": str(path)},
    )
    assert "JWT_PUBLIC_KEY and JWT_PUBLIC_KEY_FILE" in message


# --- 5. REDIS_PASSWORD -----------------------------------------------------------------------

QUOTED = "redis%20p%40ss%2Fword%3Awith%25odd%20chars"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6390/0", f"redis://:{QUOTED}@127.0.0.1:6390/0"),
        ("rediss://cache.example:6380/1", f"rediss://:{QUOTED}@cache.example:6380/1"),
        ("redis://rtc@127.0.0.1:6390/0", f"redis://rtc:{QUOTED}@127.0.0.1:6390/0"),
        # A password in the URL wins (e.g. compose puts it there).
        ("redis://:inline@127.0.0.1/0", "redis://:inline@127.0.0.1/0"),
        ("redis://rtc:inline@127.0.0.1/0", "redis://rtc:inline@127.0.0.1/0"),
        ("unix:///run/redis.sock?db=0", f"unix:///run/redis.sock?db=0&password={QUOTED}"),
        ("unix:///run/redis.sock?password=inline", "unix:///run/redis.sock?password=inline"),
    ],
)
def test_redis_password_goes_into_urls_without_one(url: str, expected: str) -> None:
    env = {"JWT_SECRET": JWT_SECRET, "REDIS_PASSWORD": REDIS_PASSWORD}
    settings = load_settings(RelaySettings, {**env, "REDIS_URL": url, "RELAY_REDIS_URL": url})
    assert settings.redis_url == expected
    assert settings.effective_relay_redis_url == expected


def test_redis_password_default_url_and_directory(tmp_path: Path) -> None:
    env = {"JWT_SECRET": JWT_SECRET, "REDIS_PASSWORD": "pw"}
    settings = load_settings(CommonSettings, env)
    assert settings.redis_url == "redis://:pw@127.0.0.1:6379/0"
    assert settings.effective_directory_url == settings.redis_url
    mongo = "mongodb://mongo:27017"
    assert load_settings(CommonSettings, {**env, "DIRECTORY_URL": mongo}).directory_url == mongo
    # A redis directory is the same Redis or one like it: it gets the password as well.
    local = load_settings(CommonSettings, {**env, "DIRECTORY_URL": "redis://127.0.0.1:1/2"})
    assert local.directory_url == "redis://:pw@127.0.0.1:1/2"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mongodb://rtc@mongo:27017/?authSource=admin",
         f"mongodb://rtc:{QUOTED}@mongo:27017/?authSource=admin"),
        ("mongodb+srv://rtc@cluster.example/rtc", f"mongodb+srv://rtc:{QUOTED}@cluster.example/rtc"),
        ("mongodb://rtc@a:27017,b:27017/?replicaSet=rs", f"mongodb://rtc:{QUOTED}@a:27017,b:27017/?replicaSet=rs"),
        # A password in the URL wins; no user: nothing to give it to (the driver would refuse).
        ("mongodb://rtc:inline@mongo:27017", "mongodb://rtc:inline@mongo:27017"),
        ("mongodb://mongo:27017", "mongodb://mongo:27017"),
    ],
)  # fmt: skip
def test_directory_password_goes_to_the_mongodb_user(
    url: str, expected: str, tmp_path: Path
) -> None:
    env = {"JWT_SECRET": JWT_SECRET, "DIRECTORY_URL": url}
    assert (
        load_settings(CommonSettings, {**env, "DIRECTORY_PASSWORD": REDIS_PASSWORD}).directory_url
        == expected
    )
    path = tmp_path / "mongo_password"
    path.write_text(REDIS_PASSWORD + "\n")
    settings = load_settings(CommonSettings, {**env, "DIRECTORY_PASSWORD_FILE": str(path)})
    assert settings.directory_url == expected
    # The Redis password is not the directory's, nor the other way round.
    other = load_settings(CommonSettings, {**env, "REDIS_PASSWORD": "redis-only"})
    assert other.directory_url == url
    redis_dir = {"JWT_SECRET": JWT_SECRET, "DIRECTORY_URL": "redis://127.0.0.1:1/2"}
    plain = load_settings(CommonSettings, {**redis_dir, "DIRECTORY_PASSWORD": "mongo-only"})
    assert plain.directory_url == "redis://127.0.0.1:1/2"


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A redis-server that refuses clients without REDIS_PASSWORD; yields its URL (no password)."""
    port = free_port()
    server = Process(
        "redis-auth",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", REDIS_PASSWORD, "--logfile", ""],
        tmp_path / "redis-auth.log",
    )  # fmt: skip
    server.start()

    def answers() -> bool:
        server.ensure_alive()
        try:
            return bool(redis.Redis(port=port, password=REDIS_PASSWORD, socket_timeout=2).ping())
        except redis.RedisError:
            return False

    try:
        wait_for(answers, what="redis with a password")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


def test_redis_password_file_reaches_a_real_redis(redis_with_password: str, tmp_path: Path) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(redis_with_password, socket_timeout=2).ping()
    path = tmp_path / "redis-password"
    path.write_text(REDIS_PASSWORD + "\n")
    settings = load_settings(
        RelaySettings,
        {
            "JWT_SECRET": JWT_SECRET,
            "REDIS_URL": redis_with_password,
            "REDIS_PASSWORD_FILE": str(path),
        },
    )
    for url in (settings.redis_url, settings.effective_relay_redis_url):
        assert redis.Redis.from_url(url, socket_timeout=2).ping()


# --- 6. Twilio: https only (loopback aside), a bounded answer --------------------------------

TWILIO_BASE = {
    "JWT_SECRET": JWT_SECRET,
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_API_KEY": "SK" + "0" * 32,
    "TWILIO_API_SECRET": API_SECRET,
}


@pytest.mark.parametrize(
    "url",
    [
        "https://api.twilio.com",
        "https://twilio-proxy.internal:8443/prefix",
        "http://127.0.0.1:8089",
        "http://127.8.9.10/twilio",
        "http://[::1]:8089",
        "http://localhost:8089/",
        "http://LOCALHOST",
    ],
)
def test_twilio_base_url_accepted(url: str) -> None:
    settings = load_settings(IceSettings, {**TWILIO_BASE, "TWILIO_API_BASE_URL": url})
    assert settings.twilio_base_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://api.twilio.com",
        "http://10.0.0.5:8089",
        "http://[::2]:8089",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "ftp://127.0.0.1",
    ],
)
def test_twilio_base_url_refused(url: str) -> None:
    message = settings_error(IceSettings, {**TWILIO_BASE, "TWILIO_API_BASE_URL": url})
    assert "TWILIO_API_BASE_URL" in message
    assert API_SECRET not in message


@pytest.mark.parametrize("mode", ["oversized", "oversized_chunked"])
async def test_oversized_twilio_answer_is_an_upstream_failure(
    ice_client: IceClientFactory, twilio: TwilioStub, mode: str
) -> None:
    twilio.mode = mode
    env = {"RTC_PROVIDER": "twilio", **twilio.env(), "TWILIO_TIMEOUT_SECONDS": "5"}
    client: TestClient[Any, Any] = await ice_client(**env)
    headers = {"Authorization": f"Bearer {make_token('0xabc')}"}
    async with client.get(ICE, headers=headers) as response:
        body = await response.json()
        assert response.status == 503, body
        assert body["error"] == "ice_unavailable"
    [request] = twilio.requests
    assert request.status == 201  # Twilio did answer, with a valid but oversized body

    fallback = await ice_client(**env, RTC_PROVIDER_FALLBACK="coturn")
    async with fallback.get(ICE, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["provider"] == "coturn"


# --- 7. Mongo contacts: both directions, each checked ----------------------------------------

A, B = "0xaaa", "0xbbb"


def matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    """The subset of MongoDB's query language a contacts check may send."""
    for key, value in query.items():
        if key == "$or":
            if not any(matches(doc, part) for part in value):
                return False
        elif key == "$and":
            if not all(matches(doc, part) for part in value):
                return False
        elif isinstance(value, dict):
            raise AssertionError(f"operator not handled by the stand-in: {value}")
        elif doc.get(key) != value:
            return False
    return True


class ContactsStub:
    """A mockupdb server answering find / aggregate (count_documents) on `rtc.contacts` from
    `self.docs`, evaluated the way MongoDB would."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.server = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
        self.port = self.server.run()
        self.server.autoresponds(OpMsg("find", "contacts"), self._find)
        self.server.autoresponds(OpMsg("aggregate", "contacts"), self._aggregate)

    def _reply(self, request: Any, batch: list[dict[str, Any]]) -> bool:
        cursor = {"id": 0, "firstBatch": batch, "ns": "rtc.contacts"}
        return bool(request.replies(cursor=cursor))

    def _find(self, request: Any) -> bool:
        found = [doc for doc in self.docs if matches(doc, request.doc.get("filter", {}))]
        limit = abs(int(request.doc.get("limit", 0)))
        return self._reply(request, found[:limit] if limit else found)

    def _aggregate(self, request: Any) -> bool:
        docs = self.docs
        for stage in request.doc["pipeline"]:
            if "$match" in stage:
                docs = [doc for doc in docs if matches(doc, stage["$match"])]
            elif "$skip" in stage:
                docs = docs[stage["$skip"] :]
            elif "$limit" in stage:
                docs = docs[: stage["$limit"]]
            elif "$group" in stage:
                docs = [{"_id": 1, "n": len(docs)}] if docs else []
            else:
                raise AssertionError(f"stage not handled by the stand-in: {stage}")
        return self._reply(request, docs)

    def stop(self) -> None:
        self.server.stop()


@pytest.mark.parametrize(
    ("docs", "mutual"),
    [
        # One direction stored twice (a duplicate document), the other missing: not contacts.
        ([{"wallet": A, "contact": B}, {"wallet": A, "contact": B}], False),
        ([{"wallet": B, "contact": A}, {"wallet": B, "contact": A}], False),
        ([{"wallet": A, "contact": B}], False),
        ([{"wallet": A, "contact": B}, {"wallet": B, "contact": A}], True),
        (
            [{"wallet": A, "contact": B}, {"wallet": A, "contact": B}, {"wallet": B, "contact": A}],
            True,
        ),
        ([], False),
    ],
)
async def test_mongo_contacts_need_both_directions(
    docs: list[dict[str, Any]], mutual: bool
) -> None:
    stub = ContactsStub(docs)
    url = f"mongodb://127.0.0.1:{stub.port}/?directConnection=true"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, serverSelectionTimeoutMS=5000)
    settings = load_settings(CommonSettings, {"JWT_SECRET": JWT_SECRET, "DIRECTORY_URL": url})
    directory = MongoDirectory(client, settings)
    try:
        started = time.monotonic()
        answer = await asyncio.wait_for(directory.are_mutual_contacts(A, B), timeout=10)
        assert answer is mutual, (docs, time.monotonic() - started)
        assert await directory.are_mutual_contacts(B, A) is mutual
    finally:
        await directory.close()
        stub.stop()
