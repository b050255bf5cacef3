"""Signaling payloads, validated before anything is looked up or forwarded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from rtc_common.jsonbody import MAX_JSON_DEPTH, error_fields, too_deep

CANDIDATE_MAX_BYTES = 2048
SIGNAL_ID_MAX = 128

WalletField = Annotated[str, StringConstraints(min_length=1, max_length=128)]
SignalIdField = Annotated[str, StringConstraints(min_length=1, max_length=SIGNAL_ID_MAX)]


class _Strict(BaseModel):
    # Extra fields are dropped, never forwarded: the receiver gets only what the contract names.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class SessionDescription(_Strict):
    type: Literal["offer", "answer"]
    sdp: str


class Candidate(_Strict):
    candidate: str
    sdpMid: Annotated[str, StringConstraints(max_length=64)] | None = None
    sdpMLineIndex: Annotated[int, Field(ge=0, le=1023)] | None = None
    usernameFragment: Annotated[str, StringConstraints(max_length=256)] | None = None


class _Signal(_Strict):
    convId: Annotated[str, StringConstraints(min_length=3, max_length=300)]
    to: WalletField
    signalId: SignalIdField | None = None


class OfferOrAnswer(_Signal):
    sdp: SessionDescription


class CandidateSignal(_Signal):
    candidate: Candidate


class LegacySignal(_Strict):
    to: WalletField
    signalId: SignalIdField | None = None
    signal: Any = Field(default=None)


class RelayAck(_Strict):
    ids: Annotated[
        list[Annotated[str, StringConstraints(max_length=64)]], Field(min_length=1, max_length=1000)
    ]


class PayloadError(ValueError):
    """A payload that fails validation; the message names the fields, never their values."""


def parse(model: type[_Strict], data: object) -> Any:
    if not isinstance(data, dict):
        raise PayloadError("payload must be an object")
    if too_deep(data):
        raise PayloadError(f"payload nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(f"invalid fields: {error_fields(exc, 'payload')}") from None
