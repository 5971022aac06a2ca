"""Guided decoding (docs/method.md §6): the LM proposes, the guide's exact q(x) reweights.

    score(x) = log p_lm(x | prompt, prefix) + hmm_weight * log P_hmm(constraint | prefix, x)

Tokens with q(x) = 0 are never chosen, so every finished text satisfies the constraint within
max_new_tokens; `constraint_satisfied` is then re-checked on the decoded text by the independent checker.

    search = prepare(tokenizer, hmm, constraint, prompt, params)   compile, guide, first state  (any thread)
    (or prepare(..., compiled, ...): a CompiledConstraint compiled elsewhere, pc_core/compiled_constraint.py)
    decoder = BatchDecoder(lm); decoder.add(search)                prefill; join the batch
    finished = decoder.step()                                      one token for every search in the batch
    search.output                                                  set when it finished

`BatchDecoder` steps many searches together (each with its own constraint, guide state and strategy): one LM
forward for all their rows over a shared left-padded KV cache, one guide product for all their beams
(guide.plan / multiply / assemble). Searches join and leave between steps (continuous batching).
`generate()` is the one-request front door.
The pieces, re-exported here: pc_core/preparation.py (prepare, and what to blame when nothing satisfies a
request), pc_core/search.py (GuidedSearch: a beam-search or sampling step), pc_core/search_output.py
(streaming, judging, the output), pc_core/results.py (SequenceResult, GenerationOutput, StreamEvent).

With `suffix` / `stop` (DecodeParams) the DFA is compiled for the constraint with them (spec.Affixed): a token
that completes the suffix or a stop string ends its text like EOS (the DFA moves to an ended state), outputs
are judged by checker.judge_ids, and streamed text holds back what may still turn out to be the suffix or a
stop string.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from pc_core.constraints import Constraint
from pc_core.errors import TokenizerMismatch
from pc_core.guide import multiply
from pc_core.hmm import HMM
from pc_core.lm import KVBatch
from pc_core.params import DecodeParams
from pc_core.preparation import prepare
from pc_core.results import GenerationOutput, SequenceResult, StreamEvent
from pc_core.search import GuidedSearch

# the public names of decoding, wherever they live (results, preparation, search)
__all__ = [
    "BatchDecoder",
    "DecodeParams",
    "GenerationOutput",
    "GuidedSearch",
    "SequenceResult",
    "StreamEvent",
    "generate",
    "prepare",
    "run_to_end",
]


class BatchDecoder:
    """Steps many GuidedSearches together over one LM; add() between steps, collect finished ones from
    step()."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.searches: list[GuidedSearch] = []
        self.kv: KVBatch | None = None
        self.pending: list[torch.Tensor] = []  # per search: LM logits (rows, V_lm) for its next choice

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.searches)

    def add(self, search: GuidedSearch) -> None:
        """Prefill the prompt and join the batch (its rows start as copies of the prompt row)."""
        lm_device = next(self.lm.parameters()).device
        if lm_device != search.generated.device:
            raise TokenizerMismatch(
                f"the LM is on {lm_device} but the HMM is on {search.generated.device}; use one device"
            )
        search.bind_lm(self.lm)
        kv, logits = KVBatch.prefill(self.lm, search.lm_input)
        kv = kv.select(torch.zeros(search.rows, dtype=torch.long, device=logits.device))
        self.kv = kv if self.kv is None else KVBatch.concat([self.kv, kv])
        self.searches.append(search)
        self.pending.append(logits.expand(search.rows, -1))

    def step(self) -> list[GuidedSearch]:
        """One token for every active search; returns those that finished in this step (those that failed
        have `error` set and no output; the others in the batch carry on)."""
        if not self.searches:
            return []
        guided = [s for s in self.searches if s.guide is not None]  # unguided searches take q = None
        planned = [(s.guide, s.guide.plan(s.guide_state)) for s in guided]
        products = multiply(planned) if planned else []
        q_of = {id(s): guide.assemble(plan, p) for s, (guide, plan), p in zip(guided, planned, products)}
        qs = [q_of.get(id(s)) for s in self.searches]
        index, tokens, survivors, finished = [], [], [], []
        offset = 0
        for search, logits, q in zip(self.searches, self.pending, qs):
            rows_before = logits.shape[0]
            try:
                parents, next_tokens = search.choose(logits, q)
            except Exception as err:  # noqa: BLE001 - one bad search must not take its batch down
                search.error, search.done = err, True
            if search.done:
                finished.append(search)
            else:
                index.append(parents + offset)
                tokens.append(next_tokens)
                survivors.append(search)
            offset += rows_before
        self.searches = survivors
        if not survivors:
            self.kv, self.pending = None, []
            return finished
        self.kv, logits = self.kv.select(torch.cat(index)).forward(self.lm, torch.cat(tokens))
        self.pending = list(logits.split([s.rows for s in survivors]))
        return finished

    def cancel(self, search: GuidedSearch) -> None:
        """Drop a search's rows (client went away, deadline passed)."""
        if search not in self.searches:
            return
        keep, offset = [], 0
        for s, logits in zip(self.searches, self.pending):
            if s is not search:
                keep.append(torch.arange(offset, offset + logits.shape[0], device=logits.device))
            offset += logits.shape[0]
        i = self.searches.index(search)
        del self.searches[i], self.pending[i]
        self.kv = self.kv.select(torch.cat(keep)) if keep else None


def generate(
    lm: Any,
    tokenizer: Any,
    hmm: HMM,
    constraint: Constraint | dict | str,
    params: DecodeParams | None = None,
    *,
    prompt: str | Sequence[int] = "",
    on_stream: Callable[[StreamEvent], None] | None = None,
    **fields: Any,
) -> GenerationOutput:
    """Generate text that satisfies `constraint` (a spec of the constraint language, or parsed).

    `params`, or DecodeParams fields as keywords: generate(lm, tok, hmm, spec, max_new_tokens=32, num_beams=8)."""
    if fields:
        params = dataclasses.replace(params, **fields) if params else DecodeParams(**fields)
    return run_to_end(lm, prepare(tokenizer, hmm, constraint, prompt, params, on_stream))


def run_to_end(lm: Any, search: GuidedSearch) -> GenerationOutput:
    """Decode one prepared search alone until it finishes; its output, or its error raised."""
    decoder = BatchDecoder(lm)
    decoder.add(search)
    while not search.done:
        decoder.step()
    if search.error is not None:
        raise search.error
    return search.output
