"""A hostile or careless client against signal-service: what one socket or one wallet can do.

Binary-attachment floods, sockets that outlive their token, too many sockets per wallet, a
socket that keeps sending refused events, refused events in the logs, presence flapping and the
legacy `signal` event's checks. Real redis-server and signal-service processes, real clients
(python-socketio, and aiohttp speaking the engine.io protocol for what a client library would
never send).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from rtc_testkit.contract import candidate, make_token, new_wallet
from rtc_testkit.peer import Peers
from rtc_testkit.processes import RedisServer, ServiceProcess, metric_value, wait_for_async
from rtc_testkit.stack import add_contacts
from test_signal import RTC_DISABLED_KEY, Cluster, refusal_code


def rss_bytes(process: ServiceProcess) -> int:
    assert process.proc is not None
    for line in Path(f"/proc/{process.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def log_lines(process: ServiceProcess) -> list[dict[str, Any]]:
    lines = []
    for text in process.log_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines


async def test_binary_attachment_flood_closes_the_socket(signal_cluster: Cluster) -> None:
    """A packet announcing binary attachments closes the socket before anything is buffered."""
    (instance,) = signal_cluster(1)
    wallet = new_wallet()
    before = rss_bytes(instance)
    refused_before = metric_value(instance.url, "rtc_signal_binary_packets_refused_total")
    # Each frame under engine.io's message size limit (which would close the socket by itself).
    frame = b"\0" * (64 * 1024)
    sent = 0
    ws_url = instance.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        opened = await ws.receive_str(timeout=5)
        assert opened.startswith("0{")
        await ws.send_str("40" + json.dumps({"token": make_token(wallet)}))
        assert (await ws.receive_str(timeout=5)).startswith("40{")
        # An event with 99 binary attachments, then 64 MiB of attachments.
        await ws.send_str('4599-["rtc:offer",{"_placeholder":true,"num":0}]')
        announced = time.monotonic()
        try:
            while sent < 1024 and not ws.closed:
                await ws.send_bytes(frame)
                sent += 1
        except (ConnectionError, aiohttp.ClientError):
            pass

        async def closed() -> bool:
            if ws.closed:
                return True
            try:
                message = await ws.receive(timeout=0.2)
            except TimeoutError:
                return False
            return message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

        await wait_for_async(closed, 5, what="the socket closed by the server")
        closed_after = time.monotonic() - announced
    grown = rss_bytes(instance) - before
    print(
        f"binary flood: {sent * 64} KiB sent, closed {closed_after:.2f} s after the announcement,"
        f" RSS +{grown / 1e6:.1f} MB"
    )
    assert grown < 10 * 1024 * 1024
    assert (
        metric_value(instance.url, "rtc_signal_binary_packets_refused_total") == refused_before + 1
    )
    # The instance still serves others.
    assert (await _alive(instance)) is True


async def _alive(instance: ServiceProcess) -> bool:
    async with aiohttp.ClientSession() as session, session.get(instance.url + "/readyz") as r:
        return r.status == 200


async def test_socket_ends_when_its_token_expires(
    signal_cluster: Cluster, redis_server: RedisServer, peers: Peers
) -> None:
    (instance,) = signal_cluster(1, SIGNAL_RATE_PER_SEC="1000")
    a, b = new_wallet(), new_wallet()
    add_contacts(redis_server, a, b)
    receiver = await peers.connect(instance.url, b)
    sender = peers(a)
    exp = int(time.time()) + 2
    token = make_token(a, expires_in=exp - time.time())
    await sender.connect(instance.url, auth={"token": token})
    sent_at: dict[str, float] = {}
    acked_ok: list[str] = []
    n = 0
    # Events sent continuously (with acks) until the server ends the session.
    while sender.sio.connected and n < 2000:
        n += 1
        signal_id = f"exp-{n}"
        sent_at[signal_id] = time.time()
        try:
            ack = await sender.sio.call("rtc:candidate", candidate(a, b, signal_id), timeout=2)
        except Exception:
            break
        if ack.get("ok"):
            acked_ok.append(signal_id)
        await asyncio.sleep(0.01)
    await sender.wait_event("session:end")
    assert sender.received("session:end") == [{"reason": "token_expired"}]

    async def gone() -> bool:
        return not sender.sio.connected

    await wait_for_async(gone, 5, what="the expired socket disconnected")
    assert acked_ok, "nothing was acked before exp"
    late = [s for s in acked_ok if sent_at[s] >= exp]
    assert late == [], f"acked after exp: {late}"
    # Nothing sent after exp was forwarded either. Every acked signal was; one handled just
    # before exp may be forwarded with its ack lost to the closing socket.
    await receiver.wait_signal("rtc:candidate", acked_ok[-1])
    forwarded = [d["signalId"] for d in receiver.received("rtc:candidate")]
    assert [s for s in forwarded if sent_at[s] >= exp] == []
    assert forwarded[: len(acked_ok)] == acked_ok
    assert len(forwarded) <= len(acked_ok) + 1
    assert (
        metric_value(instance.url, "rtc_signal_sessions_ended_total", 'reason="token_expired"') >= 1
    )


async def test_sockets_per_wallet_are_bounded_across_instances(
    signal_cluster: Cluster, peers: Peers
) -> None:
    s1, s2 = signal_cluster(2, SIGNAL_MAX_SOCKETS_PER_WALLET="3")
    wallet = new_wallet()
    held = [await peers.connect(url, wallet) for url in (s1.url, s2.url, s1.url)]
    for url in (s1.url, s2.url):
        refused = await peers(wallet).refused(url)
        assert refusal_code(refused) == "too_many_connections"
    # Another wallet is not affected.
    await peers.connect(s2.url)
    # A socket that leaves frees its place.
    await held[0].close()
    newcomer = peers(wallet)

    async def admitted() -> bool:
        try:
            await newcomer.connect(s2.url)
        except Exception:
            return False
        return True

    await wait_for_async(admitted, 5, what="a place freed by a disconnect")


async def test_a_socket_that_keeps_sending_refused_events_is_ended(
    signal_cluster: Cluster, peers: Peers
) -> None:
    # 2 events/s: more than 5 x 2 x 5 = 50 refused events within 5 s ends the session.
    (instance,) = signal_cluster(1, SIGNAL_RATE_PER_SEC="2")
    hostile = await peers.connect(instance.url)
    bystander = await peers.connect(instance.url)
    for _ in range(80):
        if not hostile.sio.connected:
            break
        await hostile.emit("rtc:offer", {"junk": True})
    await hostile.wait_event("session:end")
    assert hostile.received("session:end") == [{"reason": "abuse"}]

    async def gone() -> bool:
        return not hostile.sio.connected

    await wait_for_async(gone, 5, what="the abusive socket disconnected")
    assert bystander.sio.connected
    assert metric_value(instance.url, "rtc_signal_sessions_ended_total", 'reason="abuse"') == 1

    # Refused events are logged in aggregate: counts by code in one line, not a line each.
    async def summed_up() -> bool:
        return any(line.get("msg") == "events refused" for line in log_lines(instance))

    await wait_for_async(summed_up, 5, what="the aggregated refusal line")
    lines = log_lines(instance)
    summaries = [line for line in lines if line.get("msg") == "events refused"]
    refused = sum(n for line in summaries for n in line["refused"].values())
    assert refused > 50
    # (events still queued when the session ended are refused as unauthorized)
    assert set(summaries[0]["refused"]) <= {"invalid_payload", "rate_limited", "unauthorized"}
    assert not [
        line
        for line in lines
        if line.get("msg") == "event" and line.get("outcome") not in ("ok", "duplicate")
    ]


async def test_legitimate_refusals_do_not_end_the_session(
    signal_cluster: Cluster, peers: Peers
) -> None:
    (instance,) = signal_cluster(1, SIGNAL_RATE_PER_SEC="20")
    peer = await peers.connect(instance.url)
    for _ in range(30):  # a burst over the rate: some refused, far from the abuse bound
        await peer.emit("rtc:offer", {"junk": True})
    ack = await peer.call("rtc:offer", {"junk": True})
    assert ack["ok"] is False
    assert peer.sio.connected and not peer.received("session:end")


async def test_presence_flapping_is_coalesced(
    signal_cluster: Cluster, redis_server: RedisServer, peers: Peers
) -> None:
    (instance,) = signal_cluster(1, PRESENCE_DEBOUNCE_SECONDS="2")
    flapper, observer = new_wallet(), new_wallet()
    add_contacts(redis_server, flapper, observer)
    watcher = await peers.connect(instance.url, observer)
    flaps = 10
    for _ in range(flaps):
        peer = await peers.connect(instance.url, flapper)
        await peer.close()

    def updates() -> list[bool]:
        return [d["online"] for d in watcher.received("presence:update") if d["wallet"] == flapper]

    async def settled_offline() -> bool:
        seen = updates()
        return bool(seen) and seen[-1] is False

    await wait_for_async(settled_offline, 10, what="the final offline state")
    seen = updates()
    assert len(seen) <= flaps // 2, f"{len(seen)} updates for {2 * flaps} transitions: {seen}"
    # The final state also goes out when it is "online".
    last = await peers.connect(instance.url, flapper)

    async def settled_online() -> bool:
        return updates()[-1] is True

    await wait_for_async(settled_online, 10, what="the final online state")
    assert last.sio.connected


async def test_legacy_signal_honours_the_rtc_switch_and_dedups(
    signal_cluster: Cluster, redis_server: RedisServer, peers: Peers
) -> None:
    s1, s2 = signal_cluster(2)
    a, b, disabled = new_wallet(), new_wallet(), new_wallet()
    add_contacts(redis_server, a, b)
    add_contacts(redis_server, a, disabled)
    redis_server.client().sadd(RTC_DISABLED_KEY, disabled)
    alice = await peers.connect(s1.url, a)
    bob = await peers.connect(s2.url, b)
    await peers.connect(s2.url, disabled)
    refused = await alice.call("signal", {"to": disabled, "signal": {"x": 1}})
    assert refused == {"ok": False, "error": "target_not_rtc_eligible", "signalId": None}
    body = {"to": b, "signal": {"type": "offer"}, "signalId": "legacy-1"}
    assert await alice.call("signal", body) == {"ok": True, "signalId": "legacy-1"}
    assert await alice.call("signal", body) == {
        "ok": True,
        "signalId": "legacy-1",
        "duplicate": True,
    }
    marker = {"to": b, "signal": {"marker": True}}
    assert await alice.call("signal", marker) == {"ok": True}
    await bob.wait_event("signal", lambda d: d["signal"] == {"marker": True})
    assert [d["signal"] for d in bob.received("signal")] == [{"type": "offer"}, {"marker": True}]
    # The sender's own switch too.
    redis_server.client().sadd(RTC_DISABLED_KEY, a)

    async def sender_refused() -> bool:
        ack: dict[str, Any] = await alice.call("signal", {"to": b, "signal": None})
        return ack.get("error") == "sender_not_rtc_eligible"

    await wait_for_async(sender_refused, 5, what="the sender's switch honoured")


async def test_a_token_valid_for_centuries_connects(
    signal_cluster: Cluster, redis_server: RedisServer, peers: Peers
) -> None:
    """A far `exp` must not break the expiry timer (timers are bounded; the end still comes)."""
    (instance,) = signal_cluster(1)
    a, b = new_wallet(), new_wallet()
    add_contacts(redis_server, a, b)
    receiver = await peers.connect(instance.url, b)
    sender = peers(a)
    await sender.connect(instance.url, auth={"token": make_token(a, expires_in=2**62)})
    ack = await sender.call("rtc:candidate", candidate(a, b, "far-exp"))
    assert ack == {"ok": True, "signalId": "far-exp"}
    await receiver.wait_signal("rtc:candidate", "far-exp")
