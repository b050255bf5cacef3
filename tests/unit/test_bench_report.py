"""The benchmark report renders the committed results (the code that writes docs/benchmarks.md).

The benchmarks themselves are not run here (minutes, and a quiet machine): `make bench`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rtc_testkit.processes import REPO_ROOT

RESULTS = sorted((REPO_ROOT / "bench" / "results").glob("*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_results_render_as_a_table(path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--render", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
        timeout=60,
    ).stdout
    scenarios = json.loads(path.read_text())["scenarios"]
    labels = {
        "ice": "ICE",
        "signaling": "Signaling",
        "connections": "Connections",
        "relay": "Relay",
        "scaleout": "Scale-out",
    }
    for name in scenarios:
        assert f"\n{labels[name]}" in out
    # Every goal of the issue appears with a verdict.
    if "ice" in scenarios:
        assert ">= 0.50 of bare: " in out and "p99 <= 10 ms: " in out
    if "relay" in scenarios:
        assert ">= 0.60 of bare: " in out and "p99 <= 15 ms: " in out
