"""The exact guide inside transformers' `model.generate(...)`: a LogitsProcessor, as the reference system
(Ctrl-G) is used.

    processor = ConstraintLogitsProcessor(hmm, tokenizer, {"keywords": ["dog", "frisbee"]},
                                          prompt_length=input_ids.shape[1], max_new_tokens=32)
    out = model.generate(input_ids, max_new_tokens=32, num_beams=8, num_return_sequences=4,
                         logits_processor=LogitsProcessorList([processor]), pad_token_id=tokenizer.eos_token_id)

At every step transformers passes the rows it is extending (beams, samples, several prompts) and their scores;
the processor returns, per row,

    log_softmax(scores + hmm_weight * log q(x))       q(x) = P_hmm(constraint | generated so far, x)

with q from ConstraintGuide.next_log_probs (exactly -inf where the constraint could no longer be met within
max_new_tokens), the same distribution as pc_core.decoding's own search (GuidedSearch.next_distribution).
Beam search reorders and duplicates rows between calls, so a row's guide state is found from its generated
ids (everything after `prompt_length`): the states of the previous step are kept by id prefix, and each row
advances its parent's by one token; all rows take one batched guide step (duplicates once). Rows whose
generated ids contain EOS have finished (transformers pads them or keeps them as spent beams): they are
given EOS only. A row that reaches max_new_tokens (the horizon) can only end, with EOS.

Only the generated ids are constrained (judged cut at the first EOS, like everything in pcgen); check outputs
with `pc_core.check_ids(constraint, tokenizer, ids[prompt_length:])`. Beam search in transformers fills
missing outputs with placeholders when fewer than num_return_sequences hypotheses finish with a finite score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from pc_core.constraints import Constraint, compile_constraint, parse_constraint
from pc_core.constraints.compiler import DEFAULT_MAX_STATES, DEFAULT_TIME_BUDGET_S, explain_unsatisfiable
from pc_core.constraints.dfa import TokenDFA
from pc_core.errors import BlocklistInteraction, TokenizerMismatch, UnsatisfiableConstraint
from pc_core.guide import ConstraintGuide, GuideError, GuideState, batched_next_log_probs
from pc_core.hmm import HMM
from pc_core.kernels import emission_dtype
from pc_core.logspace import NEG_INF


class ConstraintLogitsProcessor(LogitsProcessor):
    """Add hmm_weight * log P_hmm(constraint | prefix, x) to transformers' scores (see the module docstring).

    `prompt_length`: the width of the input_ids given to generate (left padding included); `max_new_tokens`:
    the guide's horizon, the same number as generate's max_new_tokens; `min_new_tokens`: no EOS before it
    (the guide accounts for it); `guide_emission_dtype`: as DecodeParams' (auto: the decoder's default). One processor serves one constraint for any number of prompts and rows; it can
    be reused for another generate call with the same prompt length."""

    def __init__(
        self,
        hmm: HMM,
        tokenizer: Any,
        constraint: Constraint | dict | str,
        prompt_length: int,
        max_new_tokens: int,
        hmm_weight: float = 1.0,
        *,
        min_new_tokens: int = 0,
        eos_token_id: int | None = None,
        max_states: int = DEFAULT_MAX_STATES,
        time_budget_s: float = DEFAULT_TIME_BUDGET_S,
        compile_dfa: Callable[..., TokenDFA] = compile_constraint,
        guide_emission_dtype: str = "auto",
    ) -> None:
        if len(tokenizer) != hmm.vocab_size:
            raise TokenizerMismatch(
                f"the tokenizer has {len(tokenizer)} tokens but the HMM has {hmm.vocab_size}"
            )
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 0:
            raise GuideError(f"prompt_length must be an integer >= 0, got {prompt_length!r}")
        if not hmm_weight >= 0:
            raise GuideError(f"hmm_weight must be >= 0, got {hmm_weight!r}")
        self.constraint = parse_constraint(constraint)
        self.tokenizer, self.hmm = tokenizer, hmm
        self.prompt_length, self.hmm_weight = prompt_length, float(hmm_weight)
        self.eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if self.eos is None:
            raise GuideError("the tokenizer has no EOS token; give eos_token_id")
        compile_args = {"max_states": max_states, "time_budget_s": time_budget_s}
        guide_args = {
            "horizon": max_new_tokens,
            "min_new_tokens": min_new_tokens,
            "emission_dtype": emission_dtype(hmm.device, guide_emission_dtype),
        }  # as the decoder's
        self.dfa = compile_dfa(self.constraint, tokenizer, **compile_args)
        try:
            self.guide = ConstraintGuide(hmm, self.dfa, **guide_args)
        except BlocklistInteraction:  # the blocklist beside the DFA could dead-end it: one exact automaton
            self.dfa = compile_dfa(self.constraint, tokenizer, blocklist_mask=False, **compile_args)
            self.guide = ConstraintGuide(hmm, self.dfa, **guide_args)
        if not bool(self.guide.tables.feasible[max_new_tokens][self.dfa.initial_state]):
            needed = int(self.dfa.steps_to_accept[self.dfa.initial_state])
            detail = (
                f"it needs at least {needed} tokens"
                if needed >= 0
                else explain_unsatisfiable(self.constraint, tokenizer)
            )
            raise UnsatisfiableConstraint(
                "constraint", f"cannot be satisfied within max_new_tokens={max_new_tokens}: {detail}"
            )
        self.horizon = max_new_tokens
        # the previous call's states: generated-id prefix -> row of `_state`
        self._rows: dict[tuple[int, ...], int] = {}
        self._state: GuideState | None = None

    # ------------------------------------------------------------------ transformers' interface

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] < self.prompt_length:
            raise GuideError(
                f"input_ids have {input_ids.shape[1]} columns, fewer than prompt_length={self.prompt_length}"
            )
        v = self.hmm.vocab_size
        if scores.shape[1] < v:
            raise TokenizerMismatch(f"the LM has {scores.shape[1]} output logits, fewer than the {v} tokens")
        keys = [tuple(ids) for ids in input_ids[:, self.prompt_length :].tolist()]
        live, finished = [], []  # rows to guide; rows that ended (EOS) or reached the horizon: EOS only
        for i, ids in enumerate(keys):
            if self.eos in ids or len(ids) >= self.horizon:
                finished.append(i)
            elif all(0 <= x < v for x in ids):  # else an impossible beam (-inf) that took a padded-head id
                live.append(i)
        bias = torch.full(scores.shape, NEG_INF, dtype=torch.float32, device=scores.device)
        if finished:
            bias[finished, self.eos] = 0.0
        if live:
            unique = list(dict.fromkeys(keys[i] for i in live))
            state = self._states_for(unique)
            q = batched_next_log_probs([(self.guide, state)])[0].to(scores.device)  # (U, V)
            weighted = torch.where(torch.isneginf(q), NEG_INF, q * self.hmm_weight)
            where = {key: row for row, key in enumerate(unique)}
            bias[live, :v] = weighted[[where[keys[i]] for i in live]]
        guided = scores.float() + bias
        # normalised like GuidedSearch.next_distribution; a row with no possible token stays -inf (no NaN)
        normaliser = torch.logsumexp(guided, dim=-1, keepdim=True).nan_to_num(neginf=0.0)
        return (guided - normaliser).to(scores.dtype)

    # ------------------------------------------------------------------ states by generated-id prefix

    def _states_for(self, keys: list[tuple[int, ...]]) -> GuideState:
        """One GuideState with a row per key (distinct generated-id prefixes of one length)."""
        length = len(keys[0])
        if length == 0:
            state = self.guide.init_state(len(keys))
        else:
            parents = {key[:-1] for key in keys}
            if self._state is None or not parents <= self._rows.keys():  # not the previous step's children
                self._rows, self._state = self._rebuild(sorted(parents))
            rows = [self._rows[key[:-1]] for key in keys]
            state = self.guide.advance(self._state.select(rows), [key[-1] for key in keys])
        self._rows = {key: row for row, key in enumerate(keys)}
        self._state = state
        return state

    def _rebuild(self, prefixes: Sequence[tuple[int, ...]]) -> tuple[dict[tuple[int, ...], int], GuideState]:
        """States for prefixes seen for the first time (the processor joined mid-generation, or was reused):
        from the start, one token at a time, all prefixes together."""
        state = self.guide.init_state(len(prefixes))
        for t in range(len(prefixes[0])):
            state = self.guide.advance(state, [prefix[t] for prefix in prefixes])
        return {prefix: row for row, prefix in enumerate(prefixes)}, state
