"""The relay store Redis's memory against its `maxmemory`, sampled with the queue gauges.

The store runs with `maxmemory-policy noeviction`: at the limit Redis refuses writes (enqueue
answers 503) instead of evicting queued messages. The RelayStoreMemoryHigh alert
(deploy/prometheus/alerts.yml) warns before that on these two gauges.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from .metrics import STORE_MEMORY, STORE_MEMORY_MAX


def store_memory_sampler(store: Redis) -> Callable[[], Awaitable[None]]:
    """A metrics sampler: `used_memory` and `maxmemory` (0: no limit) from INFO memory."""

    async def sample() -> None:
        info = await store.info("memory")
        STORE_MEMORY.set(int(info["used_memory"]))
        STORE_MEMORY_MAX.set(int(info["maxmemory"]))

    return sample
