"""Background refresh of gauges that are costly to compute per scrape (readiness, queue depth)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .tasks import stop_task

log = logging.getLogger("rtc.web")

# A gauge refresher run in the background (see `MetricsSampling`).
Sampler = Callable[[], Awaitable[None]]
# A readiness check that takes longer than this has failed.
READINESS_TIMEOUT = 2.0
# Background gauges (readiness, relay queue depth) are refreshed this often once scraped.
SAMPLE_SECONDS = 5.0


@dataclass
class MetricsSampling:
    """Gauges that need I/O (readiness, the relay queue), refreshed every `SAMPLE_SECONDS`.

    The loop starts at the first scrape of /metrics (a process nobody scrapes does no extra
    work), and that first scrape waits for one pass so it never reports a default 0. Samplers
    are added by the services (`app[SAMPLING_KEY].samplers.append(...)`); each pass is bounded
    by `READINESS_TIMEOUT` per sampler and a failing sampler only logs.
    """

    samplers: list[Sampler] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    first_pass: asyncio.Event = field(default_factory=asyncio.Event)

    async def sample(self) -> None:
        async def run(sampler: Sampler) -> None:
            try:
                async with asyncio.timeout(READINESS_TIMEOUT * 2):
                    await sampler()
            except Exception as exc:  # a gauge left stale must not stop the others
                log.warning("metrics sampler failed", extra={"error": type(exc).__name__})

        await asyncio.gather(*(run(s) for s in self.samplers))

    async def _loop(self) -> None:
        while True:
            await self.sample()
            self.first_pass.set()
            await asyncio.sleep(SAMPLE_SECONDS)

    async def ensure_started(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._loop())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.first_pass.wait(), READINESS_TIMEOUT * 2 + 1)

    async def stop(self) -> None:
        if self.task is not None:
            await stop_task(self.task)
            self.task = None
