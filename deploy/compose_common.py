"""What the compose checks share: progress lines, the failure type, the stack's compose command
and its Redis (deploy/compose_check.py, deploy/compose_hardening.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time

STARTED = time.monotonic()
# The stack's secrets, as the checks get them in their environment (what is set of them).
SECRET_NAMES = ("REDIS_PASSWORD", "MONGO_PASSWORD", "JWT_SECRET", "TURN_SECRET", "ADMIN_TOKEN")


def say(message: str) -> None:
    print(f"    [{time.monotonic() - STARTED:5.1f}s] {message}", flush=True)


class CheckFailed(Exception):
    pass


def compose(*args: str, stdin: str | None = None, check: bool = True) -> str:
    command = [*shlex.split(os.environ["COMPOSE_CMD"]), *args]
    # The secrets the checks were given stay out of compose's interpolation (where the
    # environment wins over the env file): the stack has them as files, or in its env file.
    env = {k: v for k, v in os.environ.items() if k not in SECRET_NAMES}
    done = subprocess.run(
        command, input=stdin, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise CheckFailed(f"{shlex.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


# redis-cli in the redis container, with the password from REDISCLI_AUTH or, with compose
# secrets, the file REDIS_PASSWORD_FILE names (as its healthcheck does).
REDIS_CLI = (
    '[ -z "$REDIS_PASSWORD_FILE" ] || export REDISCLI_AUTH="$(cat "$REDIS_PASSWORD_FILE")";'
    " exec redis-cli"
)


def redis_cli(*commands: list[str]) -> list[str]:
    """Commands for the stack's Redis (it publishes no port), one answer line each."""
    text = "".join(shlex.join(command) + "\n" for command in commands)
    out = compose("exec", "-T", "redis", "sh", "-c", REDIS_CLI, stdin=text)
    return out.splitlines()
