"""Every Prometheus metric the service exports, on one dedicated registry per app (names prefixed `pcgen_`).

One table declares them all: (attribute, kind, name, help, labels, buckets)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512)
STATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

CONTENT_TYPE = CONTENT_TYPE_LATEST

METRICS = [
    # HTTP
    ("requests", Counter, "pcgen_requests", "HTTP requests by route template and status code", ["route", "status"], None),
    ("request_latency", Histogram, "pcgen_request_duration_seconds",
     "HTTP request latency (streams: until the last event)", ["route"], LATENCY),
    # scheduling
    ("queue_time", Histogram, "pcgen_queue_time_seconds",
     "acceptance to joining the decoding batch (includes constraint compilation)", [], LATENCY),
    ("ttft", Histogram, "pcgen_time_to_first_token_seconds", "acceptance to the first decoded token", [], LATENCY),
    ("tpot", Histogram, "pcgen_time_per_output_token_seconds", "decode time per output token after the first",
     [], FAST),
    ("generated_tokens", Counter, "pcgen_generated_tokens", "generated tokens (all outputs)", [], None),
    ("prompt_tokens", Counter, "pcgen_prompt_tokens", "prompt tokens of computed requests", [], None),
    ("batch_size", Histogram, "pcgen_batch_size", "requests decoded together in one step", [], BATCH),
    ("batch_rows", Histogram, "pcgen_batch_rows", "rows (beams or samples) decoded together in one step", [], BATCH),
    ("queue_depth", Gauge, "pcgen_queue_depth", "accepted requests waiting for a batch slot", [], None),
    ("active", Gauge, "pcgen_active_requests", "requests in the decoding batch", [], None),
    ("rejected", Counter, "pcgen_rejected_requests",
     "requests refused before decoding (queue_full, rate_limited, unauthorized, too_large)", ["reason"], None),
    ("cancelled", Counter, "pcgen_cancelled_requests", "decoding stopped early (disconnect, timeout)",
     ["reason"], None),
    # cache and redis
    ("cache_hits", Counter, "pcgen_cache_hits", "response cache hits", [], None),
    ("cache_misses", Counter, "pcgen_cache_misses", "response cache misses", [], None),
    ("cache_errors", Counter, "pcgen_cache_errors", "response cache backend errors (failed open)", ["op"], None),
    ("cache_shared", Counter, "pcgen_cache_shared", "requests answered by an identical in-flight computation",
     [], None),
    ("ratelimit_errors", Counter, "pcgen_ratelimit_errors", "rate limiter backend errors (failed open)", [], None),
    ("redis_up", Gauge, "pcgen_redis_up", "1 when Redis answers, 0 when down, -1 when not configured", [], None),
    # constraints and guide
    ("constraint_outcomes", Counter, "pcgen_constraint_outcomes",
     "returned outputs by constraint outcome (satisfied, not_satisfied)", ["outcome"], None),
    ("constraint_errors", Counter, "pcgen_constraint_errors", "rejected constraints by error type", ["type"], None),
    ("dfa_states", Histogram, "pcgen_dfa_states", "token DFA states per request", [], STATES),
    ("dfa_compile", Histogram, "pcgen_dfa_compile_seconds", "constraint compilation (cache lookups included)",
     [], FAST),
    ("guide_precompute", Histogram, "pcgen_guide_precompute_seconds", "guide table precompute per request", [],
     FAST),
    ("step_time", Histogram, "pcgen_decode_step_seconds", "one batched decoding step (LM + guide)", [], FAST),
]  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for attribute, kind, name, help_text, labels, buckets in METRICS:
            extra = {"buckets": buckets} if buckets is not None else {}
            setattr(self, attribute, kind(name, help_text, labels, registry=self.registry, **extra))
        self.model_info = Info("pcgen_model", "served LM and HMM", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
