"""The contract's data-channel frames (label `rtc`, ordered, JSON text):
`{"t": "msg", "messageId", "payload", "sentAt"}` and `{"t": "ack", "messageId"}`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

CHANNEL_LABEL = "rtc"


def iso_now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class MsgFrame:
    message_id: str
    payload: str
    sent_at: str | None


@dataclass(frozen=True)
class AckFrame:
    message_id: str


def encode_msg(message_id: str, payload: str, sent_at: str | None = None) -> str:
    body = {"t": "msg", "messageId": message_id, "payload": payload, "sentAt": sent_at or iso_now()}
    return json.dumps(body, separators=(",", ":"))


def encode_ack(message_id: str) -> str:
    return json.dumps({"t": "ack", "messageId": message_id}, separators=(",", ":"))


def decode(data: str | bytes) -> MsgFrame | AckFrame | None:
    """A frame, or None for anything that is not one of the contract's frames."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    message_id = body.get("messageId")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= 128:
        return None
    if body.get("t") == "ack":
        return AckFrame(message_id)
    if body.get("t") == "msg" and isinstance(body.get("payload"), str):
        sent_at = body.get("sentAt")
        return MsgFrame(message_id, body["payload"], sent_at if isinstance(sent_at, str) else None)
    return None
