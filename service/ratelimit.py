"""Per-API-key rate limits with the `limits` library (moving window), on Redis or in memory, failing open."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from service.cache import REDIS_OP_TIMEOUT_S, RedisHealth
from service.errors import RateLimited
from service.metrics import Metrics

log = logging.getLogger(__name__)


class RateLimiter:
    """`await check(identity)` raises RateLimited (429 + Retry-After) when any configured limit is spent."""

    def __init__(
        self,
        rate_limit: str | None,
        metrics: Metrics,
        redis_client: Any | None = None,
        redis_url: str | None = None,
        health: RedisHealth | None = None,
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.items: list = []
        self.limiter = None
        if not rate_limit:
            return
        from limits import parse_many
        from limits.aio.storage import MemoryStorage, RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        self.items = parse_many(rate_limit)
        if redis_client is not None:
            # the app's own redis.asyncio connection pool (created in the lifespan) backs the limiter
            storage = RedisStorage(
                "async+" + (redis_url or "redis://localhost"),
                implementation="redispy",
                connection_pool=redis_client.connection_pool,
                key_prefix="pcgen:ratelimit",
            )
        else:
            storage = MemoryStorage()
        self.limiter = MovingWindowRateLimiter(storage)

    @property
    def enabled(self) -> bool:
        return self.limiter is not None

    async def check(self, identity: str) -> None:
        if self.limiter is None:
            return
        if self.health is not None and not self.health.available():
            self.metrics.ratelimit_errors.inc()  # Redis is down: fail open
            return
        for item in self.items:
            try:
                allowed = await asyncio.wait_for(
                    self.limiter.hit(item, "pcgen", identity), REDIS_OP_TIMEOUT_S
                )
            except Exception as err:  # noqa: BLE001 - fail open
                self.metrics.ratelimit_errors.inc()
                if self.health is not None:
                    self.health.failure(err)
                return
            if self.health is not None:
                self.health.success()
            if not allowed:
                retry_after = 1
                try:
                    stats = await asyncio.wait_for(
                        self.limiter.get_window_stats(item, "pcgen", identity), REDIS_OP_TIMEOUT_S
                    )
                    retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                except Exception:  # noqa: BLE001 - the header is advisory
                    pass
                self.metrics.rejected.labels("rate_limited").inc()
                raise RateLimited(
                    f"rate limit {item} exceeded; retry in {retry_after} s",
                    headers={"Retry-After": str(retry_after)},
                )
