"""The nearest public peer: Matrix Synapse, from PyPI at a pinned version, in a venv of its own.

`start_peer(workdir)` installs Synapse once into ~/.cache/rtc-bench/synapse-<version> (never
into the project's .venv; BENCH_CACHE_DIR moves the cache), writes a minimal homeserver.yaml
(server_name localhost, one plain-HTTP client listener on 127.0.0.1, registration closed but a
`registration_shared_secret`, rate limits raised as the bench raises ours, the coturn REST
`turn_*` settings with the kit's secret, no stats, no federation key servers, logs at WARNING
to a file), starts it pinned to the servers' CPU like the services, registers one user through
the admin API, logs it in and creates one room (`new_room()` makes another: the relay bench
takes a fresh one per run). Anything that fails (no network to install,
a crash at start) raises `PeerUnavailable` with the reason: the scenarios then report the
peer as skipped and go on.

Database: SQLite (in Synapse's process, so on the servers' CPU like the rest) unless
BENCH_SYNAPSE_DB=postgres, which creates a database of its own on the PostgreSQL server at
BENCH_SYNAPSE_PG (default 127.0.0.1:5432, user postgres, trust auth) and drops it on stop.
That server was not started by the bench and is not pinned: its backends run on any CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtc_testkit.processes import HttpServer, free_port, wait_for

from bench.harness import SERVER_CPUS, cpu_seconds, pinned
from bench.modes import progress
from bench.synapse_install import (
    PeerUnavailable,
    database_kind,
    ensure_venv,
    peers_enabled,
    run,
    version,
)

SERVER_NAME = "localhost"
USER = "bench"
# As the bench raises ours (ICE_RATE_LIMIT_PER_MIN / RELAY_RATE_LIMIT_PER_MIN = 1e9).
UNLIMITED = {"per_second": 1_000_000_000, "burst_count": 1_000_000_000}


def _request(
    method: str,
    url: str,
    body: Mapping[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 30,
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(json.loads(response.read() or b"{}"))
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode(errors="replace")
        raise PeerUnavailable(f"{method} {url.split('?')[0]}: {exc.code} {detail}") from exc


class SynapseServer(HttpServer):
    """`python -m synapse.app.homeserver` from the peer's venv, pinned to the servers' CPU,
    started when its client listener answers /health."""

    ready_path = "/health"
    ready_timeout = 180.0  # the first start creates the schema (a minute on a slow disk)

    def __init__(self, python: Path, config: Path, port: int, workdir: Path):
        self.port = port
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
        }
        argv = [str(python), "-m", "synapse.app.homeserver", "--config-path", str(config)]
        super().__init__(
            f"synapse:{port}", pinned(SERVER_CPUS, argv), workdir / "synapse-stdout.log", env
        )


@dataclass
class PostgresDatabase:
    """A database of our own on the running PostgreSQL server, dropped by `drop()`."""

    python: Path
    name: str
    host: str
    port: int
    user: str

    def _sql(self, statement: str) -> None:
        code = (
            "import psycopg2, sys\n"
            "conn = psycopg2.connect(host=sys.argv[1], port=int(sys.argv[2]), user=sys.argv[3],"
            " dbname='postgres')\n"
            "conn.autocommit = True\n"
            "conn.cursor().execute(sys.argv[4])\n"
        )
        argv = [str(self.python), "-c", code, self.host, str(self.port), self.user, statement]
        run(argv, f"postgres: {statement.split(' ')[0]} {self.name}")

    def create(self) -> None:
        # Synapse's requirements for a PostgreSQL database: UTF8, C collation.
        self._sql(
            f"CREATE DATABASE {self.name} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )

    def drop(self) -> None:
        self._sql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def config(self) -> dict[str, Any]:
        return {
            "name": "psycopg2",
            "args": {
                "user": self.user,
                "dbname": self.name,
                "host": self.host,
                "port": self.port,
                "cp_min": 5,
                "cp_max": 10,
            },
        }


@dataclass
class SynapsePeer:
    """A running Synapse with one user, its access token and one room."""

    server: SynapseServer
    token: str
    user_id: str
    room_id: str
    version: str
    db: str
    database: PostgresDatabase | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid  # taskset execs: Synapse's own pid

    def new_room(self) -> str:
        """A new private room (the user its only member), now `room_id`."""
        created = _request(
            "POST",
            self.url + "/_matrix/client/v3/createRoom",
            {"preset": "private_chat", "name": "bench"},
            self.token,
        )
        self.room_id = str(created["room_id"])
        return self.room_id

    def info(self) -> dict[str, Any]:
        return {"synapse_version": self.version, "synapse_db": self.db}

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Until Synapse's CPU use stays below a tenth of a core over 0.25 s, so a backlog left by
        one run (requests whose clients gave up) does not bill the next; False at the deadline."""
        state = {"t": time.monotonic(), "cpu": cpu_seconds(self.pid)}

        def idle() -> bool:
            now = time.monotonic()
            if now - state["t"] < 0.25:
                return False
            used = cpu_seconds(self.pid) - state["cpu"]
            busy = used / (now - state["t"])
            state["t"], state["cpu"] = now, cpu_seconds(self.pid)
            return busy < 0.1

        try:
            wait_for(idle, timeout, what="Synapse idle")
        except TimeoutError:
            return False
        return True

    def pause(self) -> None:
        """SIGSTOP: while other subjects run on its core, its background work (a backlog, its
        periodic jobs) cannot bill them."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.resume()  # a stopped process would not act on the SIGTERM
        self.server.stop()
        if self.database is not None:
            with contextlib.suppress(PeerUnavailable):
                self.database.drop()


def homeserver_config(
    workdir: Path,
    port: int,
    *,
    database: Mapping[str, Any],
    shared_secret: str,
    turn_secret: str | None,
    turn_uris: list[str] | None,
    turn_ttl_seconds: int,
) -> dict[str, Any]:
    """homeserver.yaml's content (written as JSON, which is YAML); `turn_*` when a secret is
    given (the coturn REST scheme our ice-service uses)."""
    turn: dict[str, Any] = {}
    if turn_secret:
        turn = {
            "turn_uris": list(turn_uris or []),
            "turn_shared_secret": turn_secret,
            "turn_user_lifetime": f"{turn_ttl_seconds}s",
            "turn_allow_guests": False,
        }
    return {
        "server_name": SERVER_NAME,
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": True,  # behind the bench gateway, as our services are
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": dict(database),
        "log_config": str(workdir / "log.config"),
        "media_store_path": str(workdir / "media_store"),
        "signing_key_path": str(workdir / "signing.key"),
        "report_stats": False,
        "enable_metrics": False,
        "enable_registration": False,
        "registration_shared_secret": shared_secret,
        "macaroon_secret_key": secrets.token_hex(32),
        "form_secret": secrets.token_hex(32),
        # No outbound traffic: no federation key servers, no stats.
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        **turn,
        "rc_message": UNLIMITED,
        "rc_login": {"address": UNLIMITED, "account": UNLIMITED, "failed_attempts": UNLIMITED},
        "rc_registration": UNLIMITED,
        "rc_room_creation": UNLIMITED,
        "rc_joins": {"local": UNLIMITED, "remote": UNLIMITED},
        "rc_joins_per_room": UNLIMITED,
        "rc_invites": {"per_room": UNLIMITED, "per_user": UNLIMITED, "per_issuer": UNLIMITED},
        "rc_presence": {"per_user": UNLIMITED},
        "rc_delayed_event_mgmt": UNLIMITED,
        "rc_key_requests": UNLIMITED,
    }


def log_config(path: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "formatter": "plain", "filename": str(path)}
        },
        "root": {"level": "WARNING", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def _register(url: str, shared_secret: str, user: str, password: str) -> None:
    """Shared-secret registration (the admin API `register_new_matrix_user` uses)."""
    endpoint = url + "/_synapse/admin/v1/register"
    nonce = _request("GET", endpoint)["nonce"]
    mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce, user, password):
        mac.update(part.encode() + b"\x00")
    mac.update(b"notadmin")
    body = {
        "nonce": nonce,
        "username": user,
        "password": password,
        "admin": False,
        "mac": mac.hexdigest(),
    }
    _request("POST", endpoint, body)


def start_peer(
    workdir: Path,
    *,
    turn_secret: str | None = None,
    turn_uris: list[str] | None = None,
    turn_ttl_seconds: int = 600,
    room: bool = True,
) -> SynapsePeer:
    """A running, pinned Synapse with one user logged in (and one room): see the module doc.
    The caller stops it (`SynapsePeer.stop()`); on any failure nothing is left running."""
    db = database_kind()
    python = ensure_venv(postgres=db == "postgres")
    workdir.mkdir(parents=True, exist_ok=True)
    signing_key = workdir / "signing.key"
    run(
        [str(python), "-m", "synapse._scripts.generate_signing_key", "-o", str(signing_key)],
        "generate_signing_key",
    )
    database: PostgresDatabase | None = None
    server: SynapseServer | None = None
    try:
        db_config: dict[str, Any]
        if db == "postgres":
            host, _, pg_port = os.environ.get("BENCH_SYNAPSE_PG", "127.0.0.1:5432").partition(":")
            database = PostgresDatabase(
                python,
                f"rtc_bench_synapse_{secrets.token_hex(4)}",
                host,
                int(pg_port or 5432),
                os.environ.get("BENCH_SYNAPSE_PG_USER", "postgres"),
            )
            database.create()
            db_config = database.config()
        else:
            db_config = {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}}
        port = free_port()
        shared_secret = secrets.token_hex(16)
        config = workdir / "homeserver.yaml"
        settings = homeserver_config(
            workdir,
            port,
            database=db_config,
            shared_secret=shared_secret,
            turn_secret=turn_secret,
            turn_uris=turn_uris,
            turn_ttl_seconds=turn_ttl_seconds,
        )
        config.write_text(json.dumps(settings, indent=1))
        log_path = workdir / "homeserver.log"
        (workdir / "log.config").write_text(json.dumps(log_config(log_path)))
        server = SynapseServer(python, config, port, workdir)
        try:
            server.start()
        except (RuntimeError, TimeoutError) as exc:
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
            raise PeerUnavailable(f"Synapse did not start: {exc}\n{log[-1500:]}") from exc
        password = secrets.token_hex(12)
        _register(server.url, shared_secret, USER, password)
        login = _request(
            "POST",
            server.url + "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": USER},
                "password": password,
                "device_id": "BENCH",
            },
        )
        token = str(login["access_token"])
        peer = SynapsePeer(server, token, str(login["user_id"]), "", version(), db, database)
        if room:
            peer.new_room()
        return peer
    except BaseException:
        if server is not None:
            server.stop()
        if database is not None:
            with contextlib.suppress(PeerUnavailable):
                database.drop()
        raise


def try_start_peer(
    workdir: Path, what: str, **kwargs: Any
) -> tuple[SynapsePeer | None, dict[str, Any]]:
    """`start_peer`, or None and the reason it was skipped (BENCH_PEERS=0, no network to
    install, a failed start): the scenario goes on without the peer and reports the reason."""
    info: dict[str, Any] = {"synapse_version": version()}
    if not peers_enabled():
        return None, {**info, "skipped": "BENCH_PEERS=0"}
    try:
        info["synapse_db"] = database_kind()
        progress(f"{what}: starting Synapse {version()} ({info['synapse_db']})")
        peer = start_peer(workdir, **kwargs)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        progress(f"{what}: Synapse peer skipped: {reason.splitlines()[0][:200]}")
        return None, {**info, "skipped": reason}
    peer.pause()  # until its own runs (measuring())
    return peer, peer.info()


def room_path(peer: SynapsePeer) -> str:
    """The send path up to the txnId (the room id escaped)."""
    room = urllib.parse.quote(peer.room_id, safe="")
    return f"/_matrix/client/v3/rooms/{room}/send/m.room.message/"


@contextlib.contextmanager
def measuring(peer: SynapsePeer | None, name: str) -> Iterator[None]:
    """Around one run of any subject: the peer runs only during its own runs. After one, it
    works off what the run left queued, then is paused (SIGSTOP) until its next run."""
    if peer is None or not name.startswith("synapse"):
        yield
        return
    peer.resume()
    try:
        yield
    finally:
        if not peer.wait_idle():
            progress(f"{name}: Synapse still busy 60 s after the run")
        peer.pause()
        # What its run left for the disk (its database, its logs) is written now: the kernel's
        # writeback would otherwise bill the next subject, an fsync-per-write Redis above all.
        os.sync()


def ratio(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Of two summaries' medians (NaN when either is missing)."""
    try:
        return a["median"] / b["median"]
    except (KeyError, ZeroDivisionError):
        return float("nan")


def peer_ratios(
    saturation: Mapping[str, Any], fixed: Mapping[str, Any], ours: str, theirs: str
) -> dict[str, Any]:
    """Ours over the peer's: 2xx answers per second at saturation (> 1: ours does more) and the
    p99 at 1,000/s (< 1: ours answers faster), with each side's failed answers."""
    return {
        "throughput": ratio(saturation[ours]["ok_rps"], saturation[theirs]["ok_rps"]),
        "p99_at_1000": ratio(fixed[ours]["p99_ms"], fixed[theirs]["p99_ms"]),
        "non_2xx": {
            name: {"saturation": saturation[name]["non_2xx"], "fixed_1000": fixed[name]["non_2xx"]}
            for name in (ours, theirs)
        },
    }
