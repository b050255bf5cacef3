"""coturn's peer policy and limits (issue 13: TURN as an open proxy into private networks), in
the configs as both renderers write them: the image's entrypoint (deploy/coturn/entrypoint.sh,
its template and denied-peers.txt) and the local stack's `turnserver_conf` (tests' `Coturn`).

Real coturn with each rendered config: an allocation with valid credentials, then a
CreatePermission for a peer in every non-public range gets 403 (Forbidden IP) and a public peer
is allowed. A permission sends nothing to the peer: every packet of these tests goes to coturn
on the loopback (127.0.0.1, or ::1 for the IPv6 relay).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import (
    TCP_TRANSPORT,
    UDP_TRANSPORT,
    TurnClientTcpProtocol,
    TurnClientUdpProtocol,
)
from rtc_testkit.contract import TURN_SECRET, turn_credentials
from rtc_testkit.processes import REPO_ROOT, Coturn, Process, ProcessGroup, free_port, wait_for
from rtcctl.local import turnserver_conf

COTURN_DIR = REPO_ROOT / "deploy" / "coturn"
ENTRYPOINT = COTURN_DIR / "entrypoint.sh"
DENIED_PEERS = COTURN_DIR / "denied-peers.txt"  # the one list both renderers use

# The non-public ranges (IANA's special-purpose registries) with peers to try in each: the
# edges, and the cloud metadata services (169.254.169.254, Alibaba's 100.100.100.200, AWS's
# IPv6 fd00:ec2::254).
DENIED_V4 = {
    "0.0.0.0/8": ["0.1.2.3", "0.255.255.255"],
    "10.0.0.0/8": ["10.0.0.1", "10.255.255.254"],
    "100.64.0.0/10": ["100.64.0.1", "100.100.100.200", "100.127.255.254"],
    "127.0.0.0/8": ["127.0.0.2", "127.255.255.254"],
    "169.254.0.0/16": ["169.254.0.1", "169.254.169.254"],
    "172.16.0.0/12": ["172.16.0.1", "172.31.255.254"],
    "192.0.0.0/24": ["192.0.0.1", "192.0.0.170"],
    "192.0.2.0/24": ["192.0.2.1"],
    "192.168.0.0/16": ["192.168.0.1", "192.168.255.254"],
    "198.18.0.0/15": ["198.18.0.1", "198.19.255.254"],
    "198.51.100.0/24": ["198.51.100.1"],
    "203.0.113.0/24": ["203.0.113.5"],
    "224.0.0.0/4": ["224.0.0.1", "239.255.255.250"],
    "240.0.0.0/4": ["240.0.0.1", "255.255.255.255"],
}
DENIED_V6 = {
    "::1/128": ["::1"],
    "::ffff:0:0/96": ["::ffff:10.0.0.1", "::ffff:8.8.8.8"],
    "64:ff9b::/96": ["64:ff9b::a9fe:a9fe"],  # 169.254.169.254 behind NAT64
    "64:ff9b:1::/48": ["64:ff9b:1::1"],
    "100::/64": ["100::1"],
    "2001:db8::/32": ["2001:db8::1"],
    "2002::/16": ["2002:a00:1::1"],  # 10.0.0.1 behind 6to4
    "fc00::/7": ["fc00::1", "fd00:ec2::254"],
    "fe80::/10": ["fe80::1"],
    "fec0::/10": ["fec0::1"],
    "ff00::/8": ["ff02::1"],
}
# Public: well-known resolvers and the first address past each IPv4 range's edge.
PUBLIC_V4 = [
    "8.8.8.8",
    "1.1.1.1",
    "1.0.0.0",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
]
PUBLIC_V6 = ["2001:4860:4860::8888", "2606:4700:4700::1111", "2003::1", "2001:db9::1"]
# Refused by coturn itself, in no list: a bound of 0.0.0.0 or :: means "no bound" to coturn, so
# `::` cannot be listed (it would deny every peer).
UNSPECIFIED = ["0.0.0.0", "::"]

# The limits' defaults (deploy/env.example).
LIMITS = ["no-tcp-relay", "user-quota=12", "total-quota=800", "max-bps=1000000"]


def entrypoint_env(run_dir: Path, **env: str) -> dict[str, str]:
    """The image entrypoint's environment: the repository's template and list (TURN_CONFIG_DIR),
    the rendered config, pid file and user db in `run_dir`, and only PATH besides."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TURN_CONFIG_DIR": str(COTURN_DIR),
        "TURN_RUN_DIR": str(run_dir),
        "TURN_SECRET": TURN_SECRET,
        **env,
    }


def render(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The entrypoint rendering into `tmp_path`, turnserver replaced by `true`."""
    return subprocess.run(
        ["sh", str(ENTRYPOINT)],
        env=entrypoint_env(tmp_path, TURNSERVER=shutil.which("true") or "/bin/true", **env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def rendered(tmp_path: Path, **env: str) -> list[str]:
    done = render(tmp_path, **env)
    assert done.returncode == 0, done.stderr
    return (tmp_path / "turnserver.conf").read_text().splitlines()


def local_conf(tmp_path: Path) -> list[str]:
    return turnserver_conf(tmp_path, 3478, TURN_SECRET).splitlines()


def values(lines: list[str], key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in lines if line.startswith(key + "=")]


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def ranges(lines: list[str], key: str) -> list[tuple[Address, Address]]:
    """coturn's `KEY=FIRST-LAST` (or `KEY=ADDRESS`) lines as address pairs."""
    pairs = []
    for value in values(lines, key):
        first, _, last = value.partition("-")
        pairs.append((ipaddress.ip_address(first), ipaddress.ip_address(last or first)))
    return pairs


def covers(pairs: list[tuple[Address, Address]], address: Address) -> bool:
    return any(a.version == address.version and int(a) <= int(address) <= int(b) for a, b in pairs)


def free_port6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


class ImageCoturn(Process):
    """coturn as the image starts it: the entrypoint renders the config into `workdir` and execs
    turnserver with it. Listening and relaying on `host` (127.0.0.1 or ::1) on a free port."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", **env: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = free_port6() if ":" in host else free_port()
        settings = {
            "TURN_PORT": str(self.port),
            "TURN_LISTENING_IP": host,
            "TURN_RELAY_IP": host,
            # Not the local stack's relay range (49160-49200), which other tests' coturn use.
            "TURN_MIN_PORT": "49500",
            "TURN_MAX_PORT": "49540",
            **env,
        }
        super().__init__(
            f"image coturn [{host}]:{self.port}",
            ["sh", str(ENTRYPOINT)],
            workdir / "turn.log",
            entrypoint_env(workdir, **settings),
        )
        self.conf = workdir / "turnserver.conf"

    def start(self) -> None:
        super().start()

        def listening() -> bool:
            self.ensure_alive()
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(listening, what=self.name)


@pytest.fixture
def image_coturn(tmp_path: Path) -> Iterator[Callable[..., ImageCoturn]]:
    with ProcessGroup() as group:

        def start(host: str = "127.0.0.1", **env: str) -> ImageCoturn:
            workdir = tmp_path / f"coturn{len(group.processes)}"
            return group.start(ImageCoturn(workdir, host, **env))

        yield start


@pytest.fixture
def local_coturn(tmp_path: Path) -> Iterator[Coturn]:
    server = Coturn(tmp_path / "local-coturn")
    server.start()
    yield server
    server.stop()


def credentials(wallet: str = "0xpeers") -> tuple[str, str]:
    return turn_credentials(TURN_SECRET, wallet, int(time.time()) + 600)


def error_code(exc: stun.TransactionFailed) -> int:
    return int(exc.response.attributes["ERROR-CODE"][0])


@pytest.fixture(autouse=True)
def requested_address_family(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice knows no REQUESTED-ADDRESS-FAMILY (RFC 6156), without which coturn relays IPv4
    only: registered for these tests (4 bytes: the family, 0x01 IPv4 or 0x02 IPv6, then 3
    reserved)."""
    entry = (0x0017, "REQUESTED-ADDRESS-FAMILY", stun.pack_unsigned, stun.unpack_unsigned)
    monkeypatch.setitem(stun.ATTRIBUTES_BY_NAME, entry[1], entry)
    monkeypatch.setitem(stun.ATTRIBUTES_BY_TYPE, entry[0], entry)


async def udp_allocation(
    server: tuple[str, int], wallet: str, expiry_offset: int = 600
) -> tuple[TurnClientUdpProtocol, int | None]:
    """An Allocate for a UDP relay of `server`'s address family: the protocol (delete() it), and
    None when coturn allocated, else its error code."""
    username, password = turn_credentials(TURN_SECRET, wallet, int(time.time()) + expiry_offset)
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(
            server, username=username, password=password, lifetime=600, channel_refresh_time=500
        ),
        remote_addr=server,
    )
    request = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
    request.attributes["LIFETIME"] = 600
    request.attributes["REQUESTED-TRANSPORT"] = UDP_TRANSPORT
    request.attributes["REQUESTED-ADDRESS-FAMILY"] = 0x02000000 if ":" in server[0] else 0x01000000
    try:
        response, _ = await protocol.request_with_retry(request)
    except stun.TransactionFailed as exc:
        return protocol, error_code(exc)
    protocol.relayed_address = response.attributes["XOR-RELAYED-ADDRESS"]
    return protocol, None


async def permissions(
    server: tuple[str, int], peers: list[str], wallet: str = "0xpeers"
) -> dict[str, int | None]:
    """Allocate a UDP relay on `server`, then one CreatePermission per peer: None where coturn
    installed it, else its STUN error code. The allocation is deleted at the end."""
    protocol, code = await udp_allocation(server, wallet)
    try:
        assert code is None, f"coturn refused the allocation: {code}"
        results: dict[str, int | None] = {}
        for peer in peers:
            request = stun.Message(
                message_method=stun.Method.CREATE_PERMISSION, message_class=stun.Class.REQUEST
            )
            request.attributes["XOR-PEER-ADDRESS"] = (peer, 9)
            try:
                await protocol.request_with_retry(request)
                results[peer] = None
            except stun.TransactionFailed as exc:
                results[peer] = error_code(exc)
        return results
    finally:
        await protocol.delete()


async def tcp_relay_error(server: tuple[str, int]) -> int | None:
    """An Allocate for a TCP relay (RFC 6062) over a TCP connection to coturn: None when
    granted (then deleted), else the STUN error code."""
    username, password = credentials("0xtcp")
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_connection(
        lambda: TurnClientTcpProtocol(
            server, username=username, password=password, lifetime=600, channel_refresh_time=500
        ),
        host=server[0],
        port=server[1],
    )
    try:
        request = stun.Message(
            message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST
        )
        request.attributes["LIFETIME"] = 600
        request.attributes["REQUESTED-TRANSPORT"] = TCP_TRANSPORT
        try:
            await protocol.request_with_retry(request)
        except stun.TransactionFailed as exc:
            return error_code(exc)
        return None
    finally:
        await protocol.delete()


def all_peers(table: dict[str, list[str]]) -> list[str]:
    return [peer for peers in table.values() for peer in peers]


# --- the rendered configs ---------------------------------------------------------------------


def test_both_renderers_deny_the_same_ranges(tmp_path: Path) -> None:
    image = rendered(tmp_path)
    local = local_conf(tmp_path)
    assert values(image, "denied-peer-ip") == values(local, "denied-peer-ip")
    # Exactly the networks of the one list, FIRST-LAST as coturn takes them.
    listed = [
        ipaddress.ip_network(line.split()[0])
        for line in DENIED_PEERS.read_text().splitlines()
        if line.split() and not line.startswith("#")
    ]
    assert ranges(image, "denied-peer-ip") == [(net[0], net[-1]) for net in listed]
    pairs = ranges(image, "denied-peer-ip")
    for cidr in [*DENIED_V4, *DENIED_V6]:
        net = ipaddress.ip_network(cidr)
        assert covers(pairs, net[0]) and covers(pairs, net[-1]), cidr
    for peer in [*PUBLIC_V4, *PUBLIC_V6]:
        assert not covers(pairs, ipaddress.ip_address(peer)), peer


def test_limits_rendered_by_both(tmp_path: Path) -> None:
    for lines in (rendered(tmp_path), local_conf(tmp_path)):
        assert [line for line in LIMITS if line in lines] == LIMITS
    tuned = rendered(
        tmp_path, TURN_TCP_RELAY="true", TURN_USER_QUOTA="3", TURN_TOTAL_QUOTA="0", TURN_MAX_BPS="0"
    )
    assert "no-tcp-relay" not in tuned
    assert [values(tuned, k) for k in ("user-quota", "total-quota", "max-bps")] == [
        ["3"],
        ["0"],
        ["0"],
    ]


def test_only_the_local_stack_allows_its_loopback_peer(tmp_path: Path) -> None:
    local = local_conf(tmp_path)
    assert values(local, "allowed-peer-ip") == ["127.0.0.1"]
    assert "allow-loopback-peers" in local
    image = rendered(tmp_path)
    assert values(image, "allowed-peer-ip") == [] and "allow-loopback-peers" not in image


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", []),
        ("10.1.2.0/24", ["10.1.2.0-10.1.2.255"]),
        (
            " 192.168.1.5 ,172.16.0.10-172.16.0.20,,100.64.0.0/10",
            ["192.168.1.5", "172.16.0.10-172.16.0.20", "100.64.0.0-100.127.255.255"],
        ),
        ("10.9.9.9/32", ["10.9.9.9"]),
        ("fd12:3456::/48", ["fd12:3456:0:0:0:0:0:0-fd12:3456:0:ffff:ffff:ffff:ffff:ffff"]),
        ("fd00::1-fd00::ff", ["fd00:0:0:0:0:0:0:1-fd00:0:0:0:0:0:0:ff"]),
        ("::ffff:10.0.0.0/104", ["0:0:0:0:0:ffff:a00:0-0:0:0:0:0:ffff:aff:ffff"]),
        ("FE80::1", ["fe80:0:0:0:0:0:0:1"]),
    ],
)
def test_allowed_peer_ips_render_as_coturn_ranges(
    tmp_path: Path, value: str, expected: list[str]
) -> None:
    lines = rendered(tmp_path, TURN_ALLOWED_PEER_IPS=value)
    assert values(lines, "allowed-peer-ip") == expected
    # The denied list stays whole: the allowed lines are exceptions to it.
    assert values(lines, "denied-peer-ip") == values(local_conf(tmp_path), "denied-peer-ip")


def test_loopback_and_deprecated_private_switches(tmp_path: Path) -> None:
    loopback = rendered(tmp_path, TURN_ALLOW_LOOPBACK_PEERS="true")
    assert "allow-loopback-peers" in loopback
    assert values(loopback, "allowed-peer-ip") == ["127.0.0.0-127.255.255.255", "0:0:0:0:0:0:0:1"]
    done = render(tmp_path, TURN_DENY_PRIVATE_PEERS="false", TURN_ALLOWED_PEER_IPS="8.8.4.4")
    assert done.returncode == 0, done.stderr
    assert "TURN_DENY_PRIVATE_PEERS=false is deprecated" in done.stderr
    lines = (tmp_path / "turnserver.conf").read_text().splitlines()
    assert values(lines, "allowed-peer-ip") == [
        "8.8.4.4",
        "10.0.0.0-10.255.255.255",
        "172.16.0.0-172.31.255.255",
        "192.168.0.0-192.168.255.255",
    ]
    assert len(values(lines, "denied-peer-ip")) == len(values(loopback, "denied-peer-ip"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TURN_ALLOWED_PEER_IPS": "10.0.0.0/33"},
            "'10.0.0.0/33' has a prefix length outside 0-32",
        ),
        ({"TURN_ALLOWED_PEER_IPS": "::/129"}, "'::/129' has a prefix length outside 0-128"),
        (
            {"TURN_ALLOWED_PEER_IPS": "10.1.2.3/8"},
            "'10.1.2.3/8' has host bits set: the network is 10.0.0.0/8",
        ),
        ({"TURN_ALLOWED_PEER_IPS": "8.8.8.8,turn.example.com"}, "'turn.example.com' is not an IP"),
        ({"TURN_ALLOWED_PEER_IPS": "10.0.0.256"}, "'10.0.0.256' is not an IP"),
        ({"TURN_ALLOWED_PEER_IPS": "010.0.0.1"}, "'010.0.0.1' is not an IP"),
        ({"TURN_ALLOWED_PEER_IPS": "1::2::3"}, "'1::2::3' is not an IP"),
        ({"TURN_ALLOWED_PEER_IPS": "fe80::1%eth0"}, "'fe80::1%eth0' is not an IP"),
        ({"TURN_ALLOWED_PEER_IPS": "10.0.0.9-10.0.0.1"}, "'10.0.0.9-10.0.0.1' ends before it"),
        ({"TURN_ALLOWED_PEER_IPS": "10.0.0.1-::1"}, "'10.0.0.1-::1' mixes IPv4 and IPv6"),
        ({"TURN_ALLOWED_PEER_IPS": "10.0.0.1 10.0.0.2"}, "'10.0.0.1 10.0.0.2' is not an IP"),
        # What coturn 4.6 would match otherwise than written.
        (
            {"TURN_ALLOWED_PEER_IPS": "2001:db8::ff-2001:db8::1:0"},
            "'2001:db8::ff-2001:db8::1:0' is an IPv6 range coturn 4.6 cannot match",
        ),
        ({"TURN_ALLOWED_PEER_IPS": "::/0"}, "'::/0' starts at ::, which coturn reads as no lower"),
        ({"TURN_ALLOWED_PEER_IPS": "::"}, "'::' starts at ::"),
        ({"TURN_ALLOWED_PEER_IPS": "0.0.0.0"}, "'0.0.0.0' ends at 0.0.0.0, which coturn reads"),
        ({"TURN_TCP_RELAY": "maybe"}, "TURN_TCP_RELAY must be true or false, got: 'maybe'"),
        ({"TURN_ALLOW_LOOPBACK_PEERS": "sure"}, "TURN_ALLOW_LOOPBACK_PEERS must be true or false"),
        ({"TURN_DENY_PRIVATE_PEERS": "nope"}, "TURN_DENY_PRIVATE_PEERS must be true or false"),
        ({"TURN_USER_QUOTA": "12k"}, "TURN_USER_QUOTA must be a number (0: no limit), got: '12k'"),
        ({"TURN_TOTAL_QUOTA": "-1"}, "TURN_TOTAL_QUOTA must be a number"),
        ({"TURN_MAX_BPS": "1e6"}, "TURN_MAX_BPS must be a number"),
    ],
)
def test_invalid_values_stop_the_entrypoint(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    done = render(tmp_path, **env)
    assert done.returncode == 64, (done.returncode, done.stderr)
    assert message in done.stderr
    if "TURN_ALLOWED_PEER_IPS" in env:
        assert "TURN_ALLOWED_PEER_IPS must be comma-separated IP addresses" in done.stderr
    assert not (tmp_path / "turnserver.conf").exists()


def test_secrets_come_from_files(tmp_path: Path) -> None:
    # Compose secrets: each secret a file, one trailing newline dropped; the value never printed.
    (tmp_path / "turn").write_text("turn-secret-from-a-file\n")
    (tmp_path / "previous").write_text("previous-secret-from-a-file")
    (tmp_path / "admin").write_text("admin-password-from-a-file\n")
    lines = rendered(
        tmp_path,
        TURN_SECRET="",
        TURN_SECRET_FILE=str(tmp_path / "turn"),
        TURN_SECRET_PREVIOUS_FILE=str(tmp_path / "previous"),
        TURN_ADMIN_PASSWORD_FILE=str(tmp_path / "admin"),
    )
    assert "static-auth-secret=turn-secret-from-a-file" in lines
    assert "static-auth-secret=previous-secret-from-a-file" in lines
    assert "cli-password=admin-password-from-a-file" in lines


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        (None, {"TURN_SECRET": ""}, "TURN_SECRET_FILE cannot be read"),
        ("", {"TURN_SECRET": ""}, "TURN_SECRET_FILE is empty"),
        ("from-a-file", {}, "TURN_SECRET and TURN_SECRET_FILE are both set"),
    ],
)
def test_a_bad_secret_file_stops_the_entrypoint(
    tmp_path: Path, content: str | None, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "turn"
    if content is not None:
        path.write_text(content)
    done = render(tmp_path, TURN_SECRET_FILE=str(path), **env)
    assert done.returncode == 64, (done.returncode, done.stderr)
    assert message in done.stderr
    assert TURN_SECRET not in done.stderr and "from-a-file" not in done.stderr
    assert not (tmp_path / "turnserver.conf").exists()


# --- real coturn with each rendered config ----------------------------------------------------


async def test_image_config_refuses_every_non_public_ipv4_peer(
    image_coturn: Callable[..., ImageCoturn],
) -> None:
    server = image_coturn()
    # 127.0.0.1: coturn refuses loopback peers itself without allow-loopback-peers.
    peers = [*all_peers(DENIED_V4), "127.0.0.1", UNSPECIFIED[0]]
    results = await permissions((server.host, server.port), peers)
    assert {peer: code for peer, code in results.items() if code != 403} == {}
    results = await permissions((server.host, server.port), PUBLIC_V4)
    assert results == dict.fromkeys(PUBLIC_V4)
    # no-tcp-relay: coturn refuses a TCP relay (442 Unsupported Transport Protocol).
    assert await tcp_relay_error((server.host, server.port)) == 442


async def test_image_config_refuses_every_non_public_ipv6_peer(
    image_coturn: Callable[..., ImageCoturn],
) -> None:
    server = image_coturn("::1")
    results = await permissions((server.host, server.port), [*all_peers(DENIED_V6), UNSPECIFIED[1]])
    assert {peer: code for peer, code in results.items() if code != 403} == {}
    results = await permissions((server.host, server.port), PUBLIC_V6)
    assert results == dict.fromkeys(PUBLIC_V6)


async def test_local_stack_config_refuses_every_non_public_peer_but_its_loopback(
    local_coturn: Coturn,
) -> None:
    server = ("127.0.0.1", local_coturn.port)
    results = await permissions(server, all_peers(DENIED_V4))
    assert {peer: code for peer, code in results.items() if code != 403} == {}
    # The local stack's one exception (tests, both ends of a call on this host); its neighbours
    # stay denied.
    assert await permissions(server, ["127.0.0.1", "127.0.0.2", "127.1.0.1"]) == {
        "127.0.0.1": None,
        "127.0.0.2": 403,
        "127.1.0.1": 403,
    }
    results = await permissions(server, PUBLIC_V4)
    assert results == dict.fromkeys(PUBLIC_V4)
    assert await tcp_relay_error(server) == 442


async def test_allowed_peer_ips_and_limits_in_coturn(
    image_coturn: Callable[..., ImageCoturn],
) -> None:
    server = image_coturn(
        TURN_ALLOWED_PEER_IPS="10.1.2.0/24, 192.168.7.7",
        TURN_TCP_RELAY="true",
        TURN_USER_QUOTA="2",
    )
    address = (server.host, server.port)
    expected = {
        "10.1.2.0": None,
        "10.1.2.3": None,
        "10.1.2.255": None,
        "192.168.7.7": None,
        "10.1.1.255": 403,
        "10.1.3.0": 403,
        "192.168.7.6": 403,
        "192.168.7.8": 403,
        "169.254.169.254": 403,
    }
    assert await permissions(address, list(expected)) == expected
    # TURN_TCP_RELAY=true: no no-tcp-relay, coturn grants the TCP relay.
    assert await tcp_relay_error(address) is None
    # TURN_USER_QUOTA=2: two open allocations per wallet (the user of `expiry:wallet`: each
    # here has its own username, another expiry), the third refused with 486 (Allocation Quota
    # Reached); another wallet still allocates.
    opened: list[TurnClientUdpProtocol] = []
    try:
        codes = []
        for wallet, offset in [("0xquota", 600), ("0xquota", 601), ("0xquota", 602), ("0xb", 600)]:
            protocol, code = await udp_allocation(address, wallet, offset)
            opened.append(protocol)
            codes.append(code)
        assert codes == [None, None, 486, None]
    finally:
        for protocol in opened:
            await protocol.delete()
    # IPv6 exceptions (coturn relaying on ::1): a network and a range, matched as written.
    server6 = image_coturn("::1", TURN_ALLOWED_PEER_IPS="fd12:3456::/48, 2001:db8::1-2001:db8::ff")
    expected = {
        "fd12:3456::1": None,
        "fd12:3456:0:ffff::1": None,
        "2001:db8::1": None,
        "2001:db8::ff": None,
        "fd12:3457::1": 403,
        "fd12:3455:ffff::1": 403,
        "2001:db8::100": 403,
        "fd00:ec2::254": 403,
    }
    assert await permissions((server6.host, server6.port), list(expected)) == expected
