"""iso_ms keeps what datetime's isoformat wrote (it replaced it on the hot paths)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from rtc_common.times import _MAX_PREFIXES, _prefixes, iso_ms


def reference(unix_seconds: float) -> str:
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_same_text_as_datetime(unix_seconds: float) -> None:
    assert iso_ms(unix_seconds) == reference(unix_seconds)


def test_rounding_edges_and_alternating_seconds() -> None:
    # Microsecond rounding that carries into the next second, as datetime does it.
    for value in (0.0, 1.9999995, 1.0000005, 1_765_000_000.9999996, 1_765_000_000.9995):
        assert iso_ms(value) == reference(value)
    # An answer names now and an expiry: alternating seconds keep their own text.
    for n in range(3 * _MAX_PREFIXES):
        now = 1_765_000_000 + n + 0.25
        assert (iso_ms(now), iso_ms(now + 600)) == (reference(now), reference(now + 600))
    assert len(_prefixes) <= _MAX_PREFIXES  # bounded
