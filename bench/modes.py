"""Quick and full modes, and the progress line."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

_T0 = time.monotonic()


@dataclass(frozen=True)
class Mode:
    name: str
    repeats: int
    saturation_seconds: float
    fixed_seconds: float
    connections: int
    fanout_contacts: int
    pull_messages: int


QUICK = Mode(
    "quick",
    repeats=3,
    saturation_seconds=3,
    fixed_seconds=4,
    connections=2000,
    fanout_contacts=500,
    pull_messages=5000,
)
FULL = Mode(
    "full",
    repeats=3,
    saturation_seconds=8,
    fixed_seconds=8,
    connections=20000,
    fanout_contacts=500,
    pull_messages=10000,
)


def progress(line: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {line}", file=sys.stderr, flush=True)
