"""The REST shape of a generation, in one place: `POST /generate`'s answer (routes/generate.py), the outputs the
response cache keeps and every endpoint reads (serving.Result), and `pcgen generate --json` (pcgen/cli_generate.py)
all come from here, so they cannot drift apart."""

from __future__ import annotations

import math
from typing import Any

from pc_core.constraints import Constraint
from pc_core.constraints.checker import keyword_matches
from pc_core.constraints.nodes import expanded_forms
from pc_core.constraints.spec import split_affixes
from pc_core.results import GenerationOutput

KEYWORD_FORMS_SHOWN = 100  # keyword entries echoed in a /generate response
# the timings of an answer that did not compute them (the response cache; no queue on the command line)
ZERO_TIMINGS = {"queue_ms": 0.0, "dfa_ms": 0.0, "precompute_ms": 0.0, "decode_ms": 0.0}


def outputs_json(output: GenerationOutput, constraint: Constraint | None) -> list[dict[str, Any]]:
    """The outputs as the REST API shows them, with the character spans of the keywords found in the span
    (`matches`), and `full_text` (span + suffix) when there is a suffix. `constraint` None: unconstrained."""
    body = split_affixes(constraint)[0] if constraint is not None else None
    out = [
        {
            "text": s.text,
            "token_ids": list(s.token_ids),
            "constraint_satisfied": bool(s.constraint_satisfied),
            "finish_reason": s.finish_reason,
            "logprob": s.logprob if math.isfinite(s.logprob) else -1e30,  # JSON has no -Infinity
            "matches": keyword_matches(body, s.text) if body is not None else [],
        }
        for s in output.sequences
    ]
    if output.suffix is not None:
        for item, s in zip(out, output.sequences):
            item["full_text"] = s.full_text
            item["ranking"] = output.ranking
    for item, s in zip(out, output.sequences):
        if s.logprobs is not None:  # [token id, logprob, [[id, logprob], ...]] per token id
            item["logprobs"] = [[t, lp, [list(a) for a in top]] for t, lp, top in s.logprobs]
    return out


def with_total(timings: dict[str, float], total_ms: float) -> dict[str, float]:
    """The five timings an answer reports (those not measured are 0), total_ms set, rounded to the µs."""
    return {k: round(v, 3) for k, v in {**ZERO_TIMINGS, **timings, "total_ms": total_ms}.items()}


def generation_body(
    outputs: list[dict[str, Any]],
    usage: dict[str, int],
    timings: dict[str, float],
    dfa_states: int | None,
    guide: str | None,
    constraint: Constraint,
    full_text: bool = True,
) -> dict[str, Any]:
    """/generate's answer without id, model and cached: what `pcgen generate --json` prints. The keywords'
    accepted forms are listed only here, for an answer: a request that is refused (a flood of rejected
    constraints) must not pay for expanding hundreds of keywords."""
    if not full_text:  # return_full_text: false
        outputs = [{k: v for k, v in out.items() if k != "full_text"} for out in outputs]
    return {
        "outputs": outputs,
        "usage": usage,
        "timings": timings,
        "dfa_states": dfa_states,
        "guide": guide,
        "keywords": expanded_forms(constraint, KEYWORD_FORMS_SHOWN),
    }
