"""Times in bodies and log lines are ISO-8601 UTC with milliseconds, e.g.
2026-11-29T02:47:12.123Z."""

from __future__ import annotations

import math
import time

# The text of recent whole seconds: the answers and log lines of a second share it (datetime's
# isoformat per call was a measured share of an ICE answer). An answer names two seconds (now
# and an expiry), so a few are kept; the set is emptied when it grows past that.
_prefixes: dict[int, str] = {}
_MAX_PREFIXES = 16


def iso_ms(unix_seconds: float) -> str:
    # Rounded to the microsecond first, exactly as datetime.fromtimestamp does, then truncated.
    fraction, whole = math.modf(unix_seconds)
    second, micros = int(whole), round(fraction * 1_000_000)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:
        second, micros = second - 1, micros + 1_000_000
    prefix = _prefixes.get(second)
    if prefix is None:
        if len(_prefixes) >= _MAX_PREFIXES:
            _prefixes.clear()
        prefix = _prefixes[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{prefix}.{micros // 1000:03d}Z"
