"""Per-API-key rate limits with the `limits` library (moving window), on Redis or in memory, failing open."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from service.cache import RedisHealth
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

    @property
    def _timeout_s(self) -> float:
        return self.health.timeout_s if self.health is not None else 1.0

    async def check(self, identity: str) -> dict[str, str]:
        """Count one request for `identity`; raise RateLimited when a limit is spent. Returns the
        `X-RateLimit-*` headers of the tightest limit (empty without limits or when failing open)."""
        if self.limiter is None:
            return {}
        if self.health is not None and not self.health.available():
            self.metrics.ratelimit_errors.inc()  # Redis is down: fail open
            return {}
        tightest: tuple[int, Any, float] | None = None  # (remaining, item, seconds to reset)
        for item in self.items:
            try:
                allowed = await asyncio.wait_for(self.limiter.hit(item, "pcgen", identity), self._timeout_s)
                stats = await asyncio.wait_for(
                    self.limiter.get_window_stats(item, "pcgen", identity), self._timeout_s
                )
            except Exception as err:  # noqa: BLE001 - fail open
                self.metrics.ratelimit_errors.inc()
                if self.health is not None:
                    self.health.failure(err)
                return {}
            if self.health is not None:
                self.health.success()
            reset_s = max(1, math.ceil(stats.reset_time - time.time()))
            if not allowed:
                self.metrics.rejected.labels("rate_limited").inc()
                headers = {"Retry-After": str(reset_s), **_headers(item, 0, reset_s)}
                raise RateLimited(f"rate limit {item} exceeded; retry in {reset_s} s", headers=headers)
            if tightest is None or stats.remaining < tightest[0]:
                tightest = (stats.remaining, item, reset_s)
        assert tightest is not None
        return _headers(tightest[1], tightest[0], tightest[2])


def _headers(item: Any, remaining: int, reset_s: int) -> dict[str, str]:
    """The limit in requests per window, the requests left in it, and seconds until it frees up."""
    return {
        "X-RateLimit-Limit": str(item.amount),
        "X-RateLimit-Remaining": str(max(0, remaining)),
        "X-RateLimit-Reset": str(reset_s),
    }
