"""`rtcctl revoke WALLET [--for SECONDS]` and `rtcctl revoke --undo WALLET`: ice-service's admin
route through the gateway, authorised by ADMIN_TOKEN (or ADMIN_TOKEN_FILE)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from rtc_common.settings import read_secret_file

from . import local

REVOKE_PATH = "/api/v1/rtc/admin/revoke"


def _admin_token(env: dict[str, str]) -> str | None:
    if env.get("ADMIN_TOKEN_FILE"):
        return read_secret_file("ADMIN_TOKEN_FILE", Path(env["ADMIN_TOKEN_FILE"]))
    return env.get("ADMIN_TOKEN") or None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: urllib would follow it with the Authorization header, to any
    host."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_revoke(args: argparse.Namespace) -> int:
    env = local.run_env(args.run_dir / "env")
    try:
        token = _admin_token(env)
    except ValueError as exc:
        print(f"rtcctl revoke: {exc}", file=sys.stderr)
        return 2
    if not token:
        print("rtcctl revoke needs ADMIN_TOKEN (or ADMIN_TOKEN_FILE)", file=sys.stderr)
        return 2
    if args.undo and args.seconds is not None:
        print("rtcctl revoke: --undo takes no --for", file=sys.stderr)
        return 2
    gateway = local.gateway_url(args.run_dir, env, args.gateway)
    parts = urllib.parse.urlsplit(gateway)
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
        print(
            "rtcctl revoke: the gateway must be an https:// URL (http:// only on this host):"
            " the admin token must not cross a network in clear",
            file=sys.stderr,
        )
        return 2
    body: dict[str, object] = {"wallet": args.wallet}
    if args.seconds is not None:
        body["seconds"] = args.seconds
    request = urllib.request.Request(  # noqa: S310 (an operator-given http(s) URL)
        gateway + REVOKE_PATH,
        data=json.dumps(body).encode(),
        method="DELETE" if args.undo else "POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        opener = urllib.request.build_opener(_NoRedirect)
        with opener.open(request, timeout=args.timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())
            reason = f"{error.get('error')}: {error.get('message')}"
        except ValueError:
            reason = exc.reason
        print(f"rtcctl revoke: {exc.code} {reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"rtcctl revoke: gateway unreachable ({exc})", file=sys.stderr)
        return 1
    if args.undo:
        state = "lifted" if answer.get("wasRevoked") else "was not revoked"
        print(f"{answer['wallet']}\t{state}")
    else:
        until = answer.get("until") or "until lifted"
        print(f"{answer['wallet']}\trevoked since {answer['revokedAt']}, {until}")
    return 0


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    wallet_arg: Callable[[str], str],
) -> None:
    revoke = sub.add_parser(
        "revoke",
        help="end a user's access at once (sockets, ICE, relay, TURN), or lift it (--undo)",
    )
    revoke.add_argument("wallet", type=wallet_arg)
    revoke.add_argument(
        "--for",
        dest="seconds",
        type=int,
        default=None,
        metavar="SECONDS",
        help="revoke for this long (default: until `rtcctl revoke --undo`)",
    )
    revoke.add_argument("--undo", action="store_true", help="lift the wallet's revocation")
    revoke.add_argument(
        "--gateway", default=None, help="gateway URL (default: RTC_GATEWAY_URL, the local stack)"
    )
    revoke.add_argument("--timeout", type=float, default=10.0)
    revoke.set_defaults(func=cmd_revoke)
