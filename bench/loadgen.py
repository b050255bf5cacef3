"""Open-loop HTTP load at a fixed rate, latency measured from each request's scheduled time.

Run as its own process (pinned away from the servers): `python -m bench.loadgen '<json spec>'`.
Requests go out on schedule whether or not earlier ones answered, and each latency counts from
when the request was due, so a stall shows up in the percentiles (no coordinated omission).
Prints one JSON line: counts by status, percentiles, the achieved rate and the generator's CPU.

Spec: url (a `{txn}` in it becomes an id unique per request, for PUT-with-idempotency-key APIs
such as Matrix's /send/{txnId}), rate, duration, method, headers, body (a kind: relay, matrix),
connections, ok_only (latencies of 2xx answers only; the others are counted in `statuses`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import uvloop


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {
            "p50_ms": float("nan"),
            "p90_ms": float("nan"),
            "p99_ms": float("nan"),
            "max_ms": float("nan"),
        }
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1] * 1000,
    }


def body_for(kind: str | None, index: int, run: str) -> bytes | None:
    if kind is None:
        return None
    if kind == "relay":
        # Recipients spread so no single queue reaches its cap; messageIds unique per run.
        to = f"bench-r{index % 2000}"
        message = {
            "to": to,
            "convId": ":".join(sorted(["bench-sender", to])),
            "messageId": f"{run}-{index}",
            "payload": "x" * 200,
        }
        return json.dumps(message).encode()
    if kind == "matrix":
        # The Synapse peer's m.room.message: the same 200-byte payload as the relay's.
        return json.dumps({"msgtype": "m.text", "body": "x" * 200}).encode()
    raise ValueError(f"unknown body kind {kind}")


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    rate, duration = float(spec["rate"]), float(spec["duration"])
    method, url = spec.get("method", "GET"), spec["url"]
    headers = spec.get("headers", {})
    total = int(rate * duration)
    ok_only = bool(spec.get("ok_only", False))
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    run_id = uuid.uuid4().hex[:12]
    clock = time.perf_counter  # uvloop's clock() has only millisecond resolution
    connector = aiohttp.TCPConnector(limit=spec.get("connections", 256))
    timeout = aiohttp.ClientTimeout(total=10)
    pending: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(index: int, due: float) -> None:
            try:
                async with session.request(
                    method,
                    url.replace("{txn}", f"{run_id}-{index}"),
                    headers=headers,
                    data=body_for(spec.get("body"), index, run_id),
                ) as response:
                    await response.read()
                    statuses[str(response.status)] += 1
                    ok = 200 <= response.status < 300
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1
                return
            if ok or not ok_only:
                latencies.append(clock() - due)

        # Warm the connection pool outside the measurement.
        for index in range(min(32, total)):
            await one(-index - 1, clock())
        latencies.clear()
        statuses.clear()
        cpu0, start = time.process_time(), clock()
        index = 0
        while index < total:
            now = clock()
            while index < total and start + index / rate <= now:
                task = asyncio.create_task(one(index, start + index / rate))
                pending.add(task)
                task.add_done_callback(pending.discard)
                index += 1
            await asyncio.sleep(max(0.0, start + index / rate - clock()))
        sent_in = clock() - start
        if pending:
            await asyncio.wait(pending)
        cpu = time.process_time() - cpu0
        elapsed = clock() - start
    ok = sum(n for status, n in statuses.items() if status.startswith("2"))
    return {
        "target_rate": rate,
        "sent": total,
        "ok": ok,
        "statuses": dict(statuses),
        "achieved_rate": total / sent_in if sent_in else 0.0,
        "generator_cpu_percent": 100 * cpu / elapsed if elapsed else 0.0,
        **percentiles(latencies),
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(uvloop.run(run(spec))))


if __name__ == "__main__":
    main()
