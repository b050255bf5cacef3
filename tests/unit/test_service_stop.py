"""A graceful stop ends in bounded time, and a stop that hangs says what it waits for."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web
from rtc_common.tasks import stop_task
from rtc_common.web import slow_shutdown_report


async def test_stop_task_survives_a_lost_cancellation() -> None:
    """A task that swallows the first cancel (as a lost cancel in asyncio.wait_for looks) still
    stops: stop_task cancels again instead of waiting forever."""
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_task(task, wait_seconds=2), timeout=5)
    assert swallowed.is_set() and task.cancelled()


async def test_stop_task_gives_up_on_a_task_that_never_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    released = False

    async def immortal() -> None:
        while not released:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(immortal(), name="immortal")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="rtc.service"):
        await asyncio.wait_for(stop_task(task, wait_seconds=0.2), timeout=5)
    assert not task.done()
    assert any(
        r.getMessage() == "background task did not stop" and getattr(r, "task", "") == "immortal"
        for r in caplog.records
    )
    released = True  # leave nothing running: the next cancel ends it
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.done()


async def test_slow_shutdown_names_what_it_waits_for(caplog: pytest.LogCaptureFixture) -> None:
    arm, disarm = slow_shutdown_report(seconds=0.1)
    app = web.Application()

    async def stuck_cleanup() -> None:
        await asyncio.sleep(3600)

    stuck = asyncio.create_task(stuck_cleanup())
    with caplog.at_level(logging.WARNING, logger="rtc.web"):
        await arm(app)
        deadline = asyncio.get_running_loop().time() + 5
        while not any(r.getMessage() == "graceful stop still running" for r in caplog.records):
            assert asyncio.get_running_loop().time() < deadline, "no report"
            await asyncio.sleep(0.05)
        await disarm(app)
    record = next(r for r in caplog.records if r.getMessage() == "graceful stop still running")
    tasks = record.tasks  # type: ignore[attr-defined]
    assert any(
        t.startswith("test_slow_shutdown_names_what_it_waits_for.<locals>.stuck_cleanup")
        for t in tasks
    ), tasks
    stuck.cancel()


async def test_a_stop_that_ends_in_time_reports_nothing(caplog: pytest.LogCaptureFixture) -> None:
    arm, disarm = slow_shutdown_report(seconds=0.2)
    app = web.Application()
    with caplog.at_level(logging.WARNING, logger="rtc.web"):
        await arm(app)
        await disarm(app)
        await asyncio.sleep(0.4)
    assert not [r for r in caplog.records if r.getMessage() == "graceful stop still running"]
