"""The results table (terminal and docs/benchmarks.md), goals included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness import summary

Row = tuple[str, str, str, str, str]  # scenario, measure, value, ratio, goal
# The hand-written part of docs/benchmarks.md: profiles, changes made, what would move a goal.
FINDINGS = Path(__file__).with_name("findings.md")


def fmt(stat: dict[str, float], unit: str, digits: int = 0) -> str:
    if not stat or stat.get("n", 0) == 0:
        return "n/a"
    med, lo, hi = stat["median"], stat["min"], stat["max"]
    if stat.get("n", 1) == 1:
        return f"{med:,.{digits}f} {unit}"
    return f"{med:,.{digits}f} {unit} [{lo:,.{digits}f}-{hi:,.{digits}f}]"


def ratio(a: dict[str, float], b: dict[str, float]) -> float:
    try:
        return a["median"] / b["median"]
    except (KeyError, ZeroDivisionError):
        return float("nan")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    s = results["scenarios"]
    if "ice" in s:
        sat, fixed = s["ice"]["saturation"], s["ice"]["fixed_1000"]
        bare, nginx = sat["bare_aiohttp"]["rps"], sat["nginx_static"]["rps"]
        r = ratio(sat["ice"]["rps"], bare)
        out += [
            (
                "ICE",
                "nginx answering the JSON itself (machine ceiling)",
                fmt(nginx, "req/s"),
                "",
                "",
            ),
            ("ICE", "bare aiohttp handler behind the gateway", fmt(bare, "req/s"), "1.00", ""),
            (
                "ICE",
                "ice-service, EVENT_LOOP=asyncio (stdlib loop)",
                fmt(sat["ice_asyncio"]["rps"], "req/s"),
                f"{ratio(sat['ice_asyncio']['rps'], bare):.2f} of bare",
                "",
            ),
            (
                "ICE",
                "ice-service (uvloop)",
                fmt(sat["ice"]["rps"], "req/s"),
                f"{r:.2f} of bare, {ratio(sat['ice']['rps'], nginx):.3f} of nginx",
                f">= 0.50 of bare: {verdict(r >= 0.5)}",
            ),
        ]
        cpu = {
            name: summary(
                [
                    r["cpu_us_per_request"][proc]
                    for r in sat[name]["runs"]
                    if "cpu_us_per_request" in r
                ]
            )
            for name, proc in (("bare_aiohttp", "bare"), ("ice", "ice"))
        }
        if cpu["ice"]["n"]:
            out.append(
                (
                    "ICE",
                    "CPU per request at saturation: ice-service / bare handler process",
                    f"{fmt(cpu['ice'], 'us')} / {fmt(cpu['bare_aiohttp'], 'us')}",
                    f"{ratio(cpu['ice'], cpu['bare_aiohttp']):.1f}x",
                    "",
                )
            )
        for name, label in (
            ("bare_aiohttp", "bare aiohttp"),
            ("ice_asyncio", "ice-service asyncio"),
            ("ice", "ice-service"),
        ):
            p99 = fixed[name]["p99_ms"]
            goal = f"p99 <= 10 ms: {verdict(p99['median'] <= 10)}" if name == "ice" else ""
            out.append(
                (
                    "ICE",
                    f"{label} at 1,000 req/s p50 / p99",
                    f"{fmt(fixed[name]['p50_ms'], 'ms', 2)} / {fmt(p99, 'ms', 2)}",
                    "",
                    goal,
                )
            )
        out += peer_rows("ICE", s["ice"], "ice", "synapse_turn", "ice-service", "req/s")
    if "signaling" in s:
        sat = s["signaling"]["saturation"]
        names: tuple[tuple[str, str], ...] = (
            ("node_socketio", "Node socket.io + redis-adapter"),
            ("node_socketio_sharded", "Node socket.io + sharded redis-adapter (dynamic)"),
            ("bare_python_socketio", "bare python-socketio + AsyncRedisManager"),
            ("signal_service", "signal-service"),
        )
        if "signal_service_before" in sat:
            names += (("signal_service_before", "signal-service before (BENCH_BASELINE_SRC)"),)
        names = tuple((name, label) for name, label in names if name in sat)
        for rate in (200, 1000):
            lat = s["signaling"].get(f"latency_{rate}")
            if lat is None:
                continue
            for name, label in names:
                goal, rr = "", ""
                late = lat[name].get("undelivered", lat[name].get("lost"))  # older files: "lost"
                if name.startswith("signal_service"):
                    r = ratio(lat[name]["p99_ms"], lat["bare_python_socketio"]["p99_ms"])
                    rr = f"{r:.2f}x bare p99"
                    if rate == 1000 and name == "signal_service":
                        worst = max(run["p99_ms"] for run in lat[name]["runs"])
                        bare = lat["bare_python_socketio"]["p99_ms"]["max"]
                        goal = f"<= 1.2x bare in every repeat: {verdict(worst <= 1.2 * bare)}"
                out.append(
                    (
                        "Signaling",
                        f"{label} at {rate:,} signals/s p50 / p99",
                        f"{fmt(lat[name]['p50_ms'], 'ms', 2)} / {fmt(lat[name]['p99_ms'], 'ms', 2)}"
                        f" ({late} undelivered after 5 s)",
                        rr,
                        goal,
                    )
                )
        for name, label in names:
            goal, rr = "", ""
            if name.startswith("signal_service"):
                r = ratio(sat[name]["per_second"], sat["node_socketio"]["per_second"])
                rb = ratio(sat[name]["per_second"], sat["bare_python_socketio"]["per_second"])
                rr = f"{r:.2f} of Node, {rb:.2f} of bare"
                if name == "signal_service":
                    goal = f">= 1.5x bare per core: {verdict(rb >= 1.5)}"
            out.append(
                (
                    "Signaling",
                    f"{label} sustained",
                    fmt(sat[name]["per_second"], "signals/s"),
                    rr,
                    goal,
                )
            )
    if "scaleout" in s:
        out += scaleout_rows(s["scaleout"])
    if "connections" in s:
        c = s["connections"]
        if "signal_service" not in c:  # results from before the baselines were measured too
            c = {"signal_service": c, "fanout": c["fanout"]}
        for name, label in (
            ("node_socketio", "Node socket.io"),
            ("bare_python_socketio", "bare python-socketio"),
            ("bare_python_socketio_deflate", "bare python-socketio, deflate on (its default)"),
            ("signal_service", "signal-service"),
        ):
            r = c.get(name)
            if r is None:
                continue
            per = r["rss_per_connection_kib"]
            goal = ""
            if name == "signal_service":
                ok = r["connected"] >= 20000 and per <= 30
                goal = f"20,000 at <= 30 KiB: {verdict(ok)}"
            out += [
                (
                    "Connections",
                    f"{label}: {r['connected']:,} idle websockets ({r['failed']} failed)",
                    f"{per:.1f} KiB each (RSS {r['rss_before_mib']:.0f} -> "
                    f"{r['rss_after_mib']:.0f} MiB)",
                    "",
                    goal,
                ),
                (
                    "Connections",
                    f"{label}: connect rate",
                    f"{r['connect_per_second']:,.0f} /s",
                    "",
                    "",
                ),
            ]
        for key, label in (("fanout", "signal-service"), ("fanout_before", "before")):
            fan = c.get(key)
            if fan is None:
                continue
            fan_value = (
                "FAILED: " + fan["error"][:100]
                if "error" in fan
                else fmt(fan["fanout_ms"], "ms", 1) + ("" if fan["all_notified"] else " (NOT all)")
            )
            out.append(
                (
                    "Connections",
                    f"{label} presence fan-out to {fan['contacts']} online contacts",
                    fan_value,
                    "",
                    "",
                )
            )
    if "relay" in s:
        for fsync, r in s["relay"].items():
            sat, fixed = r["saturation"], r["fixed_1000"]
            rel = ratio(sat["relay"]["rps"], sat["bare_aiohttp"]["rps"])
            goal = f">= 0.60 of bare: {verdict(rel >= 0.6)}" if fsync == "everysec" else ""
            out += [
                (
                    f"Relay ({fsync})",
                    "redis-benchmark XADD (Redis ceiling)",
                    fmt(r["redis_benchmark_xadd"], "/s"),
                    "",
                    "",
                ),
                (
                    f"Relay ({fsync})",
                    "bare aiohttp XADD behind the gateway",
                    fmt(sat["bare_aiohttp"]["rps"], "msg/s"),
                    "1.00",
                    "",
                ),
                (
                    f"Relay ({fsync})",
                    "relay-service enqueue",
                    fmt(sat["relay"]["rps"], "msg/s"),
                    f"{rel:.2f} of bare, "
                    f"{ratio(sat['relay']['rps'], r['redis_benchmark_xadd']):.3f} of redis-bench",
                    goal,
                ),
            ]
            for name, label in (("bare_aiohttp", "bare XADD"), ("relay", "relay-service enqueue")):
                p99 = fixed[name]["p99_ms"]
                g = (
                    f"p99 <= 15 ms: {verdict(p99['median'] <= 15)}"
                    if name == "relay" and fsync == "everysec"
                    else ""
                )
                out.append(
                    (
                        f"Relay ({fsync})",
                        f"{label} at 1,000 msg/s p50 / p99",
                        f"{fmt(fixed[name]['p50_ms'], 'ms', 2)} / {fmt(p99, 'ms', 2)}",
                        "",
                        g,
                    )
                )
            out += peer_rows(
                f"Relay ({fsync})", r, "relay", "synapse_send", "relay-service", "msg/s"
            )
            out.append(
                (
                    f"Relay ({fsync})",
                    "pull+ack (100 per pull)",
                    fmt(r["pull_ack"]["per_second"], "msg/s"),
                    "",
                    "",
                )
            )
    return out


PEER_LABELS = {
    "synapse_turn": "GET /voip/turnServer",
    "synapse_send": "PUT /rooms/{room}/send/m.room.message/{txnId}",
}


def peer_rows(
    scenario: str, result: dict[str, Any], ours: str, theirs: str, ours_label: str, unit: str
) -> list[Row]:
    """The peer (Synapse) measured in the same run: 2xx answers per second at saturation and
    latency at 1,000/s, each with ours over theirs; or why it was skipped."""
    peer = result.get("peer")
    if not peer:
        return []  # results from before the peers
    sat, fixed = result["saturation"], result["fixed_1000"]
    name = f"peer: Synapse {peer.get('synapse_version', '?')} ({peer.get('synapse_db', '?')})"
    if theirs not in sat:
        reason = str(peer.get("skipped", "not measured")).splitlines()[0][:100]
        return [(scenario, f"{name} {PEER_LABELS[theirs]}", f"skipped: {reason}", "", "")]

    def ok(name: str) -> dict[str, float]:
        return dict(sat[name].get("ok_rps", sat[name]["rps"]))

    def failed(name: str) -> str:
        runs = fixed[name]["runs"]
        bad, sent = fixed[name]["non_2xx"], sum(r["sent"] for r in runs)
        return f" ({bad:,} of {sent:,} failed or timed out)" if bad else ""

    rows_: list[Row] = [
        (
            scenario,
            f"{name} {PEER_LABELS[theirs]}, 2xx answers",
            fmt(ok(theirs), unit)
            + (f" ({sat[theirs]['non_2xx']} non-2xx)" if sat[theirs]["non_2xx"] else ""),
            f"{ours_label} {ratio(ok(ours), ok(theirs)):.2f}x Synapse",
            "",
        )
    ]
    cpu = result.get("peer_ratios", {}).get(f"{ours}/{theirs}", {}).get("cpu_us_per_request")
    if cpu and cpu.get(theirs, {}).get("n"):
        rows_.append(
            (
                scenario,
                f"CPU per request at saturation: {ours_label} / Synapse process",
                f"{fmt(cpu[ours], 'us')} / {fmt(cpu[theirs], 'us')}",
                f"{ratio(cpu[ours], cpu[theirs]):.2f}x",
                "",
            )
        )
    rows_.append(
        (
            scenario,
            f"Synapse at 1,000 {unit} p50 / p99 (2xx only)",
            f"{fmt(fixed[theirs]['p50_ms'], 'ms', 2)} / {fmt(fixed[theirs]['p99_ms'], 'ms', 2)}"
            + failed(theirs),
            f"{ours_label} p99 {ratio(fixed[ours]['p99_ms'], fixed[theirs]['p99_ms']):.3f}x"
            " Synapse's" + (f"; {ours_label}{failed(ours)}" if failed(ours) else ""),
            "",
        )
    )
    return rows_


def failed_rows(results: dict[str, Any]) -> list[Row]:
    return [
        (name, "FAILED (no figures)", reason.splitlines()[0][:120], "", "")
        for name, reason in results.get("failed", {}).items()
    ]


def scaleout_rows(result: dict[str, Any]) -> list[Row]:
    """CPU per cross-instance signal of each instance's role, per cluster size and variant."""
    out: list[Row] = []
    for variant, by_size in result["variants"].items():
        label = "signal-service" if variant == "current" else f"signal-service {variant}"
        cluster: dict[str, dict[str, float]] = {}
        for size, runs in sorted(by_size.items(), key=lambda kv: int(kv[0])):
            bystanders = [
                sum(r["bystanders_us"]) / len(r["bystanders_us"])
                for r in runs
                if r["bystanders_us"]
            ]
            receiver = summary([r["receiver_us"] for r in runs])
            cluster[size] = summary([r["cluster_us"] for r in runs])
            rr, goal, measured = (
                "",
                "",
                f"sender {fmt(summary([r['sender_us'] for r in runs]), 'us')}",
            )
            measured += f" / receiver {fmt(receiver, 'us')}"
            if bystanders:
                by = summary(bystanders)
                r = ratio(by, receiver)
                measured += f" / bystander {fmt(by, 'us')}"
                rr = f"bystander {r:.2f} of receiver"
                if variant == "current":
                    goal = f"bystander <= 0.05 of receiver: {verdict(r <= 0.05)}"
            redis = summary([r["redis_us"] for r in runs])
            measured += f" / cluster {fmt(cluster[size], 'us')} / Redis {fmt(redis, 'us')}"
            out.append(
                (
                    "Scale-out",
                    f"{label}, {size} instances, {result['rate']} signals/s: CPU per signal",
                    measured,
                    rr,
                    goal,
                )
            )
        sizes = sorted(cluster, key=int)
        if len(sizes) >= 2:
            spread = [ratio(cluster[n], cluster[sizes[0]]) for n in sizes]
            flat = max(abs(x - 1) for x in spread) <= 0.15
            out.append(
                (
                    "Scale-out",
                    f"{label}: cluster CPU per signal at {', '.join(sizes)} instances",
                    " / ".join(f"{x:.2f}" for x in spread),
                    f"of {sizes[0]} instances",
                    f"flat within 15 %: {verdict(flat)}" if variant == "current" else "",
                )
            )
    return out


def render_table(results: dict[str, Any]) -> str:
    table = rows(results) + failed_rows(results)
    widths = [max(len(row[i]) for row in table) for i in range(5)] if table else [0] * 5
    header = ("scenario", "measure", "median [min-max]", "ratio", "goal")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def render_markdown(results: dict[str, Any], json_path: Path) -> str:
    m = results["machine"]
    table = "\n".join(f"| {' | '.join(row)} |" for row in rows(results) + failed_rows(results))
    return TEMPLATE.format(
        mode=results["mode"],
        started=results["started"],
        seconds=results["seconds"],
        cpu=m["cpu"],
        cpus=m["cpus"],
        memory=m["memory_gib"],
        kernel=m["kernel"],
        python=m["python"],
        node=m["node"],
        nginx=m["nginx"],
        redis=m["redis"],
        server_cpus=m["server_cpus"],
        load_cpus=m["load_cpus"],
        rev=m["git_rev"],
        table=table,
        json_path=json_path,
        findings=FINDINGS.read_text(),
    )


TEMPLATE = """# Benchmarks

Generated by `python -m bench` ({mode} mode; `make bench-full`) on {started}, git {rev}, in
{seconds} s. Raw figures, every repeat included: `{json_path}`. Every figure is the median of
the repeats with [min-max]; every baseline was measured in the same run, interleaved with its
subject.

| scenario | measure | median [min-max] | ratio | goal |
|---|---|---|---|---|
{table}

## Machine

{cpu}, {cpus} CPUs, {memory} GiB, Linux {kernel}; Python {python}, Node {node}, {nginx},
{redis}. Servers (nginx, Redis, the services and the baselines) are pinned to CPU {server_cpus}
and the load generators to CPU {load_cpus} with `taskset`, so a generator never takes the
servers' core: every server-side figure is **one core's** worth. Each generator's own CPU use is
in the JSON (`generator_cpu_percent`) to show it was not the bottleneck.

## How to reproduce

```sh
make bootstrap          # the venv (what `make run` sets up)
make bench              # quick mode: 3 repeats of short runs, a few minutes, prints the table
make bench-full         # full mode: 3 repeats of 8 s runs, 20,000 sockets; writes this page
.venv/bin/python -m bench --mode quick --only ice,relay   # a subset
```

`make bench` installs wrk (apt) and the Node packages of `bench/node` when they are missing.

## What each scenario measures

- **ICE**: `GET /api/v1/rtc/ice` through the gateway (coturn provider, rate limit raised so it is
  not what is measured, per-address gateway limits off). Saturation with wrk (1 thread, 64
  connections); latency at a fixed 1,000 req/s with `bench/loadgen.py`, an open-loop generator
  that sends on schedule and counts each latency from the request's scheduled time (no
  coordinated omission). Baselines: a bare aiohttp handler returning the same JSON (same size)
  behind the same gateway, and nginx returning it itself. `ice-service, stdlib asyncio loop` is
  the same service with `EVENT_LOOP=asyncio` (what uvloop changes).
- **Signaling**: `rtc:offer` with a ~1.5 KB SDP from user A on instance 1 to user B on instance
  2 (two instances, one Redis, so every signal crosses pub/sub), socket.io-client over websocket
  (`bench/node/signal_load.mjs`). Latency at fixed 200 and 1,000 signals/s from the scheduled
  send time to delivery (200/s is below every server's saturation on one core here, so it
  compares servers rather than queues; "undelivered" counts signals not delivered within 5 s
  after the last send, i.e. still queued); sustained rate with 4 sender/receiver pairs keeping
  16 signals in flight each. Baselines: bare python-socketio + AsyncRedisManager room emit
  (`bench/bare_sio.py`) and Node socket.io + @socket.io/redis-adapter (`bench/node/server.mjs`),
  same protocol and payload. Every server declines websocket compression (permessage-deflate),
  Node's default and signal-service's (`SIGNAL_WS_COMPRESSION`); python-socketio accepts it by
  default, so the bare baseline declines it as signal-service does.
- **Scale-out** (`--only scaleout`): CPU per cross-instance offer of the sender's, the receiver's
  and bystander instances, and of the cluster, at 2, 3, 4 and 6 instances (see its section).
- **Connections**: N idle websocket clients on one instance of each server (signal-service
  with real JWT handshakes and presence, bare python-socketio without and with deflate, Node
  socket.io): RSS growth per
  connection, connect rate with 64 handshakes in flight; then, on signal-service, a wallet with
  500 online mutual contacts comes online: time until every contact got `presence:update`.
- **Relay**: `POST /api/v1/relay/enqueue` (unique messageIds, 2,000 recipients) through the
  gateway with Redis AOF `appendfsync everysec` and `always`; baselines: a bare aiohttp handler
  doing one XADD behind the same gateway, and `redis-benchmark` running XADD (Redis's ceiling).
  Pull+ack: one recipient drains its queue 100 messages per pull, acking each batch.
- **Peer** (ICE and Relay; `--no-peers` or `BENCH_PEERS=0` leaves it out): Matrix Synapse
  (`bench/synapse.py`: a pinned release from PyPI in a venv of its own, SQLite unless
  `BENCH_SYNAPSE_DB=postgres`; version and database in the rows and the JSON's `peer`), behind
  the same gateway, pinned to the servers' CPU, in the same round robin, rate limits raised as
  ours are. ICE: `GET /_matrix/client/v3/voip/turnServer`, the same coturn REST credential
  (secret, URIs, lifetime). Relay:
  `PUT /_matrix/client/v3/rooms/{{room}}/send/m.room.message/{{txnId}}`, a unique txnId per
  request, the same 200-byte payload, one sender in a room of its own (a fresh room per run,
  as Redis is flushed per run). Only 2xx answers count, ours as the peer's: throughput in 2xx
  answers per second, latency percentiles over the 2xx answers, the others counted as failed.
  Ratios are ours over Synapse's. Synapse runs only during its own runs (paused with SIGSTOP
  otherwise, once it has worked off what its run left queued).

{findings}"""
