"""What the compose checks share: progress lines, the failure type, the stack's compose command
and its Redis (deploy/compose_check.py, deploy/compose_hardening.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"    [{time.monotonic() - STARTED:5.1f}s] {message}", flush=True)


class CheckFailed(Exception):
    pass


def compose(*args: str, stdin: str | None = None, check: bool = True) -> str:
    command = [*shlex.split(os.environ["COMPOSE_CMD"]), *args]
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise CheckFailed(f"{shlex.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def redis_cli(*commands: list[str]) -> list[str]:
    """Commands for the stack's Redis (it publishes no port), one answer line each."""
    text = "".join(shlex.join(command) + "\n" for command in commands)
    out = compose("exec", "-T", "redis", "redis-cli", stdin=text)
    return out.splitlines()
