"""What to generate, independent of the HTTP shape it came in: built once per request by the request model
(`to_spec`, `to_specs`), validated by then, and carried unchanged through the cache, the engine and the decoder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pc_core.constraints import Constraint, canonical_json
from pc_core.params import DecodeParams

CACHE_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class GenerationSpec:
    prompt: str | tuple[int, ...]  # text, or token ids (OpenAI's token prompts)
    constraint: Constraint | None  # None: no constraint (OpenAI requests without one), the LM's own text
    params: DecodeParams
    # DecodeParams field -> the request body's name for it (OpenAI's `max_tokens`), for error paths
    field_names: dict[str, str] = field(default_factory=dict, compare=False)

    def cache_key(self, fingerprints: dict[str, str]) -> str:
        """SHA-256 over the canonical request, the model fingerprints and the cache schema version. Sampling
        parameters count only when sampling, beam parameters only for beam search."""
        params: dict[str, Any] = asdict(self.params)
        unused = (
            ("num_beams", "length_penalty") if self.params.do_sample else ("temperature", "top_p", "seed")
        )
        for name in (*unused, "time_budget_s"):
            params.pop(name)
        material = {
            "schema": CACHE_SCHEMA_VERSION,
            "models": fingerprints,
            "prompt": self.prompt,
            "constraint": canonical_json(self.constraint) if self.constraint is not None else None,
            "params": params,
        }
        raw = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()
