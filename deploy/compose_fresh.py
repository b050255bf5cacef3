"""`compose_check.py fresh`: the stack as an operator following the README brings it up:
deploy/env.example with only its secrets filled, so no ICE provider is configured (it defaults
to Twilio) and Bearer auth is off. Through the published gateway: the gateway answers, relay-
service serves a user (the JWT cookie and the CSRF header), signal-service answers the Socket.IO
handshake, ICE answers `503 ice_unavailable`; ice-service's log and `rtcctl doctor` name the
missing Twilio variables. Before the revised readiness, ice-service never became healthy here and
the gateway, which waits for every service, never started.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
from compose_common import CheckFailed, compose, say
from rtc_testkit.contract import make_token, new_wallet

TWILIO_VARIABLES = ("TWILIO_ACCOUNT_SID", "TWILIO_API_KEY", "TWILIO_API_SECRET")
RTCCTL = str(Path(sys.executable).parent / "rtcctl")


async def check_fresh(gateway: str, env_file: str) -> None:
    wallet = new_wallet()
    csrf = "fresh-csrf-0123456789"
    cookies = {
        "access_token": make_token(wallet, secret=os.environ["JWT_SECRET"]),
        "csrf_token": csrf,
    }
    headers = {"X-CSRF-Token": csrf}
    async with aiohttp.ClientSession(cookies=cookies) as http:
        async with http.get(gateway + "/healthz") as response:
            if response.status != 200:
                raise CheckFailed(f"gateway /healthz answered {response.status}")
        say("gateway answers /healthz (every service passed its healthcheck)")
        async with http.get(gateway + "/api/v1/relay/pull", headers=headers) as response:
            body = await response.json(content_type=None)
            if response.status != 200 or body.get("messages") != []:
                raise CheckFailed(f"relay pull with the cookie: {response.status} {body}")
        say("relay-service: a user's pull (JWT cookie + CSRF header) answered 200")
        url = gateway + "/socket.io/?EIO=4&transport=polling"
        async with http.get(url) as response:
            text = await response.text()
            if response.status != 200 or not text.startswith("0{"):
                raise CheckFailed(f"Socket.IO handshake: {response.status} {text[:80]}")
        say("signal-service: the Socket.IO handshake answered")
        async with http.get(gateway + "/api/v1/rtc/ice", headers=headers) as response:
            body = await response.json(content_type=None)
            if (response.status, body.get("error")) != (503, "ice_unavailable"):
                raise CheckFailed(f"ICE without a provider: {response.status} {body}")
        say("ice-service: 503 ice_unavailable (no provider configured), and ready all the same")
    log = await asyncio.to_thread(compose, "logs", "--no-color", "ice-service")
    missing = [name for name in TWILIO_VARIABLES if name not in log]
    if "ICE provider not configured" not in log or missing:
        raise CheckFailed(f"ice-service's log does not name {missing or 'the missing provider'}")
    say(f"ice-service's log names {', '.join(TWILIO_VARIABLES)}")
    doctor = await asyncio.to_thread(
        subprocess.run,
        [RTCCTL, "doctor", "--env-file", env_file, "--gateway", gateway, "--timeout", "5"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RTC_RUN_DIR": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    named = [line for line in doctor.stdout.splitlines() if "config twilio" in line]
    if doctor.returncode != 1 or not named or not all(v in named[0] for v in TWILIO_VARIABLES):
        raise CheckFailed(f"rtcctl doctor did not name the Twilio variables:\n{doctor.stdout}")
    say(f"rtcctl doctor: {named[0].strip()}")
