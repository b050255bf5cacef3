"""Matrix Synapse for the bench's peer, installed from PyPI at a pinned version into a venv of
its own under ~/.cache/rtc-bench (never the project's .venv; BENCH_CACHE_DIR moves it), once,
and reused after (bench/synapse.py runs it). No network: `PeerUnavailable` with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

SYNAPSE_VERSION = "1.163.2"
PSYCOPG2_BINARY = "psycopg2-binary==2.9.13"
INSTALL_TIMEOUT = 900.0


class PeerUnavailable(RuntimeError):
    """The peer could not be installed or started; the message says why."""


def peers_enabled() -> bool:
    """BENCH_PEERS=0 (or `python -m bench --no-peers`) leaves the peers out."""
    return os.environ.get("BENCH_PEERS", "1").strip().lower() not in ("0", "false", "no", "off")


def version() -> str:
    return os.environ.get("BENCH_SYNAPSE_VERSION", SYNAPSE_VERSION)


def database_kind() -> str:
    kind = os.environ.get("BENCH_SYNAPSE_DB", "sqlite").strip().lower()
    if kind not in ("sqlite", "postgres"):
        raise PeerUnavailable(f"BENCH_SYNAPSE_DB={kind!r}: sqlite or postgres")
    return kind


def cache_root() -> Path:
    explicit = os.environ.get("BENCH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rtc-bench"


def run(argv: list[str], what: str, env: Mapping[str, str] | None = None) -> str:
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            env={**os.environ, **(env or {})},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip()[-1500:]
        raise PeerUnavailable(f"{what} failed (exit {out.returncode}): {tail}")
    return out.stdout


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer at a time per venv (two bench runs may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_venv(synapse_version: str | None = None, *, postgres: bool = False) -> Path:
    """The python of a venv holding matrix-synapse==<version> (and psycopg2 for postgres),
    created on first use and reused after; a half-made venv (no marker) is made anew."""
    synapse_version = synapse_version or version()
    venv = cache_root() / f"synapse-{synapse_version}"
    python = venv / "bin" / "python"
    marker = venv / ".rtc-bench-installed"
    wanted = [f"matrix-synapse=={synapse_version}"]
    with _locked(cache_root() / f"synapse-{synapse_version}.lock"):
        if not marker.exists():
            shutil.rmtree(venv, ignore_errors=True)
            try:
                _create(venv, wanted)
            except BaseException:
                shutil.rmtree(venv, ignore_errors=True)
                raise
            found = run(
                [str(python), "-c", "import synapse; print(synapse.__version__)"],
                "import synapse",
            ).strip()
            if found != synapse_version:
                raise PeerUnavailable(f"installed Synapse is {found}, not {synapse_version}")
            marker.write_text(f"matrix-synapse=={synapse_version}\n")
        if (
            postgres
            and subprocess.run(
                [str(python), "-c", "import psycopg2"], capture_output=True, check=False
            ).returncode
        ):
            _install(python, [PSYCOPG2_BINARY], shutil.which("uv"), {"UV_HTTP_TIMEOUT": "30"})
    return python


def _create(venv: Path, specs: list[str]) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    uv = shutil.which("uv")
    # uv reads neither pip's config nor its timeouts: a short one, for when there is no network.
    uv_env = {"UV_HTTP_TIMEOUT": "30"}
    if uv:
        run([uv, "venv", "-q", "--python", base, str(venv)], "uv venv", uv_env)
    else:
        run([base, "-m", "venv", str(venv)], "python -m venv")
    _install(venv / "bin" / "python", specs, uv, uv_env)


def _install(python: Path, specs: list[str], uv: str | None, uv_env: Mapping[str, str]) -> None:
    if uv:
        argv = [uv, "pip", "install", "-q", "--python", str(python), *specs]
        run(argv, f"uv pip install {' '.join(specs)}", uv_env)
    else:
        argv = [str(python), "-m", "pip", "install", "-q", "--timeout", "30", "--retries", "1"]
        run([*argv, *specs], f"pip install {' '.join(specs)}")
