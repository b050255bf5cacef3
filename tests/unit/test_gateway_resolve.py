"""The gateway image's look-ups of the replicas: a temporary failure keeps the last answer,
"no such name" empties it (rtc_gateway.image.resolve)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from rtc_gateway import image
from rtc_gateway.settings import Upstream


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "_known", {})


def answering(monkeypatch: pytest.MonkeyPatch, answer: Any) -> None:
    def lookup(host: str, *args: Any, **kwargs: Any) -> Any:
        if isinstance(answer, BaseException):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in answer]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)


def test_a_lost_answer_keeps_the_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    ice = Upstream("ICE_UPSTREAM", "ice-service", 8101)
    answering(monkeypatch, ["10.0.0.3", "10.0.0.2"])
    assert image.resolve(ice) == ["10.0.0.2", "10.0.0.3"]
    answering(monkeypatch, socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
    assert image.resolve(ice) == ["10.0.0.2", "10.0.0.3"]
    answering(monkeypatch, TimeoutError())
    assert image.resolve(ice) == ["10.0.0.2", "10.0.0.3"]
    answering(monkeypatch, ["10.0.0.4"])
    assert image.resolve(ice) == ["10.0.0.4"]


def test_no_such_name_empties_the_set(monkeypatch: pytest.MonkeyPatch) -> None:
    relay = Upstream("RELAY_UPSTREAM", "relay-service", 8301)
    answering(monkeypatch, ["10.0.0.5"])
    assert image.resolve(relay) == ["10.0.0.5"]
    answering(monkeypatch, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert image.resolve(relay) == []
    # Never resolved and failing: nothing to keep.
    answering(monkeypatch, socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
    assert image.resolve(relay) == []
