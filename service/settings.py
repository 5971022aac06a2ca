"""Service configuration: every field is an environment variable `PCGEN_<NAME>` and a `pcgen serve` flag.

Values are validated when the server starts; a bad value stops it with a message naming the variable and
the flag (see `describe_error`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pc_core.constraints.compiler import DEFAULT_MAX_STATES
from pc_core.guide import DEFAULT_MAX_HORIZON
from pc_core.lm import DTYPES

DEVICES = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
API_KEY = re.compile(r"^[\x21-\x7e]{8,256}$")  # printable ASCII without spaces


class Settings(BaseSettings):
    """`pcgen serve` settings (env prefix `PCGEN_`)."""

    model_config = SettingsConfigDict(env_prefix="PCGEN_", extra="ignore", validate_default=True)

    # models
    lm: str = Field("gpt2-large", description="causal LM: a local path or a Hugging Face hub id")
    hmm: str = Field("", description="HMM checkpoint: directory, GeLaTo file or hub id (required)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: str = Field("auto", description="LM dtype: auto (bf16/fp16 on GPU, fp32 on CPU), float32, ...")
    model_name: str | None = Field(None, description="model id reported by the API (default: the LM)")
    allow_tokenizer_mismatch: bool = Field(
        False,
        description="load an HMM whose recorded tokenizer fingerprint differs from the LM's (a warning)",
    )

    # server
    host: str = Field("127.0.0.1", description="interface to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="also serve the Prometheus metrics, without authentication, on this port (same host); "
        "unset: off",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info")
    playground: bool = Field(
        True, description="serve the web playground at / (false for locked-down deployments)"
    )
    warmup: bool = Field(True, description="run a warm-up generation before reporting ready")

    # redis, cache, rate limits
    redis_url: str | None = Field(None, description="redis://host:port/db; unset: in-process cache+limits")
    cache: bool = Field(True, description="cache responses of deterministic requests")
    cache_ttl_s: int = Field(3600, ge=1, description="response cache TTL in seconds")
    cache_size: int = Field(1024, ge=0, description="in-process cache entries (0 disables that cache)")
    response_cache_bytes: int = Field(64 * 2**20, ge=0, description="in-process response cache, bytes")
    rate_limit: str | None = Field(None, description='per API key (or client IP), e.g. "60/minute"')
    redis_timeout_s: float = Field(
        0.1, gt=0, le=30, description="Redis socket timeout; past it the request fails open (no cache)"
    )

    # security
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated Bearer keys; empty: no authentication"
    )
    metrics_public: bool = Field(False, description="serve /metrics without an API key")
    docs_public: bool = Field(False, description="serve /docs and /openapi.json without an API key")

    # scheduling
    max_batch_size: int = Field(8, ge=1, le=512, description="requests decoded together in one step")
    max_queue: int = Field(64, ge=1, description="requests waiting for a batch slot before 429")
    batching: bool = Field(True, description="continuous batching (off: one request at a time)")
    prepare_workers: int = Field(2, ge=1, le=64, description="threads preparing requests (guide precompute)")
    compile_workers: int = Field(
        1,
        ge=0,
        le=64,
        description="processes compiling heavy constraints, at a lower OS priority (0: no compile processes; "
        "constraints compile in the preparing threads)",
    )
    compile_warm_up: bool = Field(
        True,
        description="start the compile processes at startup, so the first constraint that needs one does not wait "
        "~1.5 s for it (off: on the first such compile; saves their memory while none is needed)",
    )
    compile_light_workers: int = Field(
        1, ge=1, le=64, description="processes compiling light constraints (a lane heavy ones never hold)"
    )
    compile_backlog: int = Field(
        4, ge=1, description="constraints one client (API key or address) may have waiting to compile"
    )
    trusted_proxies: str = Field(
        "",
        description="comma-separated addresses or CIDR blocks of proxies whose X-Forwarded-For / Forwarded "
        'headers name the client (like uvicorn\'s --forwarded-allow-ips; "*" trusts every peer)',
    )
    request_timeout_s: float = Field(120.0, gt=0, description="per-request deadline (504 after it)")
    body_timeout_s: float = Field(10.0, gt=0, description="time to receive a request body (408 after it)")

    # memory: every cache that grows with traffic, in bytes (size them with docs in service/README.md)
    dfa_cache_bytes: int = Field(256 * 2**20, ge=0, description="compiled constraints (and rejections)")
    guide_cache_bytes: int = Field(1024 * 2**20, ge=0, description="guide tables (per constraint, horizon)")

    # request limits
    max_new_tokens: int = Field(64, ge=1, le=DEFAULT_MAX_HORIZON, description="cap on max_new_tokens")
    max_prompt_chars: int = Field(8000, ge=1, description="cap on prompt length in characters")
    max_suffix_chars: int = Field(32_000, ge=1, le=32_000, description="cap on an infilling suffix's length")
    max_keywords: int = Field(16, ge=1, description="cap on required keywords in a constraint")
    max_forbidden: int = Field(
        2000, ge=0, description="cap on forbidden keywords (blocklists are masked beside the guide)"
    )
    max_keyword_chars: int = Field(100, ge=1, description="cap on one keyword's length")
    max_beams: int = Field(16, ge=1, description="cap on num_beams and num_return_sequences")
    max_body_bytes: int = Field(1_048_576, ge=256, description="request bodies above this get 413")
    max_states: int = Field(
        DEFAULT_MAX_STATES, ge=2, description="cap on a constraint's DFA states (memory; the guide's cost has "
        "its own budget: guide_budget_bytes / guide_budget_gflops)"
    )  # fmt: skip
    guide: Literal["auto", "exact"] = Field(
        "auto", description="auto: the exact guide within the budget, else the factored guide (the constraint "
        "still holds, steering is approximate); exact: refuse constraints past the budget (422)"
    )  # fmt: skip
    guide_budget_bytes: int | None = Field(
        None, ge=0, description="exact guide's tables, bytes at most (unset: 512 MiB on CPU, 4 GiB on GPU)"
    )
    guide_budget_gflops: float | None = Field(
        None, ge=0, description="exact guide's precompute, GFLOP at most (unset: 18 on CPU, 20,000 on GPU)"
    )
    guide_table_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="guide rows stored in: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16"
    )
    guide_emission_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="emission the guide step multiplies with: auto (bfloat16 on GPU and on CPUs with a bfloat16 "
        "product, else float32), float32, bfloat16 (error bound: docs/method.md §5.9)",
    )
    compile_time_budget_s: float = Field(10.0, gt=0, le=600, description="cap on compiling one constraint")

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        from service.client_identity import parse_networks

        parse_networks(value.split(","))  # a ValueError naming the entry that is not an address or block
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICES.match(value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}; use one of {', '.join(DTYPES)}")
        return value

    @field_validator("redis_url", "rate_limit", "model_name", "metrics_port", "guide_budget_bytes",
                     "guide_budget_gflops", mode="before")  # fmt: skip
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_port")
    @classmethod
    def _metrics_port(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value == info.data.get("port"):
            raise ValueError(f"must differ from the API port ({value}): the metrics listener has its own")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(REDIS_SCHEMES):
            raise ValueError(
                f"must start with one of {', '.join(REDIS_SCHEMES)} (got {value.split(':')[0]}:...)"
            )
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as err:
            raise ValueError(
                f'{value!r} is not a rate limit such as "60/minute" or "10/second;500/hour"'
            ) from err
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_keys(cls, value: object) -> object:
        if isinstance(value, str):
            value = [k.strip() for k in value.split(",") if k.strip()]
        if isinstance(value, (list, tuple)):
            for i, key in enumerate(value):
                if not isinstance(key, str) or not API_KEY.match(key):
                    raise ValueError(
                        f"key #{i + 1} must be 8-256 printable ASCII characters without spaces or commas"
                    )
        return value

    @field_validator("hmm", "lm")
    @classmethod
    def _required(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("required (a local path or a Hugging Face hub id)")
        return value.strip()

    @property
    def served_model(self) -> str:
        """The model id of the API and the metrics' `model_name`: --model-name, else the LM's short name."""
        return self.model_name or short_name(self.lm)


def short_name(source: str) -> str:
    """A model source as an id: a local directory's name (not its absolute path), or the hub id as given."""
    path = Path(source).expanduser()
    if source.startswith(("/", ".", "~")) or path.exists():
        return path.resolve().name or source
    return source


def env_name(field: str) -> str:
    return f"PCGEN_{field.upper()}"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def describe_error(err: ValidationError) -> str:
    """One line per problem, naming the environment variable and the flag."""
    lines = ["invalid pcgen serve settings:"]
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        where = f"{env_name(field)} / {flag_name(field)}" if field else "settings"
        message = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)
