"""`rtcctl doctor`: walks the troubleshooting list of the integration guide against a deployment.

Every check is real: the provider configuration as ice-service would load it, a Twilio Tokens
call, TURN allocations on coturn with credentials minted from TURN_SECRET (a datagram relayed out
and back, clock skew estimated from credentials that expire around now; during a rotation, whether
coturn still accepts TURN_SECRET_PREVIOUS), the gateway's routes,
Redis, the directory and its `rtc.ice` flag, each signal instance's pub/sub listener, and each
service instance's own view of its dependencies (`/healthz/deps`).

The target is the local stack by default (the run folder's `env` and `stack.json`); `--env-file`,
`--gateway` and `--signal` point it elsewhere, and the process environment overrides the env file.
One line per check; a failing check prints its fix. Secrets are never printed: the env values are
only used, and any text about to be printed is scrubbed of every secret known to this run.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp

from .clock import SKEW_FAIL, SKEW_OK, SKEW_PROBES, skew_verdict
from .config import TurnUri, check_config, parse_turn_uri, providers_of
from .coturn import FAR_FUTURE, TURN_WALLET, check_coturn, check_coturn_server
from .gateway import check_gateway
from .rendering import Result, Status, render, scrub
from .services import check_services
from .signaling import check_signal
from .stores import ICE_FLAG, check_stores
from .target import TOKEN_ENV, Target, redact_url, resolve_target
from .turnclient import Addr, Allocation, Refused, allocate, relay_round_trip
from .twilio import check_twilio

__all__ = [
    "FAR_FUTURE",
    "ICE_FLAG",
    "SKEW_FAIL",
    "SKEW_OK",
    "SKEW_PROBES",
    "TOKEN_ENV",
    "TURN_WALLET",
    "Addr",
    "Allocation",
    "Refused",
    "Result",
    "Status",
    "Target",
    "TurnUri",
    "add_parser",
    "allocate",
    "check_config",
    "check_coturn",
    "check_coturn_server",
    "check_gateway",
    "check_services",
    "check_signal",
    "check_stores",
    "check_twilio",
    "cmd_doctor",
    "parse_turn_uri",
    "providers_of",
    "redact_url",
    "relay_round_trip",
    "render",
    "resolve_target",
    "run_checks",
    "scrub",
    "skew_verdict",
]


async def run_checks(target: Target) -> list[Result]:
    config, ice_settings, common = check_config(target)
    async with aiohttp.ClientSession() as session:
        groups: list[Awaitable[list[Result]]] = [
            check_twilio(target, ice_settings, session),
            check_coturn(target, ice_settings),
            check_gateway(target, common, session),
            check_stores(target, common),
            check_signal(target, session),
            check_services(target, session),
        ]
        results = await asyncio.gather(*groups)
    return config + [r for group in results for r in group]


def cmd_doctor(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    signals = (
        f"{len(target.signal_urls)} signal instance(s) from {target.signal_source}"
        if target.signal_urls
        else "no signal instances"
    )
    print(f"rtcctl doctor: env {target.env_source}; gateway {target.gateway}; {signals}")
    results = asyncio.run(run_checks(target))
    print(render(results, target), flush=True)
    return 1 if any(r.status == "FAIL" for r in results) else 0


def add_parser(sub: Any) -> None:
    """Register `rtcctl doctor` on the CLI's subparsers."""
    doctor = sub.add_parser(
        "doctor",
        help="check a deployment end to end and say what is wrong",
        description=__doc__.splitlines()[0],
        epilog=(
            "Exit status: 0 when no check fails (warnings do not fail), 1 otherwise. Without"
            " JWT_SECRET (a public-key deployment) put a token of the main application in"
            f" {TOKEN_ENV} for the authenticated routes."
        ),
    )
    doctor.add_argument(
        "--gateway",
        help="the gateway's URL (default: the local stack's, from stack.json, or RTC_GATEWAY_URL)",
    )
    doctor.add_argument(
        "--env-file",
        type=Path,
        help="the deployment's env file (default: the run folder's env); the process"
        " environment overrides it",
    )
    doctor.add_argument(
        "--signal",
        action="append",
        metavar="URL",
        help="a signal-service instance's own URL (repeat per instance; default: stack.json)",
    )
    for kind in ("ice", "relay"):
        doctor.add_argument(
            f"--{kind}",
            action="append",
            metavar="URL",
            help=f"a {kind}-service instance's own URL, for its /healthz/deps (repeat per"
            " instance; default: stack.json)",
        )
    doctor.add_argument(
        "--timeout", type=float, default=3.0, help="seconds per network probe (default 3)"
    )
    doctor.set_defaults(func=cmd_doctor)
