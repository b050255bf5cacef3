"""The shared auth middleware, error envelope, CORS, request ids and client_ip on a bare app.

No service is involved: `create_base_app` with a few routes of our own, served on a real socket
by pytest-aiohttp. Tokens are made with PyJWT (or by hand where PyJWT refuses to make them).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.warnings import InsecureKeyLengthWarning
from rtc_common.auth import IDENTITY_KEY, allow_anonymous, get_identity
from rtc_common.keys import SETTINGS_KEY
from rtc_common.settings import CommonSettings, SettingsError, load_settings
from rtc_common.web import client_ip, create_base_app
from rtc_testkit.contract import JWT_SECRET, make_token

ORIGIN = "https://app.example.com"
WHOAMI = "/api/v1/rtc/whoami"
OTHER = "/api/other/thing"
MAYBE = "/api/v1/rtc/maybe"

BareClient = TestClient[Any, Any]
BareFactory = Callable[..., Awaitable[BareClient]]


async def whoami(request: web.Request) -> web.Response:
    identity = get_identity(request)
    return web.json_response({"wallet": identity.wallet, "method": identity.method})


@allow_anonymous
async def maybe(request: web.Request) -> web.Response:
    identity = request.get(IDENTITY_KEY)
    return web.json_response({"wallet": identity.wallet if identity else None})


async def peer(request: web.Request) -> web.Response:
    return web.json_response({"ip": client_ip(request, request.app[SETTINGS_KEY].trusted_proxies)})


def settings_for(**env: str) -> CommonSettings:
    base = {"JWT_SECRET": JWT_SECRET, "ALLOW_BEARER_AUTH": "true", "ALLOWED_ORIGINS": ORIGIN}
    return load_settings(CommonSettings, {**base, **env})


def build_app(settings: CommonSettings) -> web.Application:
    app = create_base_app(settings)
    app.router.add_get(WHOAMI, whoami)
    app.router.add_get(OTHER, whoami)
    app.router.add_get(MAYBE, maybe)
    app.router.add_get("/peer", peer)
    return app


@pytest.fixture
def bare(aiohttp_client: Any) -> BareFactory:
    """A bare app on a real socket; keyword arguments are env variables over the defaults above.

    `max_field_size` raises the HTTP parser's header limit (aiohttp's default, 8190, answers a
    plain-text 400 before the middleware runs, which hides the auth layer's own length check).
    """

    async def make(*, max_field_size: int | None = None, **env: str) -> BareClient:
        app = build_app(settings_for(**env))
        if max_field_size is None:
            client: BareClient = await aiohttp_client(app)
            return client
        server = TestServer(app)
        await server.start_server(max_field_size=max_field_size)
        client = await aiohttp_client(server)
        return client

    return make


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT assembled without PyJWT (which refuses to make the hostile ones)."""
    head = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    return head + "." + b64url(signature)


def hs256_by_hand(claims: dict[str, Any], secret: bytes) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def later(seconds: float = 3600) -> int:
    return int(time.time() + seconds)


async def assert_error(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json"
    body: dict[str, Any] = json.loads(text)
    assert set(body) == {"error", "message", "requestId"}
    assert body["error"] == code
    assert body["requestId"] == response.headers["X-Request-ID"]
    assert "Traceback" not in text
    return body


# --- Bearer tokens ------------------------------------------------------------------------


async def test_valid_bearer_token(bare: BareFactory) -> None:
    client = await bare()
    response = await client.get(WHOAMI, headers=bearer(make_token("0xAbCdEf")))
    assert response.status == 200
    # 0x-hex wallets are normalized to lowercase.
    assert await response.json() == {"wallet": "0xabcdef", "method": "bearer"}


async def test_no_credentials_is_401(bare: BareFactory) -> None:
    client = await bare()
    body = await assert_error(await client.get(WHOAMI), 401, "unauthorized")
    assert body["message"]


def _bad_tokens() -> dict[str, str]:
    exp = later()
    header, _payload, signature = make_token().split(".")
    tampered = b64url(json.dumps({"wallet": "0xevil", "exp": exp}).encode())
    with warnings.catch_warnings():
        # The pinned secret is short for SHA-512; the token is refused for its algorithm anyway.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        hs512 = make_token(algorithm="HS512")
    return {
        "bad_signature": make_token(secret="another-secret-of-sufficient-length-0123"),
        "tampered_payload": f"{header}.{tampered}.{signature}",
        "alg_none": hand_token({"alg": "none", "typ": "JWT"}, {"wallet": "0xabc", "exp": exp}),
        "alg_none_with_sig": hand_token(
            {"alg": "none"}, {"wallet": "0xabc", "exp": exp}, b"signature"
        ),
        "alg_None_case": hand_token({"alg": "None"}, {"wallet": "0xabc", "exp": exp}),
        "hs512_not_pinned": hs512,
        "expired": make_token(expires_in=-120),
        "missing_exp": jwt.encode({"wallet": "0xabc"}, JWT_SECRET, algorithm="HS256"),
        "exp_not_a_number": jwt.encode({"wallet": "0xabc", "exp": "tomorrow"}, JWT_SECRET),
        "not_before_in_future": make_token(nbf=later(600)),
        "junk": "junk",
        "three_junk_parts": "a.b.c",
        "empty_parts": "..",
        "header_not_an_object": b64url(b"[]") + "." + b64url(b"{}") + ".x",
        "alg_is_a_list": hand_token({"alg": ["HS256"]}, {"wallet": "0xabc", "exp": exp}),
        "payload_not_an_object": b64url(b'{"alg":"HS256"}') + "." + b64url(b"[1]") + ".x",
        "unknown_crit": hand_token({"alg": "HS256", "crit": ["x"]}, {"exp": exp}, b"x"),
        "non_ascii": "é.é.é",
        "wallet_with_separator": make_token("0xabc:0xdef"),
        "wallet_not_a_string": jwt.encode({"wallet": ["0xabc"], "exp": exp}, JWT_SECRET),
        "no_wallet_nor_sub": make_token(None),
    }


@pytest.mark.parametrize("name", list(_bad_tokens()))
async def test_bad_bearer_tokens_are_401(bare: BareFactory, name: str) -> None:
    client = await bare()
    token = _bad_tokens()[name]
    response = await client.get(WHOAMI, headers=bearer(token))
    await assert_error(response, 401, "unauthorized")
    # A bad token never degrades to anonymous, even on a route that allows anonymous callers.
    await assert_error(await client.get(MAYBE, headers=bearer(token)), 401, "unauthorized")


async def test_bad_tokens_share_one_message(bare: BareFactory) -> None:
    """Callers learn nothing about which check failed (expired and no-wallet aside)."""
    client = await bare()
    tokens = _bad_tokens()
    messages = set()
    for name in ("bad_signature", "alg_none", "hs512_not_pinned", "missing_exp", "junk"):
        response = await client.get(WHOAMI, headers=bearer(tokens[name]))
        messages.add((await assert_error(response, 401, "unauthorized"))["message"])
    assert messages == {"invalid token"}


async def test_token_of_20_kb_is_401(bare: BareFactory) -> None:
    client = await bare(max_field_size=64 * 1024)
    token = make_token(padding="x" * 20_000)
    assert len(token) > 20_000
    response = await client.get(WHOAMI, headers=bearer(token))
    body = await assert_error(response, 401, "unauthorized")
    assert token not in json.dumps(body)
    # The same limit holds for the cookie (with a matching CSRF pair).
    response = await client.get(
        WHOAMI, headers={"Cookie": f"access_token={token}; csrf_token=c", "X-CSRF-Token": "c"}
    )
    await assert_error(response, 401, "unauthorized")


async def test_undecodable_header_bytes_are_401_not_500(bare: BareFactory) -> None:
    """Raw bytes that are not UTF-8 in the credentials headers (sent on a raw socket)."""
    client = await bare()
    token = make_token().encode()
    requests = {
        b"Authorization: Bearer \xff\xfe.\xff.\xff\r\n": 401,
        b"Authorization: Bearer " + token + b"\xff\r\n": 401,
        # Matching CSRF bytes that are not UTF-8: compared as bytes, then the JWT decides.
        b"Cookie: access_token="
        + token
        + b"; csrf_token=\xff\xfe\r\nX-CSRF-Token: \xff\xfe\r\n": 200,
        b"Cookie: access_token="
        + token
        + b"; csrf_token=\xff\xfe\r\nX-CSRF-Token: \xff\xfd\r\n": 403,
    }
    for headers, expected in requests.items():
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(b"GET " + WHOAMI.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
        writer.write(headers + b"\r\n")
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
        status_line, _, rest = raw.partition(b"\r\n")
        assert status_line.split()[1] == str(expected).encode(), raw[:300]
        if expected != 200:
            body = json.loads(rest.partition(b"\r\n\r\n")[2])
            assert body["error"] == ("unauthorized" if expected == 401 else "csrf_failed")


async def test_issuer_and_audience_when_configured(bare: BareFactory) -> None:
    client = await bare(JWT_ISSUER="https://issuer.example", JWT_AUDIENCE="rtc")
    good = make_token(iss="https://issuer.example", aud="rtc")
    assert (await client.get(WHOAMI, headers=bearer(good))).status == 200
    for token in (
        make_token(iss="https://evil.example", aud="rtc"),
        make_token(iss="https://issuer.example", aud="other"),
        make_token(aud="rtc"),  # no iss at all
        make_token(iss="https://issuer.example"),  # no aud at all
    ):
        await assert_error(await client.get(WHOAMI, headers=bearer(token)), 401, "unauthorized")


async def test_issuer_and_audience_ignored_when_not_configured(bare: BareFactory) -> None:
    client = await bare()
    token = make_token(iss="https://anyone.example", aud="anything")
    assert (await client.get(WHOAMI, headers=bearer(token))).status == 200


async def test_sub_fallback_and_wallet_claim(bare: BareFactory) -> None:
    client = await bare()
    response = await client.get(WHOAMI, headers=bearer(make_token(None, sub="0xFEED")))
    assert (await response.json())["wallet"] == "0xfeed"
    # `wallet` wins over `sub`; non-hex wallets keep their case.
    response = await client.get(WHOAMI, headers=bearer(make_token("Alice.Example", sub="0xfeed")))
    assert (await response.json())["wallet"] == "Alice.Example"

    custom = await bare(JWT_WALLET_CLAIM="addr")
    response = await custom.get(WHOAMI, headers=bearer(make_token(None, addr="0xC0FFEE")))
    assert response.status == 200
    assert (await response.json())["wallet"] == "0xc0ffee"
    # With a custom claim, `wallet` is just another claim; `sub` is still the fallback.
    response = await custom.get(WHOAMI, headers=bearer(make_token("0xabc", sub="0xdef")))
    assert (await response.json())["wallet"] == "0xdef"
    # A `wallet` claim and no `sub` (make_token writes both).
    only_wallet = jwt.encode({"wallet": "0xabc", "exp": int(time.time()) + 600}, JWT_SECRET)
    response = await custom.get(WHOAMI, headers=bearer(only_wallet))
    body = await assert_error(response, 401, "unauthorized")
    assert "wallet" in body["message"]


async def test_bearer_disabled(bare: BareFactory) -> None:
    client = await bare(ALLOW_BEARER_AUTH="false")
    token = make_token()
    await assert_error(await client.get(WHOAMI, headers=bearer(token)), 401, "unauthorized")
    await assert_error(await client.get(MAYBE, headers=bearer(token)), 401, "unauthorized")
    # The cookie still works.
    cookie = {"Cookie": f"access_token={token}; csrf_token=c5rf", "X-CSRF-Token": "c5rf"}
    assert (await client.get(WHOAMI, headers=cookie)).status == 200


async def test_bearer_only_on_whitelisted_paths(bare: BareFactory) -> None:
    client = await bare()
    token = make_token()
    assert (await client.get(WHOAMI, headers=bearer(token))).status == 200
    await assert_error(await client.get(OTHER, headers=bearer(token)), 401, "unauthorized")
    # The cookie is not restricted to the whitelist.
    cookie = {"Cookie": f"access_token={token}; csrf_token=c5rf", "X-CSRF-Token": "c5rf"}
    response = await client.get(OTHER, headers=cookie)
    assert response.status == 200
    assert (await response.json())["method"] == "cookie"


async def test_custom_bearer_whitelist(bare: BareFactory) -> None:
    client = await bare(BEARER_ROUTE_WHITELIST=r"^/api/other(?:/.*)?$")
    token = make_token()
    assert (await client.get(OTHER, headers=bearer(token))).status == 200
    await assert_error(await client.get(WHOAMI, headers=bearer(token)), 401, "unauthorized")


@pytest.mark.parametrize(
    "authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "Token abc", "bearer"]
)
async def test_unsupported_authorization_is_401(bare: BareFactory, authorization: str) -> None:
    client = await bare()
    response = await client.get(WHOAMI, headers={"Authorization": authorization})
    await assert_error(response, 401, "unauthorized")


async def test_allow_anonymous_route(bare: BareFactory) -> None:
    client = await bare()
    response = await client.get(MAYBE)
    assert response.status == 200
    assert await response.json() == {"wallet": None}
    response = await client.get(MAYBE, headers=bearer(make_token("0xABC")))
    assert await response.json() == {"wallet": "0xabc"}


# --- Cookie + CSRF ------------------------------------------------------------------------


def cookie_headers(
    token: str | None,
    csrf_cookie: str | None = "c5rf-value",
    csrf_header: str | None = "c5rf-value",
    *,
    jwt_cookie: str = "access_token",
    csrf_cookie_name: str = "csrf_token",
    csrf_header_name: str = "X-CSRF-Token",
) -> dict[str, str]:
    cookies = []
    if token is not None:
        cookies.append(f"{jwt_cookie}={token}")
    if csrf_cookie is not None:
        cookies.append(f"{csrf_cookie_name}={csrf_cookie}")
    headers = {"Cookie": "; ".join(cookies)}
    if csrf_header is not None:
        headers[csrf_header_name] = csrf_header
    return headers


async def test_cookie_with_csrf(bare: BareFactory) -> None:
    client = await bare()
    response = await client.get(WHOAMI, headers=cookie_headers(make_token("0xDEF")))
    assert response.status == 200
    assert await response.json() == {"wallet": "0xdef", "method": "cookie"}


@pytest.mark.parametrize(
    ("csrf_cookie", "csrf_header"),
    [
        ("c5rf-value", None),  # no CSRF header
        ("c5rf-value", "other-value"),  # mismatch
        (None, "c5rf-value"),  # no CSRF cookie
        ("", ""),  # both empty
        ("c5rf-value", "c5rf-valu"),  # prefix
    ],
)
async def test_cookie_csrf_failures_are_403(
    bare: BareFactory, csrf_cookie: str | None, csrf_header: str | None
) -> None:
    client = await bare()
    headers = cookie_headers(make_token(), csrf_cookie, csrf_header)
    await assert_error(await client.get(WHOAMI, headers=headers), 403, "csrf_failed")


async def test_cookie_with_bad_jwt_and_good_csrf_is_401(bare: BareFactory) -> None:
    client = await bare()
    for token in (make_token(expires_in=-60), "junk", make_token(secret="x" * 40)):
        response = await client.get(WHOAMI, headers=cookie_headers(token))
        await assert_error(response, 401, "unauthorized")


async def test_custom_cookie_and_csrf_names(bare: BareFactory) -> None:
    client = await bare(
        JWT_COOKIE_NAME="session_jwt", CSRF_COOKIE_NAME="xsrf", CSRF_HEADER_NAME="X-XSRF"
    )
    names = {"jwt_cookie": "session_jwt", "csrf_cookie_name": "xsrf", "csrf_header_name": "X-XSRF"}
    ok = await client.get(WHOAMI, headers=cookie_headers(make_token("0xaa"), **names))
    assert ok.status == 200
    assert (await ok.json())["method"] == "cookie"
    # The default names mean nothing now: a default-named JWT cookie is no credential at all...
    default = await client.get(WHOAMI, headers=cookie_headers(make_token("0xaa")))
    await assert_error(default, 401, "unauthorized")
    # ...and the default CSRF header does not satisfy the custom one.
    mixed = cookie_headers(make_token("0xaa"), jwt_cookie="session_jwt", csrf_cookie_name="xsrf")
    await assert_error(await client.get(WHOAMI, headers=mixed), 403, "csrf_failed")


# --- Public-key algorithms ----------------------------------------------------------------


def rsa_keys() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()


def ec_keys() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()


def signed(key: Any, algorithm: str, **claims: Any) -> str:
    return jwt.encode({"exp": later(), "wallet": "0xABC", **claims}, key, algorithm=algorithm)


async def test_rs256_public_key(bare: BareFactory) -> None:
    key, pem = rsa_keys()
    client = await bare(JWT_ALGORITHMS="RS256", JWT_PUBLIC_KEY=pem, JWT_SECRET="")
    response = await client.get(WHOAMI, headers=bearer(signed(key, "RS256")))
    assert response.status == 200
    assert (await response.json())["wallet"] == "0xabc"
    other_key, _ = rsa_keys()
    refused = await client.get(WHOAMI, headers=bearer(signed(other_key, "RS256")))
    await assert_error(refused, 401, "unauthorized")
    # An HS256 token, even signed with the right HMAC secret, is not an accepted algorithm.
    await assert_error(await client.get(WHOAMI, headers=bearer(make_token())), 401, "unauthorized")


async def test_public_key_from_a_file(bare: BareFactory, tmp_path: Path) -> None:
    key, pem = rsa_keys()
    key_file = tmp_path / "jwt.pem"
    key_file.write_text(pem)
    client = await bare(JWT_ALGORITHMS="RS256", JWT_PUBLIC_KEY_FILE=str(key_file), JWT_SECRET="")
    response = await client.get(WHOAMI, headers=bearer(signed(key, "RS256")))
    assert response.status == 200
    with pytest.raises(SettingsError) as failed:
        load_settings(
            CommonSettings,
            {"JWT_ALGORITHMS": "RS256", "JWT_PUBLIC_KEY_FILE": str(tmp_path / "missing.pem")},
        )
    assert "JWT_PUBLIC_KEY_FILE" in str(failed.value)


async def test_es256_public_key(bare: BareFactory) -> None:
    key, pem = ec_keys()
    client = await bare(JWT_ALGORITHMS="ES256", JWT_PUBLIC_KEY=pem, JWT_SECRET="")
    response = await client.get(WHOAMI, headers=bearer(signed(key, "ES256", wallet="0xE5")))
    assert response.status == 200
    assert (await response.json())["wallet"] == "0xe5"
    other_key, _ = ec_keys()
    refused = await client.get(WHOAMI, headers=bearer(signed(other_key, "ES256")))
    await assert_error(refused, 401, "unauthorized")
    rsa_key, _ = rsa_keys()
    refused = await client.get(WHOAMI, headers=bearer(signed(rsa_key, "RS256")))
    await assert_error(refused, 401, "unauthorized")


async def test_public_key_used_even_with_a_leftover_jwt_secret(bare: BareFactory) -> None:
    """JWT_SECRET set as well (e.g. left over from an HS256 setup) must not become the key."""
    key, pem = rsa_keys()
    client = await bare(JWT_ALGORITHMS="RS256", JWT_PUBLIC_KEY=pem)  # JWT_SECRET from the base
    response = await client.get(WHOAMI, headers=bearer(signed(key, "RS256")))
    assert response.status == 200, await response.text()
    await assert_error(await client.get(WHOAMI, headers=bearer(make_token())), 401, "unauthorized")


@pytest.mark.parametrize("pinned", ["RS256", "ES256"])
async def test_algorithm_confusion_is_refused(bare: BareFactory, pinned: str) -> None:
    """HS256 signed with the public key's PEM text as the HMAC secret (the classic confusion)."""
    _key, pem = rsa_keys() if pinned == "RS256" else ec_keys()
    client = await bare(JWT_ALGORITHMS=pinned, JWT_PUBLIC_KEY=pem, JWT_SECRET="")
    claims = {"wallet": "0xabc", "exp": later()}
    for secret in (pem.encode(), pem.strip().encode()):
        forged = hs256_by_hand(claims, secret)
        response = await client.get(WHOAMI, headers=bearer(forged))
        await assert_error(response, 401, "unauthorized")


# --- Key rotation -------------------------------------------------------------------------

PREVIOUS_SECRET = "the-secret-being-retired-0123456789abcdef"


async def test_hmac_key_rotation(bare: BareFactory) -> None:
    """JWT_SECRET_PREVIOUS: tokens of the retired secret stay valid during the rotation; once it
    is removed they are refused. Expiry and claims are checked whichever key matched."""
    old_token = make_token("0xo1d", secret=PREVIOUS_SECRET)
    rotating = await bare(JWT_SECRET_PREVIOUS=PREVIOUS_SECRET)
    for token in (make_token("0xo1d"), old_token):
        response = await rotating.get(WHOAMI, headers=bearer(token))
        assert (await response.json())["wallet"] == "0xo1d"
    for refused in (
        make_token(secret=PREVIOUS_SECRET, expires_in=-5),
        make_token(secret="a-third-secret-never-configured-0123456789"),
        make_token(None, secret=PREVIOUS_SECRET),
    ):
        await assert_error(await rotating.get(WHOAMI, headers=bearer(refused)), 401, "unauthorized")
    expired = await rotating.get(
        WHOAMI, headers=bearer(make_token(secret=PREVIOUS_SECRET, expires_in=-5))
    )
    assert (await expired.json())["message"] == "token expired"
    retired = await bare()
    await assert_error(await retired.get(WHOAMI, headers=bearer(old_token)), 401, "unauthorized")
    # The previous key of the other family is not used (a leftover JWT_SECRET_PREVIOUS with RS256).
    _key, pem = rsa_keys()
    rs_only = await bare(
        JWT_ALGORITHMS="RS256", JWT_PUBLIC_KEY=pem, JWT_SECRET_PREVIOUS=PREVIOUS_SECRET
    )
    await assert_error(await rs_only.get(WHOAMI, headers=bearer(old_token)), 401, "unauthorized")


async def test_public_key_rotation(bare: BareFactory, tmp_path: Path) -> None:
    new_key, new_pem = rsa_keys()
    old_key, old_pem = rsa_keys()
    other_key, _ = rsa_keys()
    (tmp_path / "old.pem").write_text(old_pem)
    for env in (
        {"JWT_PUBLIC_KEY_PREVIOUS": old_pem},
        {"JWT_PUBLIC_KEY_PREVIOUS_FILE": str(tmp_path / "old.pem")},
    ):
        client = await bare(JWT_ALGORITHMS="RS256", JWT_PUBLIC_KEY=new_pem, JWT_SECRET="", **env)
        for key in (new_key, old_key):
            response = await client.get(WHOAMI, headers=bearer(signed(key, "RS256")))
            assert response.status == 200, await response.text()
        refused = await client.get(WHOAMI, headers=bearer(signed(other_key, "RS256")))
        await assert_error(refused, 401, "unauthorized")
        # HS256 signed with either PEM as the HMAC secret: still the algorithm confusion.
        for pem in (new_pem, old_pem):
            forged = hs256_by_hand({"wallet": "0xabc", "exp": later()}, pem.encode())
            await assert_error(
                await client.get(WHOAMI, headers=bearer(forged)), 401, "unauthorized"
            )


def test_unusable_previous_keys_fail_at_start(tmp_path: Path) -> None:
    _key, pem = rsa_keys()
    _ec_key, ec_pem = ec_keys()
    base = {"JWT_ALGORITHMS": "RS256", "JWT_PUBLIC_KEY": pem}
    for env, variable in (
        ({"JWT_PUBLIC_KEY_PREVIOUS": ec_pem}, "JWT_PUBLIC_KEY_PREVIOUS"),
        ({"JWT_PUBLIC_KEY_PREVIOUS": SECRET_VALUE}, "JWT_PUBLIC_KEY_PREVIOUS"),
        (
            {"JWT_PUBLIC_KEY_PREVIOUS_FILE": str(tmp_path / "missing.pem")},
            "JWT_PUBLIC_KEY_PREVIOUS_FILE",
        ),
    ):
        with pytest.raises(SettingsError) as error:
            load_settings(CommonSettings, {**base, **env})
        assert variable in str(error.value)
        assert SECRET_VALUE not in str(error.value)


# --- Settings -----------------------------------------------------------------------------

SECRET_VALUE = "do-not-echo-this-secret-0123456789"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"JWT_SECRET": SECRET_VALUE, "JWT_ALGORITHMS": "none"}, "JWT_ALGORITHMS"),
        ({"JWT_SECRET": SECRET_VALUE, "JWT_ALGORITHMS": "HS256,none"}, "JWT_ALGORITHMS"),
        ({"JWT_SECRET": SECRET_VALUE, "JWT_ALGORITHMS": " , "}, "JWT_ALGORITHMS"),
        ({}, "JWT_SECRET"),
        ({"JWT_ALGORITHMS": "HS256"}, "JWT_SECRET"),
        ({"JWT_SECRET": SECRET_VALUE, "JWT_ALGORITHMS": "RS256"}, "JWT_PUBLIC_KEY"),
        (
            {"JWT_SECRET": SECRET_VALUE, "JWT_PUBLIC_KEY": "pem", "JWT_ALGORITHMS": "HS256,RS256"},
            "JWT_ALGORITHMS",
        ),
        ({"JWT_PUBLIC_KEY": SECRET_VALUE, "JWT_ALGORITHMS": "RS256"}, "JWT_PUBLIC_KEY"),
        (
            {"JWT_SECRET": SECRET_VALUE, "BEARER_ROUTE_WHITELIST": "^/api/("},
            "BEARER_ROUTE_WHITELIST",
        ),
        ({"JWT_SECRET": SECRET_VALUE, "ALLOW_BEARER_AUTH": "perhaps"}, "ALLOW_BEARER_AUTH"),
        ({"JWT_SECRET": SECRET_VALUE, "TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES"),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(CommonSettings, env)
    message = str(error.value)
    assert variable in message
    assert SECRET_VALUE not in message
    assert SECRET_VALUE not in repr(error.value)


def test_unusable_public_keys_fail_at_start() -> None:
    rsa_key, rsa_pem = rsa_keys()
    _ec_key, ec_pem = ec_keys()
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    for algorithms, pem in (
        ("ES256", rsa_pem),  # wrong key type for the pinned algorithm
        ("RS256", ec_pem),
        ("RS256", private_pem),  # a private key has no business in a service's environment
    ):
        with pytest.raises(SettingsError) as error:
            load_settings(CommonSettings, {"JWT_ALGORITHMS": algorithms, "JWT_PUBLIC_KEY": pem})
        assert "JWT_PUBLIC_KEY" in str(error.value)
        assert pem.splitlines()[1] not in str(error.value)


# --- Errors, routing and request ids ------------------------------------------------------


async def test_unknown_api_route_is_404_not_401(bare: BareFactory) -> None:
    client = await bare()
    await assert_error(await client.get("/api/v1/rtc/nothing"), 404, "not_found")
    await assert_error(await client.get("/api/unknown"), 404, "not_found")
    # Wrong method on a known route: 405 with Allow, still before authentication.
    response = await client.post(WHOAMI)
    await assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


async def test_routes_outside_api_need_no_credentials(bare: BareFactory) -> None:
    client = await bare()
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/peer", headers=bearer("junk"))).status == 200


async def test_request_id_is_echoed(bare: BareFactory) -> None:
    client = await bare()
    request_id = "req-1234.abcd_EF"
    response = await client.get(WHOAMI, headers={"X-Request-ID": request_id})
    assert response.headers["X-Request-ID"] == request_id
    assert (await assert_error(response, 401, "unauthorized"))["requestId"] == request_id
    ok = await client.get(WHOAMI, headers={"X-Request-ID": request_id, **bearer(make_token())})
    assert ok.status == 200
    assert ok.headers["X-Request-ID"] == request_id


@pytest.mark.parametrize(
    "hostile",
    [
        "x" * 500,
        "short",
        "has spaces in it",
        "<script>alert(1)</script>",
        "../../etc/passwd",
        "id;DROP TABLE users",
        "ünïcödé-request-id",
    ],
)
async def test_hostile_request_id_is_replaced(bare: BareFactory, hostile: str) -> None:
    client = await bare()
    response = await client.get(WHOAMI, headers={"X-Request-ID": hostile})
    body = await assert_error(response, 401, "unauthorized")
    replaced = response.headers["X-Request-ID"]
    assert replaced != hostile
    assert len(replaced) == 32 and all(c in "0123456789abcdef" for c in replaced)
    assert body["requestId"] == replaced


async def test_request_id_with_newline_never_reaches_a_header(bare: BareFactory) -> None:
    client = await bare()
    for injection in (b"abcdefgh1\r\n Injected: yes", b"abcdefgh1\nInjected: yes"):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(
            b"GET /api/v1/rtc/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"X-Request-ID: " + injection + b"\r\n\r\n"
        )
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
        head = raw.partition(b"\r\n\r\n")[0].lower()
        assert b"\r\ninjected:" not in head
        assert b"x-request-id: abcdefgh1" not in head


# --- CORS ---------------------------------------------------------------------------------


async def test_cors_allowed_origin(bare: BareFactory) -> None:
    client = await bare()
    ok = await client.get(WHOAMI, headers={"Origin": ORIGIN, **bearer(make_token())})
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert ok.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in ok.headers["Vary"]
    # Errors carry the CORS headers too, so the browser app can read the envelope.
    refused = await client.get(WHOAMI, headers={"Origin": ORIGIN})
    await assert_error(refused, 401, "unauthorized")
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN


@pytest.mark.parametrize(
    "origin", ["https://evil.example.com", "https://app.example.com.evil.net", "null", "*"]
)
async def test_cors_foreign_origin_gets_nothing(bare: BareFactory, origin: str) -> None:
    client = await bare()
    for headers in ({"Origin": origin, **bearer(make_token())}, {"Origin": origin}):
        response = await client.get(WHOAMI, headers=headers)
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Credentials" not in response.headers


async def test_cors_preflight(bare: BareFactory) -> None:
    client = await bare(CSRF_HEADER_NAME="X-My-CSRF")
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-my-csrf",
    }
    allowed = await client.options(WHOAMI, headers={"Origin": ORIGIN, **preflight})
    assert allowed.status == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    allow_headers = [
        h.strip().lower() for h in allowed.headers["Access-Control-Allow-Headers"].split(",")
    ]
    assert "x-my-csrf" in allow_headers
    assert "authorization" in allow_headers
    assert "GET" in allowed.headers["Access-Control-Allow-Methods"]

    foreign = await client.options(WHOAMI, headers={"Origin": "https://evil.example", **preflight})
    await assert_error(foreign, 403, "forbidden")
    assert "Access-Control-Allow-Origin" not in foreign.headers
    no_origin = await client.options(WHOAMI, headers=preflight)
    await assert_error(no_origin, 403, "forbidden")


async def test_no_cors_without_allowed_origins(bare: BareFactory) -> None:
    client = await bare(ALLOWED_ORIGINS="")
    response = await client.get(WHOAMI, headers={"Origin": ORIGIN, **bearer(make_token())})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers


# --- client_ip ----------------------------------------------------------------------------


async def peer_ip(client: BareClient, forwarded: str | None, **kwargs: Any) -> str:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    response = await client.get("/peer", headers=headers, **kwargs)
    assert response.status == 200
    ip: str = (await response.json())["ip"]
    return ip


async def test_client_ip_from_trusted_proxy(bare: BareFactory) -> None:
    client = await bare()  # TRUSTED_PROXIES defaults to 127.0.0.1, our own address
    assert await peer_ip(client, None) == "127.0.0.1"
    assert await peer_ip(client, "203.0.113.7") == "203.0.113.7"
    # Only the nearest untrusted hop counts: a client can prepend anything it likes.
    assert await peer_ip(client, "6.6.6.6, 203.0.113.7") == "203.0.113.7"
    assert await peer_ip(client, "203.0.113.7, 127.0.0.1") == "203.0.113.7"
    assert await peer_ip(client, "not-an-ip") == "127.0.0.1"
    assert await peer_ip(client, "203.0.113.7, junk") == "127.0.0.1"


async def test_client_ip_through_a_chain_of_trusted_proxies(bare: BareFactory) -> None:
    client = await bare(TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8")
    assert await peer_ip(client, "198.51.100.9, 10.1.2.3") == "198.51.100.9"
    assert await peer_ip(client, "6.6.6.6, 198.51.100.9, 10.1.2.3") == "198.51.100.9"
    # Every hop trusted: the first one is the best there is.
    assert await peer_ip(client, "10.9.9.9, 10.1.2.3") == "10.9.9.9"


async def test_client_ip_ignores_forwarded_for_from_untrusted_peer(bare: BareFactory) -> None:
    client = await bare(TRUSTED_PROXIES="10.0.0.0/8")
    assert await peer_ip(client, "203.0.113.7") == "127.0.0.1"
    assert await peer_ip(client, "10.1.2.3") == "127.0.0.1"


async def test_client_ip_from_another_loopback_address(bare: BareFactory) -> None:
    """A real peer outside TRUSTED_PROXIES (127.0.0.2 is loopback on Linux, but not trusted)."""
    client = await bare()
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = client.make_url("/peer")
        async with session.get(url, headers={"X-Forwarded-For": "203.0.113.7"}) as response:
            assert response.status == 200
            assert (await response.json())["ip"] == "127.0.0.2"
