"""Every Prometheus metric the service exports, on one dedicated registry per app (names prefixed `pcgen_`).

One table declares them all: (attribute, kind, name, help, labels, buckets). Metrics about the model's work carry
vLLM's `model_name` label first (the served model, `settings.served_model`); each app binds it once, so call
sites pass only the other labels (`metrics.finish_reasons.labels("eos").inc()`, `metrics.ttft.observe(t)`).
HTTP, response-cache, Redis and rate-limiter metrics describe the server, not a model, and have no
`model_name`. Beside them: the process and Python collectors (`process_*`, `python_gc_*`, `python_info`),
`pcgen_build_info` and the compile workers' health (`pcgen_compile_workers`). No `*_created` series (they double
the series count and no dashboard reads them). service/README.md ("Metrics") lists them all."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512)
STATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)  # vLLM's 1-2-5

CONTENT_TYPE = CONTENT_TYPE_LATEST
MODEL = "model_name"  # bound per app (Metrics(model_name)): never passed at a call site

METRICS = [
    # HTTP: every request (probes, /metrics and refusals included), before any model is involved
    ("requests", Counter, "pcgen_requests", "HTTP requests by route template and status code", ["route", "status"], None),
    ("request_latency", Histogram, "pcgen_request_duration_seconds",
     "HTTP request latency (streams: until the last event)", ["route"], LATENCY),
    ("rejected", Counter, "pcgen_rejected_requests",
     "requests refused before decoding (queue_full, compile_backlog, rate_limited, unauthorized, too_large, "
     "body_timeout)", ["reason"], None),
    # generation requests, in vLLM's vocabulary (warm-up excluded)
    ("e2e_latency", Histogram, "pcgen_e2e_request_latency_seconds",
     "end-to-end latency of a generation request that returned a result (its timings.total_ms; streams: until "
     "the result event), by whether the response cache answered it (cached=true|false)", [MODEL, "cached"],
     LATENCY),
    ("prompt_length", Histogram, "pcgen_request_prompt_tokens", "prompt tokens per computed request", [MODEL],
     TOKENS),
    ("generation_length", Histogram, "pcgen_request_generation_tokens",
     "generated tokens per computed request, all its outputs (usage.completion_tokens)", [MODEL], TOKENS),
    ("finish_reasons", Counter, "pcgen_request_finish_reason",
     "computed outputs by finish reason (eos: the model ended it, stop: a stop string, length: max_new_tokens)",
     [MODEL, "finish_reason"], None),
    # scheduling
    ("queue_time", Histogram, "pcgen_queue_time_seconds",
     "acceptance to joining the decoding batch (constraint compilation and the guide's precompute included)",
     [MODEL], LATENCY),
    ("ttft", Histogram, "pcgen_time_to_first_token_seconds", "acceptance to the first decoded token", [MODEL],
     LATENCY),
    ("tpot", Histogram, "pcgen_time_per_output_token_seconds", "decode time per output token after the first",
     [MODEL], FAST),
    ("generated_tokens", Counter, "pcgen_generated_tokens", "generated tokens (all outputs)", [MODEL], None),
    ("prompt_tokens", Counter, "pcgen_prompt_tokens", "prompt tokens of computed requests", [MODEL], None),
    ("batch_size", Histogram, "pcgen_batch_size", "requests decoded together in one step", [MODEL], BATCH),
    ("batch_rows", Histogram, "pcgen_batch_rows", "rows (beams or samples) decoded together in one step", [MODEL],
     BATCH),
    ("queue_depth", Gauge, "pcgen_queue_depth", "accepted requests waiting for a batch slot", [MODEL], None),
    ("active", Gauge, "pcgen_active_requests", "requests in the decoding batch", [MODEL], None),
    ("cancelled", Counter, "pcgen_cancelled_requests", "decoding stopped early (disconnect, timeout)",
     [MODEL, "reason"], None),
    ("abandoned", Counter, "pcgen_abandoned_work",
     "work stopped or never started because the request's deadline passed, by stage "
     "(compile, prepare, admission)", [MODEL, "stage"], None),
    # cache and redis
    ("cache_hits", Counter, "pcgen_cache_hits", "response cache hits", [], None),
    ("cache_misses", Counter, "pcgen_cache_misses", "response cache misses", [], None),
    ("cache_errors", Counter, "pcgen_cache_errors", "response cache backend errors (failed open)", ["op"], None),
    ("cache_shared", Counter, "pcgen_cache_shared", "requests answered by an identical in-flight computation",
     [], None),
    ("ratelimit_errors", Counter, "pcgen_ratelimit_errors", "rate limiter backend errors (failed open)", [], None),
    ("redis_up", Gauge, "pcgen_redis_up", "1 when Redis answers, 0 when down, -1 when not configured", [], None),
    ("gc_frozen", Gauge, "pcgen_gc_frozen_objects",
     "objects of start-up (models, tokenizer, dictionaries, warm-up) moved out of the garbage collector's view by "
     "gc.freeze once the server is ready: full collections no longer traverse them", [], None),
    # constraints and guide
    ("constraint_outcomes", Counter, "pcgen_constraint_outcomes",
     "computed outputs by constraint outcome (satisfied, not_satisfied)", [MODEL, "outcome"], None),
    ("constraint_errors", Counter, "pcgen_constraint_errors", "rejected constraints by error type",
     [MODEL, "type"], None),
    ("compiles", Counter, "pcgen_compiles",
     "constraint compilations by where they ran (quick: the in-process attempt; light, heavy: the compile lanes)",
     [MODEL, "lane"], None),
    ("guides", Counter, "pcgen_guides", "guides built per request, by kind (exact; factored past the budget; lazy past the explicit automaton)",
     [MODEL, "kind"], None),
    ("dfa_states", Histogram, "pcgen_dfa_states", "token DFA states per request", [MODEL], STATES),
    ("dfa_compile", Histogram, "pcgen_dfa_compile_seconds",
     "getting a constraint's automaton: a cache lookup or its compilation (with compile workers, the wait for one "
     "too); not observed for requests without a constraint", [MODEL], FAST),
    ("guide_precompute", Histogram, "pcgen_guide_precompute_seconds", "guide table precompute per request",
     [MODEL], FAST),
    ("step_time", Histogram, "pcgen_decode_step_seconds", "one batched decoding step (LM + guide)", [MODEL], FAST),
]  # fmt: skip


class Metrics:
    def __init__(self, model_name: str = "unknown") -> None:
        """`model_name`: the value of every `model_name` label (the app passes `settings.served_model`)."""
        self.model_name = model_name
        disable_created_metrics()  # process-wide: no `*_created` series
        self.registry = CollectorRegistry(auto_describe=True)
        # process_* (cpu seconds, resident memory, open fds, ...), python_info, python_gc_*
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        for attribute, kind, name, help_text, labels, buckets in METRICS:
            extra = {"buckets": buckets} if buckets is not None else {}
            family = kind(name, help_text, labels, registry=self.registry, **extra)
            setattr(self, attribute, _bind(family, labels, model_name))
        self.model_info = Info("pcgen_model", "served LM and HMM", registry=self.registry)
        self.caches = _CacheCollector()
        self.registry.register(self.caches)
        self.devices = _DeviceCollector(model_name)
        self.registry.register(self.devices)
        self.build_info = Gauge("pcgen_build_info", "1, labelled with the build (version, commit) and the models "
                                "served (model: the served id, hmm: the HMM's name)",
                                ["version", "commit", "model", "hmm"], registry=self.registry)  # fmt: skip
        self.compile_workers = _CompileWorkerCollector()
        self.registry.register(self.compile_workers)

    def set_build_info(self, version: str, commit: str, hmm: str) -> None:
        self.build_info.clear()
        self.build_info.labels(version, commit, self.model_name, hmm).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _bind(family: Any, labels: list[str], model_name: str) -> Any:
    """The family as call sites use it: itself without `model_name`; with only `model_name`, its one child
    (created now, so it is exported at zero from the start); with more labels, a view whose `.labels(...)`
    takes the others."""
    if labels[:1] != [MODEL]:
        return family
    if labels == [MODEL]:
        return family.labels(model_name)
    return _ModelBound(family, model_name)


class _ModelBound:
    """A labelled family with `model_name` fixed: `.labels("eos")` is `family.labels(model_name, "eos")`."""

    def __init__(self, family: Any, model_name: str) -> None:
        self.family, self.model_name = family, model_name

    def labels(self, *values: str, **named: str) -> Any:
        if named:
            return self.family.labels(**{MODEL: self.model_name}, **named)
        return self.family.labels(self.model_name, *values)


EVICTIONS_HELP = "entries a cache dropped to stay within its bound (growing: the cache is full)"


class _CacheCollector:
    """pcgen_cache_bytes / pcgen_cache_entries / pcgen_cache_evictions_total per cache, read at scrape time
    from the caches themselves (anything with `.bytes`, `.evictions` and `len()`)."""

    def __init__(self) -> None:
        self.caches: dict[str, Any] = {}

    def watch(self, name: str, cache: Any) -> None:
        self.caches[name] = cache

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("pcgen_cache_bytes", "bytes held by a cache", labels=["cache"])
        yield GaugeMetricFamily("pcgen_cache_entries", "entries held by a cache", labels=["cache"])
        yield CounterMetricFamily("pcgen_cache_evictions", EVICTIONS_HELP, labels=["cache"])

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        size = GaugeMetricFamily("pcgen_cache_bytes", "bytes held by a cache", labels=["cache"])
        entries = GaugeMetricFamily("pcgen_cache_entries", "entries held by a cache", labels=["cache"])
        evictions = CounterMetricFamily("pcgen_cache_evictions", EVICTIONS_HELP, labels=["cache"])
        for name, cache in self.caches.items():
            size.add_metric([name], float(cache.bytes))
            entries.add_metric([name], float(len(cache)))
            evictions.add_metric([name], float(cache.evictions))
        yield size
        yield entries
        yield evictions


DEVICE_MEMORY = "pcgen_device_memory_bytes"
DEVICE_MEMORY_HELP = (
    "accelerator memory at scrape time by kind: allocated (tensors of this process), reserved (held by its "
    "caching allocator), free and total (the whole device, other processes included)"
)


def cuda_memory(device: str) -> dict[str, float]:
    """allocated, reserved, free, total bytes of one CUDA device (torch.cuda; no synchronisation)."""
    import torch

    index = torch.device(device).index
    if index is None:
        index = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    return {
        "allocated": float(torch.cuda.memory_allocated(index)),
        "reserved": float(torch.cuda.memory_reserved(index)),
        "free": float(free),
        "total": float(total),
    }


class _DeviceCollector:
    """pcgen_device_memory_bytes{model_name, device, kind}, read at scrape time from the devices watched
    (CUDA devices only: on CPU nothing is watched and the family has no series). `read(device)` returns bytes
    by kind; tests pass a fake one."""

    def __init__(self, model_name: str, read: Callable[[str], dict[str, float]] = cuda_memory) -> None:
        self.model_name, self.read = model_name, read
        self.devices: list[str] = []
        self._failed: set[str] = set()

    def watch(self, device: str) -> bool:
        """Export `device`'s memory when it is a CUDA device ("cuda", "cuda:N"); True when watched."""
        if not device.startswith("cuda") or device in self.devices:
            return device in self.devices
        self.devices.append(device)
        return True

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(DEVICE_MEMORY, DEVICE_MEMORY_HELP, labels=[MODEL, "device", "kind"])

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        family = GaugeMetricFamily(DEVICE_MEMORY, DEVICE_MEMORY_HELP, labels=[MODEL, "device", "kind"])
        for device in self.devices:
            try:
                values = self.read(device)
            except Exception as err:  # noqa: BLE001 - a scrape never fails for it; the series go missing
                if device not in self._failed:
                    log.warning("cannot read the memory of %s: %s: %s", device, type(err).__name__, err)
                    self._failed.add(device)
                continue
            self._failed.discard(device)
            for kind, value in values.items():
                family.add_metric([self.model_name, device, kind], float(value))
        yield family


COMPILE_WORKERS = "pcgen_compile_workers"
COMPILE_WORKERS_HELP = (
    "constraint compile worker processes by lane (light, heavy) and state: configured, and alive at scrape time "
    "(alive < configured: a worker died and its lane restarts it on the next compile)"
)


class _CompileWorkerCollector:
    """pcgen_compile_workers{lane, state}, read at scrape time from the compile pool (none without one)."""

    def __init__(self) -> None:
        self.pool: Any = None
        self.configured: dict[str, int] = {}

    def watch(self, pool: Any, configured: dict[str, int]) -> None:
        """`pool.workers_alive()` gives the live workers per lane; `configured`, how many each lane should have."""
        self.pool, self.configured = pool, dict(configured)

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(COMPILE_WORKERS, COMPILE_WORKERS_HELP, labels=["lane", "state"])

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        family = GaugeMetricFamily(COMPILE_WORKERS, COMPILE_WORKERS_HELP, labels=["lane", "state"])
        pool = self.pool
        if pool is not None:
            try:
                alive = pool.workers_alive()
            except Exception as err:  # noqa: BLE001 - a scrape never fails for it
                log.warning("cannot read the compile workers: %s: %s", type(err).__name__, err)
                alive = {}
            for lane, count in self.configured.items():
                family.add_metric([lane, "configured"], float(count))
                family.add_metric([lane, "alive"], float(alive.get(lane, 0)))
        yield family
