"""rtc_client: the Python SDK of the RTC backplane (aiortc data channel, Relay fallback)."""

from rtc_client.client import (
    Delivery,
    IncomingMessage,
    RtcClient,
    conv_id,
    normalize_wallet,
    selected_pair,
)
from rtc_client.clock import Clock, LoopClock, ManualClock
from rtc_client.errors import RtcClientError
from rtc_client.ice import IceConfig

__all__ = [
    "Clock",
    "Delivery",
    "IceConfig",
    "IncomingMessage",
    "LoopClock",
    "ManualClock",
    "RtcClient",
    "RtcClientError",
    "conv_id",
    "normalize_wallet",
    "selected_pair",
]
