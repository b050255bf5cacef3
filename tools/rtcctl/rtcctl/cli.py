"""rtcctl: tokens for the local stack, feature flags, revocations, and the local-stack runner's
helpers.

Settings come from the same variables as the services: the run folder's `env` file (default
`.run/env`, or RTC_RUN_DIR) with the process environment taking precedence.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from rtc_common.auth import is_valid_wallet, normalize_wallet
from rtc_common.directory import Directory, open_directory
from rtc_common.settings import CommonSettings, SettingsError, load_settings
from rtc_common.tokens import mint_for

from . import doctor, local, revoke


def _settings(run_dir: Path) -> CommonSettings:
    return load_settings(CommonSettings, local.run_env(run_dir / "env"))


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings(args.run_dir)
    if settings.jwt_secret is None or not settings.jwt_algorithms[0].startswith("HS"):
        print(
            "rtcctl token needs JWT_SECRET (HMAC); this deployment verifies with a public key,"
            " so its tokens come from the main application",
            file=sys.stderr,
        )
        return 2
    wallet = normalize_wallet(args.wallet)
    if not is_valid_wallet(wallet):
        print(f"not a valid wallet: {args.wallet!r}", file=sys.stderr)
        return 2
    if args.ttl < 1:
        print("--ttl must be at least 1 second", file=sys.stderr)
        return 2
    token = mint_for(settings, wallet, expires_in=args.ttl)
    assert token is not None  # JWT_SECRET was checked above
    print(token)
    return 0


DirectoryCommand = Callable[[argparse.Namespace, Directory], Awaitable[int]]


def with_directory(command: DirectoryCommand) -> Callable[[argparse.Namespace], int]:
    """Run `command` against the configured directory; its failures are one clear line."""

    async def run(args: argparse.Namespace) -> int:
        directory = open_directory(_settings(args.run_dir))
        try:
            return await command(args, directory)
        except Exception as exc:  # the operator needs the reason, not a traceback
            print(f"directory unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 1
        finally:
            await directory.close()

    return lambda args: asyncio.run(run(args))


@with_directory
async def cmd_flags(args: argparse.Namespace, directory: Directory) -> int:
    if args.action == "list":
        flags = await directory.list_flags()
        for key in sorted(flags):
            print(f"{key}\t{'enabled' if flags[key] else 'disabled'}")
        if not flags:
            print("(no flags set)")
        return 0
    if args.key is None:
        print(f"rtcctl flags {args.action} needs a KEY", file=sys.stderr)
        return 2
    if args.if_missing and await directory.get_flag(args.key) is not None:
        print(f"{args.key} already set, left as it is")
        return 0
    await directory.set_flag(args.key, args.action == "enable")
    print(f"{args.key} {args.action}d")
    return 0


def wallet_arg(value: str) -> str:
    wallet = normalize_wallet(value)
    if not is_valid_wallet(wallet):
        raise argparse.ArgumentTypeError(f"not a valid wallet: {value!r}")
    return wallet


@with_directory
async def cmd_contacts(args: argparse.Namespace, directory: Directory) -> int:
    if args.action == "list":
        for contact in await directory.mutual_contacts(args.a):
            print(contact)
        return 0
    if args.b is None or args.a == args.b:
        print(f"rtcctl contacts {args.action} needs two different wallets", file=sys.stderr)
        return 2
    # Contacts are mutual for signaling: both directions are written (or removed).
    for owner, contact in ((args.a, args.b), (args.b, args.a)):
        if args.action == "add":
            await directory.add_contact(owner, contact)
        else:
            await directory.remove_contact(owner, contact)
    print(f"{args.a} <-> {args.b} {'added' if args.action == 'add' else 'removed'}")
    return 0


@with_directory
async def cmd_rtc(args: argparse.Namespace, directory: Directory) -> int:
    if args.action == "status":
        enabled = await directory.is_rtc_enabled(args.wallet)
        print(f"{args.wallet}\t{'enabled' if enabled else 'disabled'}")
        return 0
    await directory.set_rtc_enabled(args.wallet, args.action == "enable")
    print(f"RTC {args.action}d for {args.wallet}")
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    if args.action == "prepare":
        ports = local.StackPorts(
            gateway=int(os.environ.get("RTC_GATEWAY_PORT", "8080")),
            redis=int(os.environ.get("RTC_REDIS_PORT", "6390")),
            turn=int(os.environ.get("RTC_TURN_PORT", "3478")),
            signal=[8201 + i for i in range(int(os.environ.get("RTC_SIGNAL_INSTANCES", "2")))],
            prometheus=(
                int(os.environ.get("RTC_PROMETHEUS_PORT", "9390")) if args.monitoring else None
            ),
        )
        local.prepare(run_dir, ports)
        print(f"prepared {run_dir}")
        return 0
    return 0 if local.wait_ready(run_dir.resolve(), timeout=args.timeout) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtcctl", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run folder of the local stack (default: .run, or RTC_RUN_DIR)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    token = sub.add_parser("token", help="print a JWT the local stack accepts")
    token.add_argument("wallet")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.set_defaults(func=cmd_token)

    flags = sub.add_parser("flags", help="list, enable or disable feature flags")
    flags.add_argument("action", choices=["list", "enable", "disable"])
    flags.add_argument("key", nargs="?")
    flags.add_argument(
        "--if-missing",
        action="store_true",
        help="only set the flag when the directory has no value for it",
    )
    flags.set_defaults(func=cmd_flags)

    contacts = sub.add_parser("contacts", help="mutual contacts (who may signal whom)")
    contacts.add_argument("action", choices=["add", "remove", "list"])
    contacts.add_argument("a", type=wallet_arg, metavar="WALLET")
    contacts.add_argument("b", type=wallet_arg, nargs="?", metavar="OTHER")
    contacts.set_defaults(func=cmd_contacts)

    rtc = sub.add_parser("rtc", help="the per-user RTC switch")
    rtc.add_argument("action", choices=["enable", "disable", "status"])
    rtc.add_argument("wallet", type=wallet_arg)
    rtc.set_defaults(func=cmd_rtc)

    stack = sub.add_parser("local", help="local stack helpers used by `make run` / `make up`")
    stack.add_argument("action", choices=["prepare", "wait"])
    stack.add_argument("--timeout", type=float, default=90.0)
    stack.add_argument(
        "--monitoring",
        action="store_true",
        help="prepare: also run a Prometheus scraping the services (RTC_PROMETHEUS_PORT, 9390)",
    )
    stack.set_defaults(func=cmd_local)

    revoke.add_parser(sub, wallet_arg)
    doctor.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.run_dir is None:
        args.run_dir = local.default_run_dir()
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"rtcctl: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
