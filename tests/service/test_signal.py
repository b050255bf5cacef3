"""Signaling over Socket.IO: rtc:* events, legacy `signal`, errors, dedup and handshake auth.

Real components only: redis-server, signal-service processes, the nginx gateway, and real clients
(python-socketio's AsyncClient over websocket, and Node's socket.io-client v4 through
tests/node/signal_flow.mjs). Nothing waits on a fixed sleep: every wait is a condition with a
deadline, and "nothing was forwarded" is proven by a later signal that arrives first-in-order.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from helpers import NODE_DIR
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rtc_testkit.contract import (
    CANDIDATE,
    SDP_ANSWER,
    SDP_OFFER,
    answer,
    candidate,
    conv_id,
    make_token,
    new_wallet,
    offer,
    sid,
)
from rtc_testkit.peer import SIGNAL_EVENTS, Peer, Peers
from rtc_testkit.processes import (
    RedisServer,
    ServiceProcess,
    http_status,
    metric_value,
    wait_for,
    wait_for_async,
)
from rtc_testkit.stack import Stack, StackSpec, add_contacts, start_stack

Cluster = Callable[..., list[ServiceProcess]]
ORIGIN = "http://app.example"
RTC_DISABLED_KEY = "rtc:rtc_disabled"
MAX_SDP = 65536  # SIGNAL_MAX_SDP_BYTES default
MAX_CANDIDATE = 2048
LEGACY_WARNING = {
    "code": "deprecated_event",
    "event": "signal",
    "use": "rtc:offer|rtc:answer|rtc:candidate",
}


# -- helpers ---------------------------------------------------------------------------------


async def round_trip(sender: Peer, receiver: Peer, event: str = "rtc:candidate") -> Any:
    """A valid signal from `sender` that `receiver` must get; anything forwarded earlier arrives
    before it (one ordered pub/sub channel), so after it the receiver's record is complete."""
    marker = sid("marker")
    if event == "signal":
        ack = await sender.call("signal", {"to": receiver.wallet, "signal": {"marker": marker}})
        assert ack == {"ok": True}
        return await receiver.wait_event("signal", lambda d: d.get("signal") == {"marker": marker})
    ack = await sender.call("rtc:candidate", candidate(sender.wallet, receiver.wallet, marker))
    assert ack == {"ok": True, "signalId": marker}, ack
    return await receiver.wait_signal("rtc:candidate", marker)


def only_marker(receiver: Peer, marker: Any) -> None:
    forwarded = receiver.signals()
    assert [data for _, data in forwarded] == [marker], f"forwarded unexpectedly: {forwarded}"


# -- the shared stack: redis, two signal-service instances, the gateway -----------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A high rate so that only the rate-limit test (its own cluster) is ever limited. Nothing
    # listens on the ice upstream: only /socket.io/ is used here.
    spec = StackSpec(
        signal=2, env={"SIGNAL_RATE_PER_SEC": "100000", "ALLOWED_ORIGINS": ORIGIN}, name="stack-"
    )
    with start_stack(spec, tmp_path_factory.mktemp("signal-stack")) as stack:
        yield stack


# -- 1. two users on different instances ------------------------------------------------------


async def test_offer_answer_candidates_across_instances(
    signal_cluster: Cluster, redis_server: RedisServer, peers: Peers
) -> None:
    s1, s2 = signal_cluster(2)
    a, b = new_wallet(), new_wallet()
    add_contacts(redis_server, a, b)
    # A's token carries the wallet in upper case: the server normalizes it.
    alice = peers(a)
    await alice.connect(s1.url, auth={"token": make_token("0x" + a[2:].upper())})
    bob = await peers.connect(s2.url, b)
    assert metric_value(s1.url, "rtc_signal_sockets") == 1
    assert metric_value(s2.url, "rtc_signal_sockets") == 1
    expected_conv = conv_id(a, b)

    ack = await alice.call("rtc:offer", offer(a, "0x" + b[2:].upper(), "offer-1"))
    assert ack == {"ok": True, "signalId": "offer-1"}
    got = await bob.wait_signal("rtc:offer", "offer-1")
    assert got == {
        "convId": expected_conv,
        "to": b,
        "from": a,
        "sdp": {"type": "offer", "sdp": SDP_OFFER},
        "signalId": "offer-1",
    }

    ack = await bob.call("rtc:answer", answer(b, a, "answer-1"))
    assert ack == {"ok": True, "signalId": "answer-1"}
    got = await alice.wait_signal("rtc:answer", "answer-1")
    assert got == {
        "convId": expected_conv,
        "to": a,
        "from": b,
        "sdp": {"type": "answer", "sdp": SDP_ANSWER},
        "signalId": "answer-1",
    }

    sent = [
        candidate(a, b, "cand-1"),
        candidate(a, b, "cand-2", CANDIDATE.replace("50000", "50001"), None, None),
    ]
    sent[1]["candidate"]["usernameFragment"] = "abcd"
    for body in sent:
        ack = await alice.call("rtc:candidate", body)
        assert ack == {"ok": True, "signalId": body["signalId"]}
    await bob.wait_signal("rtc:candidate", "cand-2")
    ack = await bob.call("rtc:candidate", candidate(b, a, "cand-b"))
    assert ack == {"ok": True, "signalId": "cand-b"}
    got_back = await alice.wait_signal("rtc:candidate", "cand-b")
    assert got_back["from"] == b and got_back["convId"] == expected_conv

    forwarded = bob.signals()
    assert [name for name, _ in forwarded] == ["rtc:offer", "rtc:candidate", "rtc:candidate"]
    assert forwarded[1][1] == {
        "convId": expected_conv,
        "to": b,
        "from": a,
        "candidate": {"candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0},
        "signalId": "cand-1",
    }
    assert forwarded[2][1]["candidate"] == {
        "candidate": CANDIDATE.replace("50000", "50001"),
        "sdpMid": None,
        "sdpMLineIndex": None,
        "usernameFragment": "abcd",
    }
    # Nobody gets their own signals back.
    assert [name for name, _ in alice.signals()] == ["rtc:answer", "rtc:candidate"]
    assert metric_value(s1.url, "rtc_signal_events_total", 'event="rtc:offer",outcome="ok"') == 1
    assert metric_value(s2.url, "rtc_signal_events_total", 'event="rtc:answer",outcome="ok"') == 1


# -- 2. through the gateway --------------------------------------------------------------------


async def run_node(env: dict[str, str]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "signal_flow.mjs"),
        cwd=str(NODE_DIR),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"node exited {proc.returncode}: {err.decode()[-2000:]}"
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_signaling_through_gateway_spreads_instances(stack: Stack, peers: Peers) -> None:
    gateway = stack.gateway
    addr_a, up_a, addr_b, up_b = await gateway.spread_addresses()
    instance_ports = {f"127.0.0.1:{p.port}" for p in stack.signals}
    assert {up_a, up_b} == instance_ports

    # Python clients, websocket, each bound to its own source address.
    a, b = new_wallet(), new_wallet()
    stack.add_contacts(a, b)
    alice = peers(a, local_addr=addr_a)
    bob = peers(b, local_addr=addr_b)
    await alice.connect(gateway.url)
    await bob.connect(gateway.url)
    ack = await alice.call("rtc:offer", offer(a, b, "gw-offer"))
    assert ack == {"ok": True, "signalId": "gw-offer"}
    assert (await bob.wait_signal("rtc:offer", "gw-offer"))["from"] == a
    ack = await bob.call("rtc:answer", answer(b, a, "gw-answer"))
    assert ack == {"ok": True, "signalId": "gw-answer"}
    assert (await alice.wait_signal("rtc:answer", "gw-answer"))["from"] == b
    ack = await alice.call("rtc:candidate", candidate(a, b, "gw-cand"))
    assert ack == {"ok": True, "signalId": "gw-cand"}
    got = await bob.wait_signal("rtc:candidate", "gw-cand")
    assert got["from"] == a and got["convId"] == conv_id(a, b)
    await alice.close()
    await bob.close()

    def websockets_logged() -> bool:
        used = {
            (e["remote"], e["upstream"])
            for e in gateway.access_entries()
            if e["path"] == "/socket.io/" and e["status"] == 101
        }
        return {(addr_a, up_a), (addr_b, up_b)} <= used

    wait_for(websockets_logged, 10, what="both websocket sessions in the access log")

    # Node's socket.io-client v4: websocket only, and the default transports (polling, upgrade).
    runs = []
    for transports in ("websocket", "default"):
        wa, wb = new_wallet(), new_wallet()
        stack.add_contacts(wa, wb)
        env = {
            "URL": gateway.url,
            "TOKEN_A": make_token(wa),
            "TOKEN_B": make_token(wb),
            "WALLET_A": wa,
            "WALLET_B": wb,
            "TRANSPORTS": transports,
            "ADDR_A": addr_a,
            "ADDR_B": addr_b,
        }
        runs.append((transports, wa, wb, run_node(env)))
    results = await asyncio.gather(*(run for *_, run in runs))
    for (transports, wa, wb, _), result in zip(runs, results, strict=True):
        convid = conv_id(wa, wb)
        assert result["offerAck"]["ok"] is True, result
        assert result["answerAck"]["ok"] is True, result
        assert result["candidateAck"]["ok"] is True, result
        assert result["offer"]["from"] == wa and result["offer"]["to"] == wb
        assert result["offer"]["convId"] == convid
        assert result["offer"]["sdp"]["type"] == "offer"
        assert result["answer"]["from"] == wb and result["answer"]["sdp"]["type"] == "answer"
        assert result["candidate"]["from"] == wa
        assert result["candidate"]["candidate"]["sdpMLineIndex"] == 0
        assert result["rtcError"]["error"] == "invalid_payload"
        assert result["rtcError"]["event"] == "rtc:offer"
        assert result["rtcError"]["signalId"].startswith("bad-")
        # The default transports start with polling (seen in the access log below) and upgrade.
        assert result["transportsAfter"] == ["websocket", "websocket"], result
        if transports == "websocket":
            assert result["transports"] == ["websocket", "websocket"], result

    polling = [
        (e["remote"], e["upstream"])
        for e in gateway.access_entries()
        if e["path"] == "/socket.io/" and e["status"] == 200
    ]
    # Both Node clients of the default run polled, and every polling request of a client reached
    # that client's instance (session affinity), so the two sessions were on different instances.
    assert {(addr_a, up_a), (addr_b, up_b)} <= set(polling), polling
    assert set(polling) <= {(addr_a, up_a), (addr_b, up_b)}, polling


# -- 3. error codes, in the contract's order ---------------------------------------------------


async def test_invalid_payloads_are_refused_and_nothing_is_forwarded(
    stack: Stack, peers: Peers
) -> None:
    url = stack.signals[0].url
    a, b, c = new_wallet(), new_wallet(), new_wallet()
    stack.add_contacts(a, b)
    alice = await peers.connect(url, a)
    bob = await peers.connect(stack.signals[1].url, b)

    def with_(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
        return {**body, **changes}

    good_offer = offer(a, b, "bad")
    good_cand = candidate(a, b, "bad")
    no_sdp = {k: v for k, v in good_offer.items() if k != "sdp"}
    no_to = {k: v for k, v in good_offer.items() if k != "to"}
    no_conv = {k: v for k, v in good_offer.items() if k != "convId"}
    cases: list[tuple[str, Any, str | None]] = [
        ("rtc:offer", no_sdp, "bad"),
        ("rtc:offer", no_to, "bad"),
        ("rtc:offer", no_conv, "bad"),
        ("rtc:offer", with_(good_offer, sdp={"type": "offer"}), "bad"),
        ("rtc:offer", with_(good_offer, sdp={"type": "answer", "sdp": SDP_OFFER}), "bad"),
        ("rtc:offer", with_(good_offer, sdp={"type": "pranswer", "sdp": SDP_OFFER}), "bad"),
        ("rtc:answer", with_(good_offer), "bad"),  # sdp.type 'offer' on rtc:answer
        ("rtc:offer", with_(good_offer, sdp="v=0"), "bad"),
        ("rtc:offer", with_(good_offer, sdp={"type": "offer", "sdp": 42}), "bad"),
        # convId not the canonical pair of sender and `to`
        ("rtc:offer", with_(good_offer, convId=f"{max(a, b)}:{min(a, b)}"), "bad"),
        ("rtc:offer", with_(good_offer, convId=conv_id(a, b).upper()), "bad"),
        ("rtc:offer", with_(good_offer, convId=conv_id(a, c)), "bad"),
        ("rtc:offer", with_(good_offer, convId=f"{a}:{b}:{c}"), "bad"),
        ("rtc:offer", with_(good_offer, convId=42), "bad"),
        # `to` is the sender
        ("rtc:offer", with_(good_offer, to=a, convId=f"{a}:{a}"), "bad"),
        (
            "rtc:offer",
            with_(good_offer, to=a.upper().replace("0X", "0x"), convId=f"{a}:{a}"),
            "bad",
        ),
        ("rtc:offer", with_(good_offer, to="not:a wallet"), "bad"),
        ("rtc:offer", with_(good_offer, to=123), "bad"),
        ("rtc:offer", with_(good_offer, to=""), "bad"),
        # SDP over SIGNAL_MAX_SDP_BYTES
        ("rtc:offer", offer(a, b, "bad", "x" * (MAX_SDP + 1)), "bad"),
        (
            "rtc:answer",
            with_(answer(a, b, "bad"), sdp={"type": "answer", "sdp": "y" * (MAX_SDP + 1)}),
            "bad",
        ),
        # candidates
        ("rtc:candidate", candidate(a, b, "bad", "c" * (MAX_CANDIDATE + 1)), "bad"),
        ("rtc:candidate", candidate(a, b, "bad", "é" * (MAX_CANDIDATE // 2 + 1)), "bad"),
        ("rtc:candidate", with_(good_cand, candidate={"sdpMid": "0"}), "bad"),
        ("rtc:candidate", with_(good_cand, candidate="candidate:1"), "bad"),
        ("rtc:candidate", candidate(a, b, "bad", index="0"), "bad"),  # type: ignore[arg-type]
        ("rtc:candidate", candidate(a, b, "bad", index=True), "bad"),
        ("rtc:candidate", candidate(a, b, "bad", index=-1), "bad"),
        ("rtc:candidate", candidate(a, b, "bad", sdp_mid=0), "bad"),  # type: ignore[arg-type]
        ("rtc:candidate", with_(good_offer), "bad"),  # an offer body on rtc:candidate
        ("rtc:offer", with_(good_cand), "bad"),  # a candidate body on rtc:offer
        # signalId of the wrong type or too long: refused, and not echoed back
        ("rtc:offer", with_(good_offer, signalId=7), None),
        ("rtc:offer", with_(good_offer, signalId="s" * 129), None),
        ("rtc:offer", with_(good_offer, signalId=""), None),
        # payloads that are not objects
        ("rtc:offer", "an offer", None),
        ("rtc:answer", [good_offer], None),
        ("rtc:candidate", 12, None),
        ("rtc:offer", None, None),
        ("rtc:candidate", True, None),
        ("signal", "hello", None),
        ("signal", {"signal": {"sdp": "x"}}, None),  # legacy without `to`
        ("signal", {"to": a, "signal": {}}, None),  # legacy to the sender
        ("signal", {"to": ["x"], "signal": {}}, None),
        ("signal", {"to": b, "signal": "z" * (MAX_SDP + 1)}, None),
        # legacy data that is not JSON: NaN/Infinity (JS clients' JSON.parse would choke on
        # them when forwarded). Binary attachments close the socket (test_signal_abuse.py).
        ("signal", {"to": b, "signal": float("nan")}, None),
        ("signal", {"to": b, "signal": [float("inf")]}, None),
    ]
    for event, payload, expected_id in cases:
        ack = await alice.call(event, payload)
        assert ack == {"ok": False, "error": "invalid_payload", "signalId": expected_id}, (
            event,
            str(payload)[:200],
            ack,
        )

    # The limits themselves are allowed: an SDP of exactly SIGNAL_MAX_SDP_BYTES, a candidate of
    # exactly 2048 bytes. They are the first things bob ever receives.
    edge_offer = offer(a, b, sid("edge"), "x" * MAX_SDP)
    assert (await alice.call("rtc:offer", edge_offer))["ok"] is True
    edge_cand = candidate(a, b, sid("edge"), "é" * (MAX_CANDIDATE // 2))
    assert (await alice.call("rtc:candidate", edge_cand))["ok"] is True
    marker = await round_trip(alice, bob)
    forwarded = bob.signals()
    assert [d["signalId"] for _, d in forwarded] == [
        edge_offer["signalId"],
        edge_cand["signalId"],
        marker["signalId"],
    ]
    assert forwarded[0][1]["sdp"]["sdp"] == "x" * MAX_SDP
    assert metric_value(
        url, "rtc_signal_events_total", 'event="rtc:offer",outcome="invalid_payload"'
    ) >= sum(1 for e, *_ in cases if e == "rtc:offer")


async def test_rate_limited_per_socket_and_checked_first(
    signal_cluster: Cluster, redis_server: RedisServer, peers: Peers
) -> None:
    (s1,) = signal_cluster(1, SIGNAL_RATE_PER_SEC="5")
    a, b, c = new_wallet(), new_wallet(), new_wallet()
    add_contacts(redis_server, a, b)
    add_contacts(redis_server, c, b)
    alice = await peers.connect(s1.url, a)
    bob = await peers.connect(s1.url, b)
    carol = await peers.connect(s1.url, c)

    bodies = [candidate(a, b, f"burst-{i}") for i in range(15)]
    acks = await asyncio.gather(*(alice.call("rtc:candidate", body) for body in bodies))
    ok = [ack["signalId"] for ack in acks if ack["ok"]]
    limited = [ack for ack in acks if not ack["ok"]]
    # A burst of SIGNAL_RATE_PER_SEC, plus at most what refilled while the burst was handled.
    assert 5 <= len(ok) <= 7, acks
    assert len(limited) == 15 - len(ok)
    for ack in limited:
        assert ack["error"] == "rate_limited" and ack["signalId"].startswith("burst-")
    # Only the accepted signals reach bob (carol's round trip arrives after them).
    marker = await round_trip(carol, bob)
    forwarded = [d["signalId"] for _, d in bob.signals()]
    # Events of one socket are handled concurrently, so the burst may arrive in any order.
    assert sorted(forwarded[:-1]) == sorted(ok) and forwarded[-1] == marker["signalId"]

    # Rate limiting is per socket: alice's second socket is not limited.
    alice2 = await peers.connect(s1.url, a)
    assert (await alice2.call("rtc:candidate", candidate(a, b, sid())))["ok"] is True

    # Order: a rate-limited socket sending a bad payload gets rate_limited, not invalid_payload.
    dave = await peers.connect(s1.url)
    acks = await asyncio.gather(*(dave.call("rtc:offer", {"nonsense": i}) for i in range(15)))
    errors = [ack["error"] for ack in acks]
    assert 5 <= errors.count("invalid_payload") <= 7, errors
    assert errors.count("rate_limited") == 15 - errors.count("invalid_payload")
    # Without an ack callback the refusal comes as rtc:error.
    for _ in range(8):
        await dave.emit("rtc:offer", {"signalId": "no-ack"})
    got = await dave.wait_event("rtc:error", lambda d: d["error"] == "rate_limited")
    assert got == {"error": "rate_limited", "event": "rtc:offer", "signalId": "no-ack"}


async def test_forbidden_without_mutual_contact(stack: Stack, peers: Peers) -> None:
    url = stack.signals[0].url
    r, c = new_wallet(), new_wallet()
    stack.add_contacts(r, c)
    receiver = await peers.connect(stack.signals[1].url, r)
    carol = await peers.connect(url, c)

    stranger = await peers.connect(url)  # no contact at all
    one_way = await peers.connect(url)  # lists the receiver; the receiver does not list it
    stack.redis.client().sadd(f"rtc:contacts:{one_way.wallet}", r)
    listed = await peers.connect(url)  # the receiver lists it; it does not list the receiver
    stack.redis.client().sadd(f"rtc:contacts:{r}", listed.wallet)

    for sender in (stranger, one_way, listed):
        for event, body in (
            ("rtc:offer", offer(sender.wallet, r, "f-offer")),
            ("rtc:answer", answer(sender.wallet, r, "f-answer")),
            ("rtc:candidate", candidate(sender.wallet, r, "f-cand")),
        ):
            ack = await sender.call(event, body)
            assert ack == {"ok": False, "error": "forbidden", "signalId": body["signalId"]}
        legacy = await sender.call("signal", {"to": r, "signal": {"type": "offer"}})
        assert legacy == {"ok": False, "error": "forbidden", "signalId": None}

    # Order: a non-contact with a bad payload gets invalid_payload; a non-contact socket that
    # declared rtc: false gets forbidden (contacts are checked before RTC eligibility).
    bad = await stranger.call("rtc:offer", {**offer(stranger.wallet, r, "f-bad"), "convId": "x:y"})
    assert bad == {"ok": False, "error": "invalid_payload", "signalId": "f-bad"}
    no_rtc = await peers.connect(url, rtc=False)
    ack = await no_rtc.call("rtc:offer", offer(no_rtc.wallet, r, "f-nortc"))
    assert ack == {"ok": False, "error": "forbidden", "signalId": "f-nortc"}

    marker = await round_trip(carol, receiver)
    only_marker(receiver, marker)


async def test_sender_not_rtc_eligible(stack: Stack, peers: Peers) -> None:
    url = stack.signals[0].url
    r, c, a, d = new_wallet(), new_wallet(), new_wallet(), new_wallet()
    for wallet in (c, a, d):
        stack.add_contacts(wallet, r)
    stack.redis.client().sadd(RTC_DISABLED_KEY, d)
    receiver = await peers.connect(stack.signals[1].url, r)
    carol = await peers.connect(url, c)
    no_rtc = await peers.connect(url, a, rtc=False)  # the socket declared rtc: false
    disabled = await peers.connect(url, d)  # RTC disabled in the directory

    for sender in (no_rtc, disabled):
        for event, body in (
            ("rtc:offer", offer(sender.wallet, r, "n-offer")),
            ("rtc:answer", answer(sender.wallet, r, "n-answer")),
            ("rtc:candidate", candidate(sender.wallet, r, "n-cand")),
        ):
            ack = await sender.call(event, body)
            assert ack == {
                "ok": False,
                "error": "sender_not_rtc_eligible",
                "signalId": body["signalId"],
            }, (sender.wallet, event)

    # Order: sender eligibility is checked before the target's (offline contact here).
    offline = new_wallet()
    stack.add_contacts(a, offline)
    ack = await no_rtc.call("rtc:offer", offer(a, offline, "n-offline"))
    assert ack == {"ok": False, "error": "sender_not_rtc_eligible", "signalId": "n-offline"}

    # The same wallet on an RTC-capable socket may signal: the switch is per socket.
    a_rtc = await peers.connect(url, a)
    assert (await a_rtc.call("rtc:offer", offer(a, r, "n-ok")))["ok"] is True
    await receiver.wait_signal("rtc:offer", "n-ok")
    marker = await round_trip(carol, receiver)
    assert [data["signalId"] for _, data in receiver.signals()] == ["n-ok", marker["signalId"]]

    # Re-enabling RTC in the directory takes effect once the cache (FLAG_CACHE_SECONDS) expires.
    stack.redis.client().srem(RTC_DISABLED_KEY, d)
    accepted: list[Any] = []

    async def enabled_again() -> bool:
        ack = await disabled.call("rtc:candidate", candidate(d, r, sid("again")))
        if ack["ok"]:
            accepted.append(ack)
            return True
        assert ack["error"] == "sender_not_rtc_eligible"
        return False

    await wait_for_async(enabled_again, 5, what="RTC re-enabled for the sender")
    await receiver.wait_signal("rtc:candidate", accepted[0]["signalId"])


async def test_target_not_rtc_eligible(stack: Stack, peers: Peers) -> None:
    url = stack.signals[0].url
    a = new_wallet()
    offline, no_rtc, disabled = new_wallet(), new_wallet(), new_wallet()
    for target in (offline, no_rtc, disabled):
        stack.add_contacts(a, target)
    stack.redis.client().sadd(RTC_DISABLED_KEY, disabled)
    alice = await peers.connect(url, a)
    target_no_rtc = await peers.connect(stack.signals[1].url, no_rtc, rtc=False)
    target_disabled = await peers.connect(stack.signals[1].url, disabled)

    for target in (offline, no_rtc, disabled):
        for event, body in (
            ("rtc:offer", offer(a, target, "t-offer")),
            ("rtc:answer", answer(a, target, "t-answer")),
            ("rtc:candidate", candidate(a, target, "t-cand")),
        ):
            ack = await alice.call(event, body)
            assert ack == {
                "ok": False,
                "error": "target_not_rtc_eligible",
                "signalId": body["signalId"],
            }, (target, event)

    # A socket that opted out of RTC still gets the legacy event (its user room): the marker
    # proves nothing from the refused rtc:* signals was delivered before it. The user whose
    # RTC switch is off gets nothing, the legacy event included.
    marker = await round_trip(alice, target_no_rtc, "signal")
    only_marker(target_no_rtc, marker)
    refused = await alice.call("signal", {"to": disabled, "signal": {"x": 1}})
    assert refused == {"ok": False, "error": "target_not_rtc_eligible", "signalId": None}
    assert target_disabled.signals() == []

    # A target that comes online with an RTC-capable socket becomes eligible. The retry reuses
    # the refused signal's id: a refused signal does not count for dedup.
    target_online = await peers.connect(stack.signals[1].url, offline)
    assert await alice.call("rtc:offer", offer(a, offline, "t-offer")) == {
        "ok": True,
        "signalId": "t-offer",
    }
    assert (await target_online.wait_signal("rtc:offer", "t-offer"))["from"] == a


async def test_errors_without_ack_arrive_as_rtc_error(stack: Stack, peers: Peers) -> None:
    url = stack.signals[0].url
    a, b = new_wallet(), new_wallet()
    stack.add_contacts(a, b)
    alice = await peers.connect(url, a)
    bob = await peers.connect(stack.signals[1].url, b)
    stranger = new_wallet()

    await alice.emit("rtc:offer", {**offer(a, b, "e-bad"), "convId": "wrong"})
    await alice.emit("rtc:candidate", candidate(a, stranger, "e-forbidden"))
    await alice.emit("rtc:answer", "not an object")
    await alice.emit("signal", {"to": stranger, "signal": 1})
    await alice.emit("rtc:candidate", candidate(a, b, "e-ok"))  # accepted: no rtc:error

    def errors_in() -> list[Any]:
        return alice.received("rtc:error")

    async def four_errors() -> bool:
        return len(errors_in()) >= 4

    await wait_for_async(four_errors, 5, what="four rtc:error events")
    await bob.wait_signal("rtc:candidate", "e-ok")
    marker = await round_trip(bob, alice)  # anything else for alice would have come before this
    assert marker["from"] == b
    expected = [
        {"error": "invalid_payload", "event": "rtc:offer", "signalId": "e-bad"},
        {"error": "forbidden", "event": "rtc:candidate", "signalId": "e-forbidden"},
        {"error": "invalid_payload", "event": "rtc:answer", "signalId": None},
        {"error": "forbidden", "event": "signal", "signalId": None},
    ]
    # Exactly these four, in any order (a socket's events are handled concurrently).
    assert sorted(errors_in(), key=json.dumps) == sorted(expected, key=json.dumps)
    assert [d["signalId"] for _, d in bob.signals()] == ["e-ok"]


# -- 4. `from` cannot be spoofed ---------------------------------------------------------------


async def test_from_cannot_be_spoofed(stack: Stack, peers: Peers) -> None:
    a, b, c = new_wallet(), new_wallet(), new_wallet()
    stack.add_contacts(a, b)
    stack.add_contacts(c, b)
    alice = await peers.connect(stack.signals[0].url, a)
    bob = await peers.connect(stack.signals[1].url, b)

    body = {**offer(a, b, "spoof-offer"), "from": c, "admin": True}
    body["sdp"] = {**body["sdp"], "from": c}
    assert (await alice.call("rtc:offer", body)) == {"ok": True, "signalId": "spoof-offer"}
    got = await bob.wait_signal("rtc:offer", "spoof-offer")
    # The real sender, and only the contract's fields (nothing extra is forwarded).
    assert got == {
        "convId": conv_id(a, b),
        "to": b,
        "from": a,
        "sdp": {"type": "offer", "sdp": SDP_OFFER},
        "signalId": "spoof-offer",
    }
    cand = {**candidate(a, b, "spoof-cand"), "from": c}
    cand["candidate"]["from"] = c
    assert (await alice.call("rtc:candidate", cand))["ok"] is True
    got = await bob.wait_signal("rtc:candidate", "spoof-cand")
    assert got["from"] == a and "from" not in got["candidate"]

    legacy = await alice.call("signal", {"to": b, "from": c, "signal": {"spoof": True}})
    assert legacy == {"ok": True}
    got = await bob.wait_event("signal")
    assert got == {"from": a, "signal": {"spoof": True}}


# -- 5. signalId dedup across instances --------------------------------------------------------


async def test_signal_id_dedup_across_instances(stack: Stack, peers: Peers) -> None:
    s1, s2 = stack.signals
    a, b, c = new_wallet(), new_wallet(), new_wallet()
    stack.add_contacts(a, b)
    stack.add_contacts(c, b)
    alice1 = await peers.connect(s1.url, a)
    alice2 = await peers.connect(s2.url, a)  # the same wallet on the other instance
    bob = await peers.connect(s2.url, b)
    carol = await peers.connect(s1.url, c)
    signal_id = sid("dup")

    assert await alice1.call("rtc:offer", offer(a, b, signal_id)) == {
        "ok": True,
        "signalId": signal_id,
    }
    assert await alice2.call("rtc:offer", offer(a, b, signal_id)) == {
        "ok": True,
        "signalId": signal_id,
        "duplicate": True,
    }
    # The same id on another event type of the same sender is a repeat too.
    assert (await alice1.call("rtc:candidate", candidate(a, b, signal_id)))["duplicate"] is True
    # Dedup is per sender: carol may use the same signalId.
    assert await carol.call("rtc:offer", offer(c, b, signal_id)) == {
        "ok": True,
        "signalId": signal_id,
    }

    # Without a signalId the server assigns one, different every time (no accidental dedup).
    assigned = []
    for _ in range(2):
        ack = await alice2.call("rtc:candidate", candidate(a, b))
        assert ack["ok"] is True and "duplicate" not in ack, ack
        assert isinstance(ack["signalId"], str) and 0 < len(ack["signalId"]) <= 128
        assigned.append(ack["signalId"])
    assert assigned[0] != assigned[1]
    marker = await round_trip(carol, bob)

    forwarded = [(name, d["from"], d["signalId"]) for name, d in bob.signals()]
    assert forwarded == [
        ("rtc:offer", a, signal_id),
        ("rtc:offer", c, signal_id),
        ("rtc:candidate", a, assigned[0]),
        ("rtc:candidate", a, assigned[1]),
        ("rtc:candidate", c, marker["signalId"]),
    ]
    assert (
        metric_value(s2.url, "rtc_signal_events_total", 'event="rtc:offer",outcome="duplicate"')
        >= 1
    )


# -- 6. handshake auth ------------------------------------------------------------------------


def refusal_code(data: Any) -> str:
    """python-socketio hands the whole CONNECT_ERROR payload: {message, data: {error, ...}}."""
    assert isinstance(data, dict) and isinstance(data.get("data"), dict), data
    code = data["data"]["error"]
    assert data["message"] == code
    return str(code)


async def test_handshake_auth(stack: Stack, peers: Peers) -> None:
    url = stack.signals[0].url
    wallet = new_wallet()
    refused = {
        "garbage token": {"token": "not-a-jwt"},
        "wrong secret": {"token": make_token(wallet, secret="another-secret-0123456789abcdef0123")},
        "expired": {"token": make_token(wallet, expires_in=-60)},
        "no wallet claim": {"token": make_token(None)},
        "token not a string": {"token": 12345},
        "no credentials": {},
    }
    for case, auth in refused.items():
        data = await peers(wallet).refused(url, auth=auth)
        assert refusal_code(data) == "unauthorized", case
        assert "Traceback" not in json.dumps(data)
    # No auth object at all.
    data = await peers(wallet).refused(url, auth=None)
    assert refusal_code(data) == "unauthorized"

    # Node's socket.io-client sees the code as err.data.error.
    node = await run_node({"MODE": "refused", "URL": url, "TOKEN_A": "not-a-jwt"})
    assert node["connected"] is False and node["data"]["error"] == "unauthorized", node
    node = await run_node({"MODE": "refused", "URL": url, "TOKEN_A": make_token(wallet)})
    assert node == {"connected": True}

    # Cookie auth: the JWT cookie with an allowed Origin connects, and the identity is the cookie's.
    c = new_wallet()
    stack.add_contacts(wallet, c)
    carol = await peers.connect(stack.signals[1].url, c)
    cookie = {"Cookie": f"access_token={make_token(wallet)}"}
    browser = peers(wallet)
    await browser.connect(url, auth={}, headers={**cookie, "Origin": ORIGIN})
    assert (await browser.call("rtc:offer", offer(wallet, c, "cookie-offer")))["ok"] is True
    assert (await carol.wait_signal("rtc:offer", "cookie-offer"))["from"] == wallet

    # The cookie without an Origin header is refused: the websocket's CSRF defence.
    data = await peers(wallet).refused(url, auth={}, headers=cookie)
    assert refusal_code(data) == "csrf_failed"
    # ... and with an Origin that is not allowed.
    await peers(wallet).refused(url, auth={}, headers={**cookie, "Origin": "http://evil.example"})
    # An expired cookie is unauthorized even with the right Origin.
    expired = {"Cookie": f"access_token={make_token(wallet, expires_in=-5)}", "Origin": ORIGIN}
    data = await peers(wallet).refused(url, auth={}, headers=expired)
    assert refusal_code(data) == "unauthorized"


async def test_bearer_disabled_refuses_auth_token(signal_cluster: Cluster, peers: Peers) -> None:
    (s1,) = signal_cluster(1, ALLOW_BEARER_AUTH="false", ALLOWED_ORIGINS=ORIGIN)
    wallet = new_wallet()
    data = await peers(wallet).refused(s1.url)
    assert refusal_code(data) == "unauthorized"
    # Cookie auth is unaffected by ALLOW_BEARER_AUTH.
    cookie = {"Cookie": f"access_token={make_token(wallet)}", "Origin": ORIGIN}
    browser = peers(wallet)
    await browser.connect(s1.url, auth={}, headers=cookie)
    assert browser.sio.connected


# -- 7. the legacy `signal` event --------------------------------------------------------------


async def test_legacy_signal_forwarded_with_one_warning(stack: Stack, peers: Peers) -> None:
    s1, s2 = stack.signals
    a, b = new_wallet(), new_wallet()
    stack.add_contacts(a, b)
    alice = await peers.connect(s1.url, a)
    bob = await peers.connect(s2.url, b)
    before = metric_value(s1.url, "rtc_legacy_events_total", 'event="signal"')

    first = {"type": "offer", "sdp": SDP_OFFER}
    assert await alice.call("signal", {"to": b, "signal": first}) == {"ok": True}
    assert await bob.wait_event("signal") == {"from": a, "signal": first}
    assert await alice.wait_event("warning") == LEGACY_WARNING
    second = {"candidate": CANDIDATE}
    assert await alice.call("signal", {"to": "0x" + b[2:].upper(), "signal": second}) == {
        "ok": True
    }
    # Bob answers over the legacy event: it reaches alice after any second warning would have.
    back = {"type": "answer", "sdp": SDP_ANSWER}
    assert await bob.call("signal", {"to": a, "signal": back}) == {"ok": True}
    assert await alice.wait_event("signal") == {"from": b, "signal": back}
    assert alice.received("warning") == [LEGACY_WARNING]
    assert bob.received("warning") == [LEGACY_WARNING]
    assert bob.received("signal") == [{"from": a, "signal": first}, {"from": a, "signal": second}]
    assert metric_value(s1.url, "rtc_legacy_events_total", 'event="signal"') == before + 2
    # A new socket of the same wallet is warned again (once per socket).
    alice2 = await peers.connect(s2.url, a)
    assert await alice2.call("signal", {"to": b, "signal": None}) == {"ok": True}
    assert await alice2.wait_event("warning") == LEGACY_WARNING
    assert "deprecated event used" in s1.log_text()


async def test_legacy_signal_disabled(
    signal_cluster: Cluster, redis_server: RedisServer, peers: Peers
) -> None:
    (s1,) = signal_cluster(1, RTC_SIGNAL_LEGACY_ENABLED="false")
    a, b = new_wallet(), new_wallet()
    add_contacts(redis_server, a, b)
    alice = await peers.connect(s1.url, a)
    bob = await peers.connect(s1.url, b)
    ack = await alice.call("signal", {"to": b, "signal": {"type": "offer"}})
    assert ack == {"ok": False, "error": "legacy_disabled", "signalId": None}
    await alice.emit("signal", {"to": b, "signal": {"type": "offer"}})
    error = await alice.wait_event("rtc:error")
    assert error == {"error": "legacy_disabled", "event": "signal", "signalId": None}
    only_marker(bob, await round_trip(alice, bob))
    await round_trip(bob, alice)
    assert alice.received("warning") == []
    assert metric_value(s1.url, "rtc_legacy_events_total", 'event="signal"') == 0


# -- 8. hostile input --------------------------------------------------------------------------

FIELD_NAMES = [
    "convId", "to", "from", "sdp", "type", "candidate", "sdpMid", "sdpMLineIndex",
    "usernameFragment", "signalId", "signal", "__proto__", "constructor",
]  # fmt: skip

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(["offer", "answer", "pranswer", "rollback", "0", "", ":", "0x", "0X0A"]),
    st.integers(min_value=MAX_CANDIDATE - 2, max_value=MAX_CANDIDATE + 2).map(lambda n: "c" * n),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12))
jsonish = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=12,
)
# One huge ASCII string per payload, around the SDP limit: more would exceed engine.io's
# max_http_buffer_size, where the transport (by design) drops the connection.
huge = st.integers(min_value=MAX_SDP - 2, max_value=MAX_SDP + 4000).map(lambda n: "x" * n)


def nested(depth: int) -> Any:
    value: Any = "deep"
    for level in range(depth):
        value = {"sdp": value} if level % 2 else [value]
    return value


deep = st.integers(min_value=1, max_value=300).map(nested)


@st.composite
def hostile_payloads(draw: st.DrawFn, a: str, b: str) -> Any:
    """Anything at all, or a near-valid signal with some fields replaced by junk."""
    kind = draw(st.sampled_from(["anything", "deep", "near-valid", "near-valid", "huge", "legacy"]))
    if kind == "anything":
        return draw(jsonish)
    if kind == "deep":
        return draw(deep)
    junk = jsonish | deep
    targets = st.sampled_from([b, a, b.upper(), "0x" + b[2:].upper()])
    if kind == "legacy":  # the legacy event's shape: a real `to` and anything as `signal`
        to = draw(st.sampled_from([b, b, "0x" + b[2:].upper(), a, "0xdeadbeef"]))
        # Binary attachments close the socket instead (test_signal_abuse.py).
        return {"to": to, "signal": draw(junk)}
    sdp = st.fixed_dictionaries(
        {"type": st.sampled_from(["offer", "answer"]) | junk, "sdp": st.just(SDP_OFFER) | junk}
    )
    cand = st.fixed_dictionaries(
        {
            "candidate": st.just(CANDIDATE) | junk,
            "sdpMid": st.sampled_from(["0", None]) | junk,
            "sdpMLineIndex": st.sampled_from([0, None]) | junk,
        }
    )
    body: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {
                "convId": st.just(conv_id(a, b)) | junk,
                "to": targets | junk,
            },
            optional={
                "sdp": sdp | junk,
                "candidate": cand | junk,
                "signalId": st.text(min_size=1, max_size=130) | junk,
                "signal": junk,
                "from": junk,
            },
        )
    )
    if kind == "huge":
        where = draw(st.sampled_from(["sdp", "candidate", "signal", "signalId", "convId", "to"]))
        text = draw(huge)
        if where == "sdp":
            body["sdp"] = {"type": draw(st.sampled_from(["offer", "answer"])), "sdp": text}
        elif where == "candidate":
            body["candidate"] = {"candidate": text, "sdpMid": "0", "sdpMLineIndex": 0}
        else:
            body[where] = text
    return body


ALLOWED_REFUSALS = {
    "invalid_payload",
    "rate_limited",
    "forbidden",
    "sender_not_rtc_eligible",
    "target_not_rtc_eligible",
}
HOSTILE_A, HOSTILE_B = new_wallet(), new_wallet()


@pytest.fixture
async def hostile_pair(stack: Stack, peers: Peers) -> tuple[Peer, Peer]:
    stack.add_contacts(HOSTILE_A, HOSTILE_B)
    url = stack.signals[0].url
    return await peers.connect(url, HOSTILE_A), await peers.connect(url, HOSTILE_B)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=hostile_payloads(HOSTILE_A, HOSTILE_B))
async def test_hostile_payloads_never_break_the_handler(
    hostile_pair: tuple[Peer, Peer], payload: Any
) -> None:
    sender, _ = hostile_pair
    for event in SIGNAL_EVENTS:
        assert sender.sio.connected, "the server dropped the connection"
        ack = await sender.call(event, payload)
        assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), (event, ack)
        if ack["ok"]:
            assert set(ack) <= {"ok", "signalId", "duplicate"}, ack
        else:
            # Never `unavailable` here: the directory is up, so that would be a handler failure.
            assert ack["error"] in ALLOWED_REFUSALS, (event, ack)
            assert set(ack) == {"ok", "error", "signalId"}, ack


async def websocket_compression(url: str) -> tuple[int, str]:
    """Open an engine.io websocket offering permessage-deflate: the window bits the server agreed
    to (0: declined), and the first frame (engine.io's open packet: the socket works)."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{url}/socket.io/?EIO=4&transport=websocket",
            compress=15,
            timeout=aiohttp.ClientWSTimeout(ws_close=10),
        ) as ws,
    ):
        return ws.compress, await ws.receive_str(timeout=10)


async def test_websocket_compression_refused_unless_enabled(
    stack: Stack, signal_cluster: Cluster
) -> None:
    """socket.io-client offers permessage-deflate; signal-service declines it by default (a
    deflate context per socket costs about 90 KiB), directly and through the gateway."""
    for url in (stack.signals[0].url, stack.gateway.url):
        compress, first = await websocket_compression(url)
        assert compress == 0, url
        assert first.startswith('0{"sid":'), first
    (compressing,) = signal_cluster(1, SIGNAL_WS_COMPRESSION="true")
    compress, first = await websocket_compression(compressing.url)
    assert compress == 15
    assert first.startswith('0{"sid":'), first


async def test_undecodable_packet_leaves_the_socket_working(
    stack: Stack, hostile_pair: tuple[Peer, Peer]
) -> None:
    """JSON that python-socketio refuses to decode (an integer over 100 digits, a guard against
    quadratic int parsing): the packet is dropped, the socket keeps working."""
    sender, receiver = hostile_pair
    await sender.emit("rtc:offer", {**offer(HOSTILE_A, HOSTILE_B, "huge-int"), "to": 10**150})
    await sender.emit("signal", {"to": HOSTILE_B, "signal": -(10**200)})
    marker = await round_trip(sender, receiver)
    assert [
        d for name, d in receiver.signals() if name == "signal" or d.get("signalId") == "huge-int"
    ] == []
    assert marker["from"] == HOSTILE_A
    assert sender.sio.connected


async def test_after_hostile_input_the_instance_is_healthy(
    stack: Stack, hostile_pair: tuple[Peer, Peer]
) -> None:
    """Runs after the hostile tests (file order): the same instance, its logs, a valid signal."""
    instance = stack.signals[0]
    assert http_status(instance.url + "/healthz") == 200
    assert http_status(instance.url + "/readyz") == 200
    log = instance.log_text()
    assert "Traceback" not in log
    assert "signaling handler failed" not in log
    for event in SIGNAL_EVENTS:
        labels = f'event="{event}",outcome="unavailable"'
        assert metric_value(instance.url, "rtc_signal_events_total", labels) == 0, event
    sender, receiver = hostile_pair
    signal_id = sid("after")
    assert await sender.call("rtc:offer", offer(HOSTILE_A, HOSTILE_B, signal_id)) == {
        "ok": True,
        "signalId": signal_id,
    }
    assert (await receiver.wait_signal("rtc:offer", signal_id))["from"] == HOSTILE_A


def test_stack_logs_are_json_lines_without_tracebacks(stack: Stack) -> None:
    """Runs last: every line every signal instance wrote is one JSON object (no stack traces)."""
    for process in stack.signals:
        log = process.log_text()
        assert "signaling handler failed" not in log, process.name
        for line in log.splitlines():
            assert line.startswith("{") and isinstance(json.loads(line), dict), (
                f"{process.name} wrote a non-JSON log line: {line[:200]}"
            )


async def test_one_sockets_signals_keep_their_order(stack: Stack, peers: Peers) -> None:
    """An offer and the candidates sent right behind it (no waiting for acks, as browsers trickle
    them) reach the other instance in the order they were sent."""
    a, b = new_wallet(), new_wallet()
    stack.add_contacts(a, b)
    sender = await peers.connect(stack.signals[0].url, a)
    receiver = await peers.connect(stack.signals[1].url, b)
    ids = [sid("order") for _ in range(30)]
    await sender.emit("rtc:offer", offer(a, b, ids[0]))
    for signal_id in ids[1:]:
        await sender.emit("rtc:candidate", candidate(a, b, signal_id))
    await receiver.wait_signal("rtc:candidate", ids[-1])
    assert [data["signalId"] for _, data in receiver.signals()] == ids


# -- 9. hostile input on the other client events: relay:ack and the handshake's auth ----------

ack_ids = st.one_of(
    st.text(max_size=70),
    st.sampled_from(["0-1", "1-0", "9999999999999-0", "-", "+", "*", "$", "0-0", "1-x"]),
    leaves,
)
ack_payloads = st.one_of(
    jsonish,
    deep,
    st.fixed_dictionaries({"ids": st.lists(ack_ids, max_size=8) | jsonish | deep}),
    st.fixed_dictionaries({"ids": st.lists(st.just("1-0"), min_size=999, max_size=1002)}),
)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=ack_payloads)
async def test_hostile_relay_acks_never_break_the_handler(
    stack: Stack, hostile_pair: tuple[Peer, Peer], payload: Any
) -> None:
    """relay:ack answers {acked: n} (n = 0: nothing is in these queues) or invalid_payload."""
    sender, _ = hostile_pair
    assert sender.sio.connected, "the server dropped the connection"
    ack = await sender.call("relay:ack", payload)
    assert ack == {"acked": 0} or (
        isinstance(ack, dict) and ack.get("ok") is False and ack.get("error") == "invalid_payload"
    ), ack


# No binary values: a CONNECT packet cannot carry attachments (the client refuses to send one).
json_only = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=12,
)
handshake_auth = st.one_of(
    json_only,
    deep,
    st.fixed_dictionaries(
        {"token": json_only | st.text(max_size=300) | st.just("a.b.c")},
        optional={"rtc": json_only},
    ),
)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(auth=handshake_auth)
@example(auth=1.5)  # `0` + `1.5`: python-socketio reads packet id 1 and data `.5`
async def test_hostile_handshake_auth_is_refused_cleanly(
    stack: Stack, peers: Peers, auth: Any
) -> None:
    """Any `auth` without a valid token: a connect_error `unauthorized`, never a crash."""
    data = await peers().refused(stack.signals[0].url, auth=auth)
    assert refusal_code(data) == "unauthorized"


def test_instance_healthy_after_hostile_acks_and_handshakes(stack: Stack) -> None:
    instance = stack.signals[0]
    assert http_status(instance.url + "/readyz") == 200
    assert "Traceback" not in instance.log_text()
    assert "signaling handler failed" not in instance.log_text()
