"""rtc_client: the Python SDK of the RTC backplane (aiortc data channel, Relay fallback)."""

from rtc_client.client import RtcClient
from rtc_client.clock import Clock, LoopClock, ManualClock
from rtc_client.errors import RtcClientError
from rtc_client.ice import IceConfig
from rtc_client.links import selected_pair
from rtc_client.model import Delivery, IncomingMessage, conv_id, normalize_wallet
from rtc_client.options import ClientOptions
from rtc_client.outbox import OutgoingMessage

__all__ = [
    "ClientOptions",
    "Clock",
    "Delivery",
    "IceConfig",
    "IncomingMessage",
    "LoopClock",
    "ManualClock",
    "OutgoingMessage",
    "RtcClient",
    "RtcClientError",
    "conv_id",
    "normalize_wallet",
    "selected_pair",
]
