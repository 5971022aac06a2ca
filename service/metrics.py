"""Every Prometheus metric the service exports, on one dedicated registry per app (names prefixed `pcgen_`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512)
STATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # HTTP
        self.requests = Counter(
            "pcgen_requests",
            "HTTP requests by route template and status code",
            ["route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "pcgen_request_duration_seconds",
            "HTTP request latency (streams: until the last event)",
            ["route"],
            buckets=LATENCY,
            registry=r,
        )
        # scheduling
        self.queue_time = Histogram(
            "pcgen_queue_time_seconds",
            "acceptance to joining the decoding batch (includes constraint compilation)",
            buckets=LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "pcgen_time_to_first_token_seconds",
            "acceptance to the first decoded token",
            buckets=LATENCY,
            registry=r,
        )
        self.tpot = Histogram(
            "pcgen_time_per_output_token_seconds",
            "decode time per output token after the first",
            buckets=FAST,
            registry=r,
        )
        self.generated_tokens = Counter(
            "pcgen_generated_tokens", "generated tokens (all outputs)", registry=r
        )
        self.prompt_tokens = Counter("pcgen_prompt_tokens", "prompt tokens of computed requests", registry=r)
        self.batch_size = Histogram(
            "pcgen_batch_size", "requests decoded together in one step", buckets=BATCH, registry=r
        )
        self.batch_rows = Histogram(
            "pcgen_batch_rows",
            "rows (beams or samples) decoded together in one step",
            buckets=BATCH,
            registry=r,
        )
        self.queue_depth = Gauge(
            "pcgen_queue_depth", "accepted requests waiting for a batch slot", registry=r
        )
        self.active = Gauge("pcgen_active_requests", "requests in the decoding batch", registry=r)
        self.rejected = Counter(
            "pcgen_rejected_requests", "requests refused before decoding", ["reason"], registry=r
        )  # queue_full, rate_limited, unauthorized, too_large
        self.cancelled = Counter(
            "pcgen_cancelled_requests", "decoding stopped early", ["reason"], registry=r
        )  # disconnect, timeout
        # cache and redis
        self.cache_hits = Counter("pcgen_cache_hits", "response cache hits", registry=r)
        self.cache_misses = Counter("pcgen_cache_misses", "response cache misses", registry=r)
        self.cache_errors = Counter(
            "pcgen_cache_errors", "response cache backend errors (failed open)", ["op"], registry=r
        )
        self.cache_shared = Counter(
            "pcgen_cache_shared", "requests answered by an identical in-flight computation", registry=r
        )
        self.ratelimit_errors = Counter(
            "pcgen_ratelimit_errors", "rate limiter backend errors (failed open)", registry=r
        )
        self.redis_up = Gauge(
            "pcgen_redis_up", "1 when Redis answers, 0 when down, -1 when not configured", registry=r
        )
        # constraints and guide
        self.constraint_outcomes = Counter(
            "pcgen_constraint_outcomes", "returned outputs by constraint outcome", ["outcome"], registry=r
        )  # satisfied, not_satisfied
        self.constraint_errors = Counter(
            "pcgen_constraint_errors", "rejected constraints by error type", ["type"], registry=r
        )
        self.dfa_states = Histogram(
            "pcgen_dfa_states", "token DFA states per request", buckets=STATES, registry=r
        )
        self.dfa_compile = Histogram(
            "pcgen_dfa_compile_seconds",
            "constraint compilation (cache lookups included)",
            buckets=FAST,
            registry=r,
        )
        self.guide_precompute = Histogram(
            "pcgen_guide_precompute_seconds", "guide table precompute per request", buckets=FAST, registry=r
        )
        self.step_time = Histogram(
            "pcgen_decode_step_seconds", "one batched decoding step (LM + guide)", buckets=FAST, registry=r
        )
        self.model_info = Info("pcgen_model", "served LM and HMM", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
