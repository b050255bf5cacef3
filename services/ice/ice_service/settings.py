"""ice-service settings: defined in rtc_common.ice.settings, shared with `rtcctl doctor`."""

from __future__ import annotations

from rtc_common.ice.settings import (
    TWILIO_DEFAULT_EDGES,
    IceProviderSettings,
    IceSettings,
    Provider,
)

__all__ = ["TWILIO_DEFAULT_EDGES", "IceProviderSettings", "IceSettings", "Provider"]
