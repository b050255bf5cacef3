"""The checks of `make compose-test` (deploy/compose_test.sh), run with the repository's .venv
(its tokens, TURN allocations and Socket.IO clients are the test kit's, rtc_testkit).

    compose_check.py wait --gateway URL --replicas N
    compose_check.py hardening --project NAME --replicas N
    compose_check.py run  --gateway URL --turn HOST:PORT --replicas N
    compose_check.py scale --gateway URL   (deploy/compose_scale.py)

Everything the clients do goes through the published gateway port. The compose command of the
stack under test is in COMPOSE_CMD (used to look at Redis, to read the gateway's log and to stop
one signal-service replica); JWT_SECRET, TURN_SECRET, REDIS_PASSWORD and MONGO_PASSWORD are the
stack's secrets.

`hardening` checks every container of the project (podman inspect, and /proc inside the running
ones) against its service in docker-compose.yml: a read-only root filesystem, no capabilities in
any process, no-new-privileges, the service's mem_limit and pids_limit; the Redis password on no
command line; and, from throwaway containers on each network, what the network reaches: the
monitoring network every service's /metrics and no store, the edge network (the gateway's) no
store, the backend network Redis (refusing commands without the password) and no way out.

`run` checks, in order:
1. ICE: credentials from GET /api/v1/rtc/ice (coturn provider) allocate a relay on the coturn of
   the `coturn` profile (a real TURN allocation, aioice); a tampered credential gets 401.
2. Signaling across replicas: each client sends its own `X-RTC-Test-Client: <n>` header (the
   test stack's gateway hashes it over the replicas: GATEWAY_AFFINITY_KEY in
   deploy/compose.test.yml; on 127.0.0.1 every client has the same address), their replica is
   read from presence in Redis, and two users on different replicas exchange offer, answer and
   candidate.
3. Relay: a message enqueued for an online user is pushed to its socket, pulled, and acked.
4. A replica stopped (SIGTERM, as compose stops it): it exits within its grace period, its
   presence heartbeat is gone, and its client reconnects through the gateway to another replica
   and signals again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from compose_common import SECRET_NAMES, CheckFailed, compose, redis_cli, say
from compose_hardening import check_hardening
from rtc_testkit.contract import (
    allocate_relay,
    allocation_error,
    answer,
    candidate,
    make_token,
    offer,
    relay_message,
    turn_credentials,
)
from rtc_testkit.peer import Peer

T = TypeVar("T")
# The header the test stack's gateway hashes over the signal replicas (deploy/compose.test.yml).
CLIENT_HEADER = "X-RTC-Test-Client"


def token(wallet: str) -> str:
    private_key = os.environ.get("JWT_PRIVATE_KEY")
    if private_key:  # the stack verifies with the public key, a compose secret
        return make_token(wallet, secret=private_key, algorithm="RS256", expires_in=600)
    return make_token(wallet, secret=os.environ["JWT_SECRET"], expires_in=600)


async def eventually(
    what: str, probe: Callable[[], Awaitable[T | None]], within: float = 20.0
) -> T:
    deadline = time.monotonic() + within
    while True:
        try:
            value = await probe()
        except (aiohttp.ClientError, OSError, CheckFailed):
            value = None
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {within:.0f} s: {what}")
        await asyncio.sleep(0.3)


# --- wait -------------------------------------------------------------------------------------


async def wait(gateway: str, replicas: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:

        async def gateway_ok() -> bool:
            async with http.get(gateway + "/healthz") as response:
                return response.status == 200

        await eventually("the gateway's /healthz", gateway_ok, within=60)
        say("gateway answers /healthz")

        async def sees_replicas() -> bool:
            log = await asyncio.to_thread(compose, "logs", "--no-color", "gateway")
            return f"signal {replicas}," in log

        await eventually(f"the gateway listing {replicas} signal replicas", sees_replicas, 30)
        say(f"gateway's upstreams include {replicas} signal-service replicas")

        async def routes_ready() -> bool:
            # Through the gateway: each service answers its own routes (401 without a token).
            for path in ("/api/v1/rtc/ice", "/api/v1/relay/pull"):
                async with http.get(gateway + path) as response:
                    if response.status != 401:
                        return False
            return True

        await eventually("ice-service and relay-service behind the gateway", routes_ready, 30)
        say("ice-service and relay-service answer through the gateway")


# --- hardening --------------------------------------------------------------------------------


async def check_ice(gateway: str, turn: tuple[str, int]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            gateway + "/api/v1/rtc/ice", headers={"Authorization": f"Bearer {token('0xaaa')}"}
        ) as response,
    ):
        if response.status != 200:
            raise CheckFailed(f"ICE: {response.status} {await response.text()}")
        body = await response.json()
    if body.get("provider") != "coturn":
        raise CheckFailed(f"ICE: provider {body.get('provider')!r}, expected coturn")
    server = body["iceServers"][-1]
    say(f"ICE: {response.status}, provider coturn, urls {server['urls'][0]} ...")
    started = time.monotonic()
    relayed = await allocate_relay(turn, server["username"], server["credential"])
    say(
        f"ICE: coturn allocated relay {relayed[0]}:{relayed[1]} for the issued credentials"
        f" in {1000 * (time.monotonic() - started):.0f} ms"
    )
    expiry = int(server["username"].split(":", 1)[0])
    forged = turn_credentials("not-the-secret", "0xaaa", expiry)
    code = await allocation_error(turn, *forged)
    if code is None:
        raise CheckFailed("ICE: coturn accepted a credential signed with another secret")
    if code != 401:
        raise CheckFailed(f"ICE: a forged credential got {code}, expected 401")
    say("ICE: a credential signed with another secret is refused (401)")


class Client(Peer):
    """A peer with its own X-RTC-Test-Client header (on the Socket.IO connection and on every
    HTTP request of this client). A replica stopping gracefully closes its engine.io sessions:
    socket.io-client (JS) then reconnects, python-socketio would not, so this client does what
    the JS client does (`follow_server_close`)."""

    def __init__(self, wallet: str, number: int) -> None:
        super().__init__(
            wallet,
            headers={CLIENT_HEADER: str(number)},
            reconnection=True,
            reconnection_delay=0.5,
            follow_server_close=True,
        )
        self.number = number

    async def join(self, gateway: str) -> None:
        await self.connect(gateway, auth={"token": token(self.wallet)})

    async def next_event(self, name: str, after: int = 0, within: float = 5.0) -> Any:
        try:
            return await self.wait_event(name, after=after, timeout=within)
        except TimeoutError:
            what = f"{self.wallet} receiving {name}"
            raise CheckFailed(f"timed out after {within:.0f} s: {what}") from None


async def instances_of(*wallets: str) -> dict[str, set[str]]:
    """The signal instances holding each wallet's sockets (presence:conn:<wallet> in Redis),
    read with one `redis-cli` in the redis container (run off the event loop)."""
    commands: list[list[str]] = []
    for wallet in wallets:
        commands += [["ECHO", f"--{wallet}"], ["HVALS", f"presence:conn:{wallet}"]]
    lines = await asyncio.to_thread(redis_cli, *commands)
    found: dict[str, set[str]] = {}
    current: set[str] = set()
    for line in lines:
        if line.startswith("--"):
            current = found.setdefault(line[2:], set())
        elif "|" in line:
            current.add(line.split("|", 1)[0])
    return found


async def instance_of(wallet: str) -> set[str]:
    return (await instances_of(wallet)).get(wallet, set())


async def signal_exchange(a: Client, b: Client) -> None:
    run = uuid.uuid4().hex[:8]
    exchange = (
        (a, b, "rtc:offer", offer(a.wallet, b.wallet, f"offer-{run}")),
        (b, a, "rtc:answer", answer(b.wallet, a.wallet, f"answer-{run}")),
        (a, b, "rtc:candidate", candidate(a.wallet, b.wallet, f"cand-{run}")),
    )
    for sender, receiver, event, body in exchange:
        mark = len(receiver.events)
        # `unavailable` means "retry later" (the SDKs do, with the same signalId): podman's
        # network set-up for a container starting or stopping stalls the others' Redis
        # connections for a second or two here. Anything else, or 5 s of it, fails the check.
        deadline = time.monotonic() + 5
        while True:
            ack = await sender.call(event, body)
            retry = isinstance(ack, dict) and ack.get("error") == "unavailable"
            if not retry or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        if not (isinstance(ack, dict) and ack.get("ok")):
            raise CheckFailed(f"{event} {sender.wallet} -> {receiver.wallet}: ack {ack}")
        got = await receiver.next_event(event, mark)
        if got.get("from") != sender.wallet:
            raise CheckFailed(f"{event} arrived with from={got.get('from')!r}")


async def check_relay(gateway: str, sender: Client, recipient: Client) -> None:
    message_id = f"m-{uuid.uuid4().hex[:10]}"
    mark = len(recipient.events)
    async with aiohttp.ClientSession() as http:
        body = relay_message(
            sender.wallet,
            recipient.wallet,
            message_id,
            "hello through the compose stack",
            force=True,
        )
        headers = {**sender.headers, "Authorization": f"Bearer {token(sender.wallet)}"}
        async with http.post(
            gateway + "/api/v1/relay/enqueue", json=body, headers=headers
        ) as response:
            if response.status != 202:
                raise CheckFailed(f"relay enqueue: {response.status} {await response.text()}")
        say(f"relay: enqueue {sender.wallet} -> {recipient.wallet}: 202")
        pushed = await recipient.next_event("relay:message", mark)
        say(f"relay: pushed to the recipient's socket (relay:message {pushed.get('messageId')})")
        headers = {**recipient.headers, "Authorization": f"Bearer {token(recipient.wallet)}"}
        async with http.get(gateway + "/api/v1/relay/pull", headers=headers) as response:
            pulled = await response.json()
            if response.status != 200:
                raise CheckFailed(f"relay pull: {response.status} {pulled}")
        messages = [m for m in pulled["messages"] if m.get("messageId") == message_id]
        if len(messages) != 1 or messages[0].get("from") != sender.wallet:
            raise CheckFailed(f"relay pull: message not there: {pulled}")
        say(f"relay: pulled by the recipient ({len(pulled['messages'])} message)")
        async with http.post(
            gateway + "/api/v1/relay/ack", json={"ids": [messages[0]["id"]]}, headers=headers
        ) as response:
            acked = await response.json()
            if response.status != 200 or acked.get("acked") != 1:
                raise CheckFailed(f"relay ack: {response.status} {acked}")
        say("relay: acked (1)")


def container_of(instance: str) -> str:
    """signal-service instance ids are `<hostname>-<pid>-<random>`, the hostname the
    container's id."""
    ids = compose("ps", "-q", "signal-service").split()
    hostname = instance.split("-", 1)[0]
    for cid in ids:
        if cid.startswith(hostname):
            return cid
    raise CheckFailed(f"no signal-service container for instance {instance} among {ids}")


async def check_signaling_and_failover(gateway: str, replicas: int) -> None:
    wallets = [f"0xc{n:03x}" for n in range(2 * replicas + 2)]
    commands = [
        ["SADD", f"rtc:contacts:{owner}", *[w for w in wallets if w != owner]] for owner in wallets
    ]
    await asyncio.to_thread(redis_cli, *commands)
    say(f"contacts: {len(wallets)} wallets, all mutual (redis-cli in the redis container)")
    clients = [Client(wallet, n + 1) for n, wallet in enumerate(wallets)]
    try:
        for client in clients:
            await client.join(gateway)

        async def registered() -> dict[str, set[str]] | None:
            where = await instances_of(*wallets)
            return where if all(len(where.get(w, ())) == 1 for w in wallets) else None

        where = await eventually("presence of every client", registered, 10)
        placement: dict[str, list[Client]] = {}
        for client in clients:
            (instance,) = where[client.wallet]
            placement.setdefault(instance, []).append(client)
        counts = ", ".join(f"{inst}: {len(cs)}" for inst, cs in sorted(placement.items()))
        say(f"signal: {len(clients)} clients, {CLIENT_HEADER} 1-{len(clients)}: {counts}")
        if len(placement) < 2:
            raise CheckFailed(
                f"every client landed on one replica: the gateway does not hash {CLIENT_HEADER}"
                " (GATEWAY_AFFINITY_KEY in deploy/compose.test.yml?)"
            )
        # The header, not chance (round robin would spread them too), picks the replica: another
        # wallet's socket sending the header of the first client on each replica joins it there.
        probes = [
            (Client(f"0xd{n:03x}", on[0].number), instance)
            for n, (instance, on) in enumerate(sorted(placement.items()))
        ]
        clients += [probe for probe, _ in probes]
        for probe, _ in probes:
            await probe.join(gateway)

        async def probes_registered() -> dict[str, set[str]] | None:
            where = await instances_of(*(probe.wallet for probe, _ in probes))
            return where if all(len(where.get(p.wallet, ())) == 1 for p, _ in probes) else None

        where = await eventually("presence of the probes", probes_registered, 10)
        for probe, instance in probes:
            if where[probe.wallet] != {instance}:
                raise CheckFailed(
                    f"{CLIENT_HEADER}: {probe.number} went to {where[probe.wallet]}, its first"
                    f" client to {instance}: the gateway does not hash the header"
                )
            await probe.close()
        say(f"signal: {len(probes)} more sockets each joined the replica of their header's client")
        (inst_a, on_a), (inst_b, on_b) = sorted(placement.items(), key=lambda kv: -len(kv[1]))[:2]
        a, b = on_a[0], on_b[0]
        started = time.monotonic()
        await signal_exchange(a, b)
        say(
            f"signal: {a.wallet}@{inst_a} <-> {b.wallet}@{inst_b}: offer, answer, candidate"
            f" delivered across replicas in {1000 * (time.monotonic() - started):.0f} ms"
        )

        await check_relay(gateway, a, b)

        # --- a replica stopped as compose stops it: docker stop (SIGTERM, then the grace).
        cid = await asyncio.to_thread(container_of, inst_a)
        connects_before = a.connects
        started = time.monotonic()
        # As `docker compose stop` does: SIGTERM, SIGKILL after the grace period (the
        # service's stop_grace_period, 15 s). Off the event loop: the clients keep running.
        stop = await asyncio.create_subprocess_exec(
            "podman", "stop", "-t", "15", cid,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _out, err = await stop.communicate()
        if stop.returncode != 0:
            raise CheckFailed(f"podman stop {cid[:12]}: {err.decode().strip()}")
        stopped_in = time.monotonic() - started
        state = await asyncio.to_thread(
            subprocess.run,
            ["podman", "inspect", "--format", "{{.State.ExitCode}}", cid],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        exit_code = state.stdout.strip()
        say(
            f"failover: stopped replica {inst_a} ({cid[:12]}) with SIGTERM: exited {exit_code}"
            f" after {stopped_in:.1f} s"
        )
        if exit_code != "0":
            raise CheckFailed(f"the replica exited {exit_code} (killed, not a graceful stop)")
        alive = await asyncio.to_thread(redis_cli, ["EXISTS", f"presence:inst:{inst_a}:alive"])
        if alive != ["0"]:
            raise CheckFailed(f"the stopped replica's heartbeat is still there: {alive}")
        say("failover: the stopped replica's presence heartbeat is gone")

        async def reconnected() -> set[str] | None:
            if a.connects <= connects_before or not a.connected:
                return None
            where = await instance_of(a.wallet)
            return where if where and inst_a not in where else None

        (new_inst,) = await eventually(f"{a.wallet} reconnecting elsewhere", reconnected, 20)
        say(
            f"failover: {a.wallet} reconnected through the gateway to {new_inst}"
            f" {time.monotonic() - started:.1f} s after the stop"
        )
        started = time.monotonic()
        await signal_exchange(b, a)
        say(
            f"failover: {b.wallet}@{inst_b} <-> {a.wallet}@{new_inst} signaling again"
            f" ({1000 * (time.monotonic() - started):.0f} ms)"
        )
        where = await instances_of(*(c.wallet for c in on_a))
        leftovers = [wallet for wallet, instances in where.items() if inst_a in instances]
        if leftovers:
            raise CheckFailed(f"presence still places {leftovers} on the stopped replica")
        say(f"failover: no wallet is left on the stopped replica ({len(on_a)} were there)")
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def check_logs_hold_no_secret() -> None:
    logs = compose("logs", "--no-color")
    for name in SECRET_NAMES:
        if os.environ.get(name) and os.environ[name] in logs:
            raise CheckFailed(f"{name} is in the containers' logs")
    say(f"logs: none of the stack's secrets in {len(logs.splitlines())} lines")


async def check_admin(gateway: str) -> None:
    """The revocation API, authorised by ADMIN_TOKEN (a compose secret): revoke, refused, lift."""
    admin = {"Authorization": f"Bearer {os.environ['ADMIN_TOKEN']}"}
    wallet = f"0xad{uuid.uuid4().hex[:12]}"
    user = {"Authorization": f"Bearer {token(wallet)}"}
    revoke = gateway + "/api/v1/rtc/admin/revoke"
    async with aiohttp.ClientSession() as http:
        async with http.post(revoke, json={"wallet": wallet}, headers=user) as response:
            if response.status != 401:
                raise CheckFailed(f"admin: a user's token got {response.status}, expected 401")
        async with http.post(revoke, json={"wallet": wallet, "seconds": 60}, headers=admin) as r:
            if r.status != 200:
                raise CheckFailed(f"admin: revoke answered {r.status} {await r.text()}")

        def ice_answers(status: int) -> Callable[[], Awaitable[bool]]:
            async def probe() -> bool:
                async with http.get(gateway + "/api/v1/rtc/ice", headers=user) as response:
                    return response.status == status

            return probe

        await eventually("ICE refusing the revoked wallet", ice_answers(403), 5)
        async with http.delete(revoke, json={"wallet": wallet}, headers=admin) as response:
            if response.status != 200:
                raise CheckFailed(f"admin: lifting answered {response.status}")
        await eventually("ICE serving the wallet again", ice_answers(200), 5)
    say("admin: ADMIN_TOKEN (a file) revokes a wallet (ICE 403) and lifts it; a user's JWT: 401")


async def run(gateway: str, turn: tuple[str, int], replicas: int) -> None:
    await check_ice(gateway, turn)
    if os.environ.get("ADMIN_TOKEN"):
        await check_admin(gateway)
    await check_signaling_and_failover(gateway, replicas)
    await asyncio.to_thread(check_logs_hold_no_secret)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["wait", "hardening", "run", "scale", "fresh", "rolling"])
    parser.add_argument("--env-file", help="fresh: the operator's env file (for rtcctl doctor)")
    parser.add_argument("--gateway", help="wait, run: the published gateway's URL")
    parser.add_argument("--turn", default="127.0.0.1:3478")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--project", help="hardening: the compose project's name")
    args = parser.parse_args()
    if (args.project if args.action == "hardening" else args.gateway) is None:
        parser.error(
            f"{args.action} needs --project"
            if args.action == "hardening"
            else f"{args.action} needs --gateway"
        )
    try:
        if args.action == "wait":
            asyncio.run(wait(args.gateway, args.replicas))
        elif args.action == "hardening":
            check_hardening(args.project, args.replicas)
        elif args.action == "fresh":
            from compose_fresh import check_fresh

            asyncio.run(check_fresh(args.gateway, args.env_file))
        elif args.action == "rolling":
            from compose_rolling import check_rolling

            asyncio.run(check_rolling(args.gateway))
        elif args.action == "scale":
            from compose_scale import check_scaling  # it imports this module's helpers

            asyncio.run(check_scaling(args.gateway))
        else:
            host, _, port = args.turn.rpartition(":")
            asyncio.run(run(args.gateway, (host, int(port)), args.replicas))
    except CheckFailed as exc:
        print(f"    CHECK FAILED: {exc}", file=sys.stderr)
        if report := os.environ.get("CHECK_REPORT"):  # compose_test.sh repeats it last
            with open(report, "a", encoding="utf-8") as out:
                out.write(f"{args.action}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
