"""Response cache for deterministic requests, failing open, with single-flight for identical requests.

Backends: Redis (`redis.asyncio`, values under `pcgen:cache:<sha256>` with a TTL) or, without Redis, an
in-process LRU bounded in entries and bytes, with the same TTL. When Redis errors or does not answer within
the socket timeout (PCGEN_REDIS_TIMEOUT_S), the request goes on as a miss, the error is counted
(`pcgen_cache_errors_total`, every cache operation Redis could not serve) and `RedisHealth` opens its circuit:
requests skip Redis until a background probe gets an answer, and caching resumes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from service.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisHealth:
    """Shared view of Redis for the cache, the rate limiter and readiness: "disabled", "ok" or "down".

    A circuit breaker: after a failure, requests skip Redis (fail open) instead of waiting on it, and a
    background task probes it every `probe_s`; the first answer closes the circuit. Readiness reads the state
    without touching Redis, so a hung Redis costs no request more than one socket timeout."""

    def __init__(
        self, client: Any | None, metrics: Metrics, timeout_s: float = 0.1, probe_s: float = 1.0
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.probe_s = probe_s
        self.state = "disabled" if client is None else "ok"
        self.last_error: str | None = None
        self._prober: asyncio.Task | None = None
        metrics.redis_up.set(-1 if client is None else 1)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def available(self) -> bool:
        """False while the circuit is open: Redis failed and has not answered a probe since."""
        return self.state != "down"

    def failure(self, err: BaseException) -> None:
        if self.state != "down":
            log.warning(
                "redis unavailable (%s); failing open and probing it in the background", type(err).__name__
            )
        self.state = "down"
        self.last_error = f"{type(err).__name__}: {err}"[:200]
        self.metrics.redis_up.set(0)

    def success(self) -> None:
        if self.state == "down":
            log.info("redis is back")
        self.state = "ok"
        self.last_error = None
        self.metrics.redis_up.set(1)

    async def ping(self) -> str:
        if self.client is None:
            return "disabled"
        try:
            await asyncio.wait_for(self.client.ping(), self.timeout_s)
        except Exception as err:  # noqa: BLE001 - any failure means "down"
            self.failure(err)
        else:
            self.success()
        return self.state

    def start_probing(self) -> None:
        if self.client is not None and self._prober is None:
            self._prober = asyncio.create_task(self._probe())

    async def stop_probing(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            try:
                await self._prober
            except asyncio.CancelledError:
                pass
            self._prober = None

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self.probe_s)
            await self.ping()


class Backend(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...


class MemoryBackend:
    """LRU with per-entry expiry, bounded in entries and in bytes (single event loop: no locking needed)."""

    def __init__(self, size: int, max_bytes: int = 64 * 2**20) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0  # entries dropped to stay within size / max_bytes (expired ones not counted)
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if time.monotonic() >= expires:
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if self.size <= 0 or len(value) > self.max_bytes:
            return
        self._drop(key)
        self._data[key] = (time.monotonic() + ttl_s, value)
        self.bytes += len(value)
        while len(self._data) > self.size or self.bytes > self.max_bytes:
            self._drop(next(iter(self._data)))
            self.evictions += 1

    def _drop(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is not None:
            self.bytes -= len(item[1])


class RedisBackend:
    PREFIX = "pcgen:cache:"

    def __init__(self, client: Any) -> None:
        self.client = client

    async def get(self, key: str) -> bytes | None:
        return await self.client.get(self.PREFIX + key)

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self.client.set(self.PREFIX + key, value, ex=ttl_s)


class ResponseCache:
    """get/set JSON payloads; never raises (fails open)."""

    def __init__(
        self, backend: Backend | None, metrics: Metrics, ttl_s: int, health: RedisHealth | None = None
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.ttl_s = ttl_s
        self.health = health  # set for the Redis backend

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def _timeout_s(self) -> float:
        return self.health.timeout_s if self.health is not None else 1.0

    async def get(self, key: str) -> dict | None:
        if self.backend is None:
            return None
        if self.health is not None and not self.health.available():
            self.metrics.cache_errors.labels("get").inc()  # Redis is down: this request fails open
            self.metrics.cache_misses.inc()
            return None
        try:
            raw = await asyncio.wait_for(self.backend.get(key), self._timeout_s)
        except Exception as err:  # noqa: BLE001 - fail open
            self._failed("get", err)
            self.metrics.cache_misses.inc()
            return None
        if self.health is not None:
            self.health.success()
        if raw is None:
            self.metrics.cache_misses.inc()
            return None
        try:
            value = json.loads(raw)
        except (ValueError, TypeError):
            self.metrics.cache_errors.labels("decode").inc()
            self.metrics.cache_misses.inc()
            return None
        self.metrics.cache_hits.inc()
        return value

    async def set(self, key: str, value: dict) -> None:
        if self.backend is None:
            return
        if self.health is not None and not self.health.available():
            self.metrics.cache_errors.labels("set").inc()
            return
        raw = json.dumps(value, separators=(",", ":")).encode()
        try:
            await asyncio.wait_for(self.backend.set(key, raw, self.ttl_s), self._timeout_s)
        except Exception as err:  # noqa: BLE001 - fail open
            self._failed("set", err)
        else:
            if self.health is not None:
                self.health.success()

    def _failed(self, op: str, err: BaseException) -> None:
        self.metrics.cache_errors.labels(op).inc()
        if self.health is not None:
            self.health.failure(err)


@dataclass
class _Call:
    task: asyncio.Task
    waiters: int = 0


class SingleFlight:
    """Identical concurrent requests share one computation. The computation runs as its own task, so one
    client leaving does not cancel it for the others; it is cancelled when its last waiter leaves."""

    def __init__(self) -> None:
        self._calls: dict[str, _Call] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def run(self, key: str, factory: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """(result, shared): the computation for `key` in flight (shared), or `factory()` started now (again,
        if the one in flight is cancelled by its owner)."""
        while True:
            call = self._calls.get(key)
            shared = call is not None
            result = await self._wait(call or self._start(key, factory()))
            if result is not None:
                return result, shared

    def join(self, key: str) -> Awaitable | None:
        """An awaitable of the computation in flight for `key` (None if its owner cancels it), or None."""
        call = self._calls.get(key)
        return None if call is None else self._wait(call)

    def adopt(self, key: str, work: Awaitable[T]) -> None:
        """Run `work` as the computation for `key` (a stream's job: identical requests may join it); it is
        not cancelled when nobody waits, its owner cancels the job."""
        if key not in self._calls:
            self._start(key, work).waiters = 1 << 30

    def _start(self, key: str, work: Awaitable[T]) -> _Call:
        call = _Call(asyncio.ensure_future(work))
        self._calls[key] = call
        call.task.add_done_callback(lambda task, key=key, call=call: self._done(key, call, task))
        return call

    async def _wait(self, call: _Call) -> T | None:
        """The shared result; None when the computation was cancelled by its owner (not by this waiter)."""
        call.waiters += 1
        try:
            return await asyncio.shield(call.task)
        except asyncio.CancelledError:
            if call.task.cancelled() and not asyncio.current_task().cancelling():
                return None
            raise
        finally:
            call.waiters -= 1
            if call.waiters == 0 and not call.task.done():
                call.task.cancel()

    def _done(self, key: str, call: _Call, task: asyncio.Task) -> None:
        if self._calls.get(key) is call:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning when nobody waits
