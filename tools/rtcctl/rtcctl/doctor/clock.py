"""coturn's clock against this host's: allocations with credentials that expire around now."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .rendering import Result, Status
from .turnclient import Refused, allocate

# Expiry offsets (seconds from now) of the clock-skew probes. coturn accepts a credential whose
# expiry is not in its own past, so the boundary between refused and accepted brackets the skew.
SKEW_PROBES = (-30, -10, -3, 3, 10, 30)
SKEW_OK = 3  # |skew| proven within this: pass
SKEW_FAIL = 30  # |skew| proven beyond this: fail (in between: a warning)


def skew_verdict(accepted: dict[int, bool]) -> tuple[Status, str, str | None]:
    """From which expiry offsets coturn accepted, the bracket of (coturn clock - this clock)."""
    refused = [o for o, ok in accepted.items() if not ok]
    taken = [o for o, ok in accepted.items() if ok]
    fix = (
        "synchronise the clocks of this host, ice-service's hosts and the TURN server with NTP"
        " (chrony or systemd-timesyncd); coturn checks a credential's expiry against its own"
        " clock with no tolerance"
    )
    if refused and taken and max(refused) > min(taken):
        return (
            "WARN",
            "inconsistent answers (accepted expiry now"
            f"{min(taken):+d} s but refused now{max(refused):+d} s)",
            "run the doctor again; if it persists several TURN servers may share this address",
        )
    low = max(refused) if refused else None  # skew > low
    high = min(taken) if taken else None  # skew <= high
    if low is None:
        assert high is not None
        return (
            "FAIL",
            f"coturn accepted a credential that expired {-high} s ago: its clock is more than"
            f" {-high} s behind this host",
            fix,
        )
    if high is None:
        return (
            "FAIL",
            f"coturn refused a credential valid for {low} more seconds: its clock is more than"
            f" {low} s ahead of this host",
            fix,
        )
    bracket = f"(coturn accepted expiry now{high:+d} s, refused now{low:+d} s)"
    if low >= -SKEW_OK and high <= SKEW_OK:
        return "PASS", f"clock skew within ±{SKEW_OK} s {bracket}", None
    if high <= 0:
        size = f"{-high} to {-low} s behind"
        worst = -low
    else:
        size = f"{low} to {high} s ahead of"
        worst = high
    status: Status = "FAIL" if worst > SKEW_FAIL else "WARN"
    return status, f"coturn's clock is {size} this host {bracket}", fix


async def skew_result(
    label: str,
    server: tuple[str, int],
    mint: Callable[[int], tuple[str, str]],
    limit: float,
) -> Result:
    async def probe(offset: int) -> bool | None:
        try:
            alloc = await allocate(server, *mint(offset), "udp", limit)
        except Refused as refused:
            return False if refused.code == 401 else None
        except (TimeoutError, OSError):
            return None
        await alloc.close()
        return True

    answers = await asyncio.gather(*(probe(offset) for offset in SKEW_PROBES))
    accepted = {o: a for o, a in zip(SKEW_PROBES, answers, strict=True) if a is not None}
    name = f"{label} clock"
    if len(accepted) < len(SKEW_PROBES):
        return Result("WARN", name, "some clock probes got no answer; skew not estimated")
    status, detail, fix = skew_verdict(accepted)
    return Result(status, name, detail, fix)
