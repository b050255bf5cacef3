"""ice-service settings: defined in rtc_common.ice.settings, shared with `rtcctl doctor`."""

from __future__ import annotations

from rtc_common.ice.settings import (
    TWILIO_REGION_EDGES,
    IceProviderSettings,
    IceSettings,
    Provider,
)

__all__ = ["TWILIO_REGION_EDGES", "IceProviderSettings", "IceSettings", "Provider"]
