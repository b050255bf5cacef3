"""What a check reports (`Result`) and how the doctor prints the list (`render`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .target import Target

Status = Literal["PASS", "FAIL", "WARN", "SKIP"]


@dataclass
class Result:
    status: Status
    name: str
    detail: str
    fix: str | None = None


def render(results: list[Result], target: Target) -> str:
    width = max((len(r.name) for r in results), default=10)
    lines = []
    for result in results:
        lines.append(f"{result.status}  {result.name.ljust(width)}  {result.detail}")
        if result.fix and result.status in ("FAIL", "WARN"):
            lines.append(f"{'':4}  {'':{width}}  fix: {result.fix}")
    counts = {s: sum(1 for r in results if r.status == s) for s in ("PASS", "FAIL", "WARN", "SKIP")}
    lines.append(
        f"doctor: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['WARN']} warnings,"
        f" {counts['SKIP']} skipped"
    )
    return scrub("\n".join(lines), target.secrets)


def scrub(text: str, values: Iterable[str]) -> str:
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, "***")
    return text
