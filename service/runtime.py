"""What a running server holds: settings, the request limits, metrics, models, the engine, Redis, the cache and
the limiter.

`Runtime.start()` (from the app's lifespan) creates the Redis client and the cache/limiter at once, then loads
the LM and the HMM and runs a warm-up generation in the background, so the health probes answer while the
models load; `/health/ready` turns 200 only when all of that has passed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from service.cache import MemoryBackend, RedisBackend, RedisHealth, ResponseCache, SingleFlight
from service.engine import Engine, EngineClient
from service.errors import Unavailable
from service.limits import ServerLimits
from service.metrics import Metrics
from service.ratelimit import RateLimiter
from service.settings import Settings

log = logging.getLogger(__name__)
WARMUP_CONSTRAINT = {"keywords": ["the"]}
SWITCH_INTERVAL_S = 0.0002  # see start()


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.limits = ServerLimits.from_settings(settings)  # every request is validated against these
        self.metrics = metrics or Metrics(settings.served_model)
        self.created = int(time.time())
        self.lm: Any = None
        self.tokenizer: Any = None
        self.hmm: Any = None
        self.engine: EngineClient | None = None  # an Engine; tests stand in a fake of the same shape
        self.fingerprints: dict[str, str] = {}
        self.device = "unknown"
        self.max_positions: int | None = None
        self.warmup = "pending" if settings.warmup else "skipped"
        self.error: str | None = None
        self.redis: Any = None
        self.health = RedisHealth(None, self.metrics)
        self.cache = ResponseCache(None, self.metrics, settings.cache_ttl_s)
        self.limiter = RateLimiter(None, self.metrics)
        self.singleflight = SingleFlight()
        self._loader: asyncio.Task | None = None
        self.compile_pool: Any = None
        self.on_limits: list[Callable[[], None]] = []  # called when the loaded model changes the caps
        self.on_fatal: Callable[[str], None] | None = None  # `pcgen serve` stops the server (and exits 1)

    # ------------------------------------------------------------------ state

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    @property
    def ready(self) -> bool:
        return self.loaded and self.warmup in ("ok", "skipped") and self.error is None

    def require_engine(self) -> EngineClient:
        if self.engine is None or not self.ready:
            detail = f": {self.error}" if self.error else " (models loading)"
            raise Unavailable(f"the server is not ready{detail}", headers={"Retry-After": "5"})
        return self.engine

    # ------------------------------------------------------------------ lifecycle

    async def start(self, load: bool = True) -> None:
        settings = self.settings
        # The decode loop releases the GIL in every torch op and must win it back each time; at Python's
        # default 5 ms interval, a thread busy with other requests' JSON makes it wait up to 5 ms per op
        # (a flood of cheap requests made an ordinary one 60x slower). docs/benchmarks.md, "noisy neighbours".
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        if settings.redis_url:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self.redis = aioredis.Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
                retry=Retry(NoBackoff(), 1),  # one reconnect attempt: a restarted Redis is picked up at once
                health_check_interval=0,
            )
            self.health = RedisHealth(self.redis, self.metrics, timeout_s=settings.redis_timeout_s)
            await self.health.ping()
            if self.health.state == "down":
                log.warning("redis at the configured URL is not answering; failing open until it does")
            self.health.start_probing()
        if settings.cache:
            if self.redis is not None:
                self.cache = ResponseCache(
                    RedisBackend(self.redis), self.metrics, settings.cache_ttl_s, self.health
                )
            elif settings.cache_size > 0:
                backend = MemoryBackend(settings.cache_size, settings.response_cache_bytes)
                self.cache = ResponseCache(backend, self.metrics, settings.cache_ttl_s)
                self.metrics.caches.watch("response", backend)
        self.limiter = RateLimiter(
            settings.rate_limit,
            self.metrics,
            self.redis,
            settings.redis_url,
            self.health if self.redis is not None else None,
        )
        if load:
            self._loader = asyncio.create_task(self._load())

    async def stop(self) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        await self.health.stop_probing()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)
        if self.redis is not None:
            try:
                await self.redis.aclose()
            except Exception:  # noqa: BLE001 - shutting down
                pass

    async def _load(self) -> None:
        settings = self.settings
        try:
            started = time.perf_counter()
            await asyncio.to_thread(self._load_models)
            log.info("models loaded in %.1f s (device %s)", time.perf_counter() - started, self.device)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - reported by /health/ready, logged here
            self._fatal(f"loading failed: {type(err).__name__}: {err}")
            return
        engine = Engine(
            self.lm,
            self.tokenizer,
            self.hmm,
            self.metrics,
            max_batch_size=settings.max_batch_size if settings.batching else 1,
            max_queue=settings.max_queue,
            prepare_workers=settings.prepare_workers,
            max_positions=self.max_positions,
            compile_pool=self.compile_pool,
        )
        engine.start()
        self.engine = engine
        self._apply_model_limits()
        if settings.warmup:
            await self._warmup()
        self._freeze_startup_objects()

    def _freeze_startup_objects(self) -> None:
        """Move what start-up made (the tokenizer's and dictionaries' Python objects, the models' wrappers, the
        warm-up's caches) out of the garbage collector's view. A full collection traverses every tracked
        object while holding the GIL, so it stalls every decoding thread: with a 50,257-token tokenizer and
        a few compiled schemas in a process (~257k objects), one took 141-156 ms; frozen, under 0.1 ms. Start-up
        objects live as long as the process, so nothing collectable is frozen for good."""
        gc.collect()
        gc.freeze()
        self.metrics.gc_frozen.set(gc.get_freeze_count())
        log.info("start-up objects frozen out of the garbage collector's view: %d", gc.get_freeze_count())

    def _load_models(self) -> None:
        from pc_core.constraints.vocab import tokenizer_fingerprint, vocab_tables
        from pc_core.constraints.words import load_dictionaries
        from pc_core.hmm import HMM
        from pc_core.lm import check_pairing, lm_fingerprint, load_lm

        settings = self.settings
        lm, tokenizer = load_lm(settings.lm, device=settings.device, dtype=settings.dtype)
        device = next(lm.parameters()).device
        hmm = HMM.load(settings.hmm, device=device)
        check_pairing(hmm, tokenizer, settings.lm, allow_mismatch=settings.allow_tokenizer_mismatch)
        vocab_tables(tokenizer)  # per-tokenizer tables for constraint compilation, built once up front
        load_dictionaries()  # keyword inflections: loaded here, not inside the first request that needs them
        config = lm.config
        self.max_positions = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        self.fingerprints = {
            "lm": lm_fingerprint(lm),
            "hmm": hmm.fingerprint,
            "tokenizer": tokenizer_fingerprint(tokenizer),
        }
        self.device = str(device)
        self.metrics.devices.watch(self.device)  # pcgen_device_memory_bytes on CUDA; nothing on CPU
        self.lm, self.tokenizer, self.hmm = lm, tokenizer, hmm
        self._bound_caches()
        if settings.compile_workers:
            from service.compile_pool import CompilePool

            self.compile_pool = CompilePool(
                tokenizer,
                settings.compile_workers,
                settings.compile_backlog,
                settings.dfa_cache_bytes,
                metrics=self.metrics,
                light_workers=settings.compile_light_workers,
            )
            if settings.compile_warm_up:
                self.compile_pool.warm_up()
            configured = {"light": settings.compile_light_workers, "heavy": settings.compile_workers}
            self.metrics.compile_workers.watch(self.compile_pool, configured)  # pcgen_compile_workers
        self.metrics.model_info.info(
            {
                "lm": settings.served_model,
                "hmm": settings.hmm,
                "hmm_hidden_size": str(hmm.hidden_size),
                "vocab_size": str(hmm.vocab_size),
                "device": self.device,
                "dtype": str(next(lm.parameters()).dtype).removeprefix("torch."),
            }
        )

    def _apply_model_limits(self) -> None:
        """The caps the loaded model allows: a request's horizon must leave room for at least one prompt
        token in the context (ServerLimits.from_settings lowers it; the OpenAPI document follows)."""
        self.limits = ServerLimits.from_settings(self.settings, self.max_positions)
        for listener in self.on_limits:
            listener()

    def _bound_caches(self) -> None:
        """The settings' byte bounds on the per-process caches that grow with traffic, exported as metrics."""
        from pc_core.constraints import vocab
        from pc_core.constraints.compiler import COMPILED
        from pc_core.guide import GUIDE_TABLES

        COMPILED.resize(self.settings.dfa_cache_bytes)
        GUIDE_TABLES.resize(self.settings.guide_cache_bytes)
        from pc_core.constraints.json_syntax import TOKEN_BYTES
        from pc_core.constraints.spec import PARSED
        from pc_core.constraints.token_product import COMPONENTS
        from pc_core.constraints.words import INFLECTIONS, KEYWORD_FORMS
        from service.json_body import REFUSED

        caches = (("dfa", COMPILED), ("guide", GUIDE_TABLES), ("vocab", vocab.VOCAB_TABLES), ("parsed", PARSED),
                  ("inflections", INFLECTIONS), ("keyword_forms", KEYWORD_FORMS), ("refused", REFUSED), ("folded", COMPONENTS),
                  ("json_token_bytes", TOKEN_BYTES))  # fmt: skip
        for name, cache in caches:
            self.metrics.caches.watch(name, cache)

    def _fatal(self, error: str) -> None:
        """The models cannot serve: say so in readiness and the log, and let `pcgen serve` exit (on_fatal)
        rather than answer 503 forever."""
        self.error = error
        log.error("%s", error)
        if self.on_fatal is not None:
            self.on_fatal(error)

    async def _warmup(self) -> None:
        from pc_core.constraints import parse_constraint
        from pc_core.params import DecodeParams
        from service.generation import GenerationSpec

        assert self.engine is not None
        n = min(8, self.limits.max_new_tokens)
        generation = GenerationSpec("", parse_constraint(WARMUP_CONSTRAINT), DecodeParams(max_new_tokens=n))
        started = time.perf_counter()
        try:
            job = await self.engine.submit(generation, observed=False)  # not a client's: not in the metrics
            output = await asyncio.wait_for(job.future, self.settings.request_timeout_s)
            if not all(seq.constraint_satisfied for seq in output.sequences):
                raise RuntimeError("the warm-up output does not satisfy its constraint")
        except Exception as err:  # noqa: BLE001 - reported by /health/ready
            self.warmup = "failed"
            self._fatal(f"warm-up failed: {type(err).__name__}: {err}")
            return
        self.warmup = "ok"
        log.info("warm-up generation passed in %.2f s; ready", time.perf_counter() - started)
