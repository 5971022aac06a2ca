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

With `suffix` / `stop` (DecodeParams) the DFA is compiled for the constraint with them (spec.Affixed): a token
that completes the suffix or a stop string ends its text like EOS (the DFA moves to an ended state), outputs
are judged by checker.judge_ids, and streamed text holds back what may still turn out to be the suffix or a
stop string.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pc_core.compiled_constraint import CompiledConstraint, compile_request
from pc_core.constraints import (
    Constraint,
    check_ids,
    compile_constraint,
    decode_continuation,
)
from pc_core.constraints.checker import first_stop, judge_ids
from pc_core.constraints.compiler import explain_unsatisfiable
from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.spec import WordCount, with_affixes
from pc_core.errors import (
    BlocklistInteraction,
    ConstraintTooComplex,
    TokenizerMismatch,
    UnsatisfiableConstraint,
)
from pc_core.factored_guide import build_guide
from pc_core.guide import ConstraintGuide, GuideState, multiply
from pc_core.hmm import HMM
from pc_core.infill import SuffixPlan, fim_prompt, plan_suffix, rank_finished, terminal_vector
from pc_core.lazy_guide import build_lazy_guide
from pc_core.lm import KVBatch, max_positions
from pc_core.logspace import NEG_INF
from pc_core.params import DecodeParams
from pc_core.token_scores import LogitAdjustment, LogprobTrail, TokenLogprob


@dataclass
class SequenceResult:
    text: str  # the span: before the suffix or the stop string, cut at EOS
    token_ids: list[int]  # everything generated (the suffix's tokens included)
    constraint_satisfied: bool
    finish_reason: str  # "eos" (EOS, or the suffix completed) | "stop" (a stop string) | "length"
    logprob: float  # LM log-likelihood of the continuation (EOS, the suffix's tokens included when generated)
    full_text: str = ""  # the span followed by the suffix (the span itself without a suffix)
    logprobs: list[TokenLogprob] | None = None  # with params.logprobs: one per token id (token_scores.py)

    def __post_init__(self) -> None:
        self.full_text = self.full_text or self.text


@dataclass
class GenerationOutput:
    sequences: list[SequenceResult]
    prompt_tokens: int
    dfa_states: int
    timings: dict[str, float] = field(default_factory=dict)  # dfa_ms, precompute_ms, decode_ms
    suffix: str | None = None
    ranking: str | None = None  # with a suffix: what `logprob` and the beams' order cover (pc_core.infill)
    guide: str | None = (
        "exact"  # which guide ran: exact, factored past the exact budget (pc_core.factored_guide), lazy past
        # the explicit automaton's budget (pc_core.lazy_guide)
    )

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": sum(len(s.token_ids) for s in self.sequences),
        }


@dataclass
class StreamEvent:
    """Text settled since the last event for output `index` (beam search: the beams' common prefix)."""

    index: int
    text: str
    token_ids: list[int]


@dataclass
class _Hypothesis:
    ids: list[int]
    lm_logprob: float
    finish_reason: str  # "eos", "length", or "text" (a stop string or the suffix: judged when finishing)
    judgement: tuple | None = None  # (span text, satisfied, finish reason, full text), once judged
    logprobs: list[TokenLogprob] | None = None  # set by LogprobTrail when params.logprobs asks for them
    scored_tokens: int = 0  # tokens scored after the generated ones (the suffix's rest, pc_core.infill)


# ---------------------------------------------------------------------------------------------- prepare


def prepare(
    tokenizer: Any,
    hmm: HMM,
    constraint: Constraint | dict | str | CompiledConstraint,
    prompt: str | Sequence[int] = "",
    params: DecodeParams | None = None,
    on_stream: Callable[[StreamEvent], None] | None = None,
    *,
    deadline: float | None = None,
) -> GuidedSearch:
    """Build the constraint's guide and the search's first state; the constraint is compiled here unless it
    comes as a CompiledConstraint with its automaton (a server compiles in worker processes). Raises
    ConstraintError (incl. UnsatisfiableConstraint within max_new_tokens) for the constraint, TokenizerMismatch
    for the models, and, for an automaton compiled elsewhere whose blocklist mask could dead-end the rest of
    the constraint, BlocklistInteraction (compile it with blocklist_mask=False and call again). `deadline`
    (time.perf_counter()) stops the guide's precompute once passed."""
    params = params or DecodeParams()
    if len(tokenizer) != hmm.vocab_size:
        raise TokenizerMismatch(f"the tokenizer has {len(tokenizer)} tokens but the HMM has {hmm.vocab_size}")
    prompt_ids = (
        list(prompt) if not isinstance(prompt, str) else tokenizer.encode(prompt, add_special_tokens=False)
    )
    started = time.perf_counter()
    compiled = compile_request(constraint, params, tokenizer)  # body, constraint, judged, dfa
    dfa_ms = (time.perf_counter() - started) * 1000
    suffix_plan = plan_suffix(tokenizer, params.suffix)  # infilling: the LM writes the junction, not the rest
    if suffix_plan is not None:
        params = dataclasses.replace(params, suffix=suffix_plan.junction)
    terminal = terminal_vector(hmm, suffix_plan)  # the HMM conditions on the whole suffix
    dfa, guide, precompute_ms = _guide(tokenizer, hmm, compiled, params, deadline, terminal)
    try:
        startable = _can_start(guide, dfa, params.max_new_tokens)
    except ConstraintTooComplex:  # the lazy search could not decide: the explicit automaton, full budget
        if not getattr(dfa, "lazy", False):
            raise
        compiled = compiled.with_dfa(compile_constraint(compiled.judged, tokenizer, max_states=params.max_states,
                                                        time_budget_s=params.time_budget_s))  # fmt: skip
        dfa, guide, precompute_ms = _guide(tokenizer, hmm, compiled, params, deadline, terminal)
        startable = _can_start(guide, dfa, params.max_new_tokens)
    if not startable:
        raise _unsatisfiable(tokenizer, compiled.body, dfa, params)
    context = prompt_ids[-params.hmm_context_tokens :] if params.hmm_context_tokens else []
    search = GuidedSearch(tokenizer, compiled, dfa, guide, params, prompt_ids, on_stream)
    search.suffix_plan, search.prompt_ids = suffix_plan, prompt_ids
    search.guide_state = guide.init_state(params.rows, hmm_context=context)
    search.timings = {"dfa_ms": dfa_ms, "precompute_ms": precompute_ms}
    return search


def _can_start(guide: Any, dfa: TokenDFA, horizon: int) -> bool:
    """Is some text of `horizon` tokens accepted? The lazy guide searches (pc_core.lazy_guide)."""
    if getattr(guide, "can_start", None) is not None:
        return guide.can_start()
    return bool(guide.tables.feasible[horizon][dfa.initial_state])


def _unsatisfiable(
    tokenizer: Any, constraint: Constraint, dfa: TokenDFA, params: DecodeParams
) -> UnsatisfiableConstraint:
    """The error for a request no text can satisfy within max_new_tokens, naming what is to blame: the suffix
    (it cannot be written, or not within the horizon), the stop strings (they cut every satisfying text),
    or the constraint."""
    n, m = params.max_new_tokens, params.min_new_tokens
    if getattr(dfa, "lazy", False):  # an exhausted search of the lazy automaton (pc_core.lazy_feasibility)
        return UnsatisfiableConstraint(
            "constraint", f"cannot be satisfied within max_new_tokens={n} (min_new_tokens={m}): a complete "
            "search of its automaton found no accepted text that short"
        )  # fmt: skip
    limits = {"max_states": params.max_states, "time_budget_s": params.time_budget_s}
    dfa_of = lambda c: compile_constraint(c, tokenizer, **limits)  # noqa: E731 (variants of the request)
    within = f"within max_new_tokens={n} (min_new_tokens={m})"
    if params.banned_tokens:  # the bans are to blame when the request without them could be met
        dfa = dfa_of(with_affixes(constraint, params.suffix, params.stop))
        if dfa.can_accept_within(n):
            return UnsatisfiableConstraint(
                "logit_bias",
                f"the tokens it bans (bias -100) leave no text that satisfies the request {within}",
            )
    needed = int(dfa.steps_to_accept[dfa.initial_state])
    if params.suffix is not None:
        alone = dfa_of(with_affixes(WordCount(0, None), params.suffix))
        least = int(alone.steps_to_accept[alone.initial_state])
        if least < 0:
            return UnsatisfiableConstraint(
                "suffix",
                f"{params.suffix!r} cannot be written with this tokenizer: every way needs a token that ends "
                "inside a UTF-8 character or decodes to U+FFFD, which pcgen never generates (docs/method.md §3)",
            )
        if least > n:
            return UnsatisfiableConstraint(
                "suffix", f"writing its first word {params.suffix!r} takes at least {least} tokens, more than "
                f"max_new_tokens={n} (which counts the span and the suffix's first word)"
            )  # fmt: skip
    if params.stop:
        unstopped = dfa_of(with_affixes(constraint, params.suffix))
        if unstopped.can_accept_within(n):
            return UnsatisfiableConstraint(
                "stop", f"every text that satisfies the constraint {within} contains a stop string"
            )
    with_what = " followed by the suffix" if params.suffix is not None else ""
    if needed >= 0:
        included = " (the suffix's first word included)" if with_what else ""
        detail = f"it needs at least {needed} tokens{included}"
    else:
        detail = explain_unsatisfiable(constraint, tokenizer)
    return UnsatisfiableConstraint("constraint", f"cannot be satisfied {within}{with_what}: {detail}")


def _guide(
    tokenizer: Any,
    hmm: HMM,
    compiled: CompiledConstraint,
    params: DecodeParams,
    deadline: float | None = None,
    terminal: torch.Tensor | None = None,
) -> tuple[TokenDFA, ConstraintGuide, float]:
    """The DFA, its guide and how long the guide took (ms); a blocklist that could dead-end the rest of the
    constraint is compiled into one exact product instead (here: the library's compiler)."""
    compile_args = {"max_states": params.max_states, "time_budget_s": params.time_budget_s}
    guide_args = {
        "horizon": params.max_new_tokens,
        "min_new_tokens": params.min_new_tokens,
        "deadline": deadline,
        "terminal": terminal,
    }
    started = time.perf_counter()
    dfa, constraint = compiled.dfa, compiled.judged
    groups = lambda c: compile_constraint(c, tokenizer, blocklist_mask=False, **compile_args)  # noqa: E731
    if getattr(dfa, "lazy", False):  # past the explicit automaton's budget (pc_core.lazy_guide)
        guide = build_lazy_guide(hmm, dfa, constraint, params, tokenizer, note=dfa.note, **guide_args)
        return dfa, guide, (time.perf_counter() - started) * 1000
    try:  # exact when it fits the budget, else factored (pc_core.factored_guide)
        guide = build_guide(hmm, dfa, constraint, params, groups, **guide_args)
    except BlocklistInteraction:
        if compiled.compiled_elsewhere:  # its compiler compiles the exact product too (a server: in its pool)
            raise
        dfa = compile_constraint(constraint, tokenizer, blocklist_mask=False, **compile_args)
        guide = build_guide(hmm, dfa, constraint, params, groups, **guide_args)
    return dfa, guide, (time.perf_counter() - started) * 1000


# ---------------------------------------------------------------------------------------------- one search


class GuidedSearch:
    """One request's search: its guide, beams or samples, and what it has generated so far. Built by
    `prepare`; stepped by BatchDecoder (`choose` after each LM forward)."""

    suffix_plan: SuffixPlan | None = None  # infilling: the junction is params.suffix, the rest is attached
    prompt_ids: list[int] | None = None
    lm: Any = None  # set by BatchDecoder.add: ranks finished beams by span + suffix (pc_core.infill)
    fim = False  # the LM's prompt is in fill-in-the-middle form

    def __init__(
        self,
        tokenizer: Any,
        compiled: CompiledConstraint,
        dfa: TokenDFA,
        guide: ConstraintGuide,
        params: DecodeParams,
        prompt_ids: list[int],
        on_stream: Callable[[StreamEvent], None] | None,
    ) -> None:
        self.tokenizer, self.dfa, self.guide = tokenizer, dfa, guide
        self.constraint, self.judged = compiled.constraint, compiled.judged  # the span's; with the affixes
        self.params, self.on_stream = params, on_stream
        self.affixed = self.judged is not self.constraint  # a suffix or stop strings: text can end a sequence
        self.guide_state: GuideState
        self.timings: dict[str, float] = {}
        self._start_rows(tokenizer, params, prompt_ids, guide.hmm.vocab_size, guide.hmm.device)

    def _start_rows(
        self,
        tokenizer: Any,
        params: DecodeParams,
        prompt_ids: list[int],
        vocab_size: int,
        device: torch.device,
    ) -> None:
        """The decoding state every search keeps, guided or not: prompt, rows, scores, sampling, streaming."""
        self.eos = tokenizer.eos_token_id
        self.vocab_size = vocab_size
        self.prompt_tokens = len(prompt_ids)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos
        self.lm_input = prompt_ids or [bos]  # the LM needs at least one token to condition on
        self.rows = params.rows
        self.generated = torch.zeros((self.rows, 0), dtype=torch.long, device=device)  # (rows, t)
        self.lm_logprob = torch.zeros(self.rows, device=device)  # cumulative LM log-likelihood
        self.beam_score = torch.full((self.rows,), NEG_INF, device=device)  # cumulative guided log-prob
        self.beam_score[0 if not params.do_sample else slice(None)] = 0.0  # beams start as copies of one
        self.sample_index = list(range(self.rows))  # sampling: output slot of each live row
        self.finished: list[_Hypothesis | None] = [None] * self.rows if params.do_sample else []
        self.generator = None
        if params.do_sample:
            self.generator = torch.Generator(device=device)
            seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()))
            self.generator.manual_seed(seed)
        self.streamed: list[list[int]] = [[] for _ in range(params.num_return_sequences)]
        self.streamed_text: list[str] = ["" for _ in range(params.num_return_sequences)]
        self.stream_closed: set[int] = set()  # sampling: outputs whose finished text has been streamed
        self.done = False
        self.error: Exception | None = None  # set when this search failed inside a batched step
        self.step_count = 0
        self.adjust = LogitAdjustment(params, self.vocab_size, device)  # logit_bias, penalties
        self.trail = LogprobTrail(params.logprobs, self.rows) if params.logprobs is not None else None
        self.decode_started = time.perf_counter()
        self.output: GenerationOutput | None = None

    def choose(self, lm_logits: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick next tokens from LM logits (rows, V_lm) and guide log-probs (rows, V).

        Returns (parent row per continuing row, next token per continuing row); empty when finished.
        """
        if lm_logits.shape[1] < self.vocab_size:
            raise TokenizerMismatch(
                f"the LM has {lm_logits.shape[1]} output logits, fewer than the {self.vocab_size} tokens"
            )
        logits = lm_logits[:, : self.vocab_size].float()
        if self.adjust.active:
            logits = self.adjust(logits, self.generated)
        lm_logp = torch.log_softmax(logits, dim=-1)  # (rows, V)
        last = self.step_count + 1 >= self.params.max_new_tokens
        step = None
        if self.trail is not None:
            step = self.trail.step(self.next_distribution(lm_logp, q), self.generated, self.finished)
        parents, tokens = (self._sample if self.params.do_sample else self._beam)(lm_logp, q, last)
        if step is not None:
            step.commit(parents, tokens, self.finished)
        self.step_count += 1
        if tokens.numel() and self.guide is not None:  # no guide: pc_core.unguided
            self.guide_state = self.guide.advance(self.guide_state.select(parents), tokens)
        self._stream()
        if self.done:
            self._finish()
        return parents, tokens

    def next_distribution(self, lm_logp: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """log p(x | prefix, constraint) = normalise(p_lm(x) * q(x) ^ hmm_weight), (rows, V).

        Impossible tokens stay -inf even with hmm_weight = 0.
        """
        weighted = torch.where(torch.isneginf(q), NEG_INF, q * self.params.hmm_weight)
        guided = lm_logp + weighted
        return guided - torch.logsumexp(guided, dim=-1, keepdim=True).nan_to_num(neginf=0.0)

    def _ends(self, row: int, token: int) -> bool:
        """Does `token` end the text of this row: EOS, or (with a suffix or stop strings) a token that
        completes one, which takes the DFA to an ended state?"""
        if token == self.eos:
            return True
        if not self.affixed:
            return False
        state = int(self.guide_state.dfa_state[row])
        return self.dfa.is_ended(self.dfa.step(state, token))  # TokenDFA or LazyDFA

    def _reason(self, token: int) -> str:
        return "eos" if token == self.eos else "text"

    def _beam(self, lm_logp: torch.Tensor, q: torch.Tensor, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        beams, v = self.rows, self.vocab_size
        scores = (self.beam_score[:, None] + self.next_distribution(lm_logp, q)).reshape(-1)  # (beams * V,)
        top = torch.topk(scores, min(2 * beams + 1, scores.numel()))
        parents, tokens, new_scores = [], [], []
        ended = 0
        for rank, (score, flat) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            if score == NEG_INF or len(parents) == beams:
                break
            parent, token = divmod(flat, v)
            ends = self._ends(parent, token)
            if ends or last:
                if rank < beams and ended < beams:  # like transformers: only EOS among the top beams counts
                    ids = self.generated[parent].tolist() + ([] if token == self.eos else [token])
                    logprob = float(self.lm_logprob[parent] + lm_logp[parent, token])
                    self.finished.append(_Hypothesis(ids, logprob, self._reason(token) if ends else "length"))
                    ended += 1
            else:
                parents.append(parent)
                tokens.append(token)
                new_scores.append(score)
        if last or len(self.finished) >= beams or not parents:  # early stopping: enough finished beams
            self.done = True
            parents, tokens = [], []
        device = lm_logp.device
        parents_t = torch.tensor(parents, dtype=torch.long, device=device)
        tokens_t = torch.tensor(tokens, dtype=torch.long, device=device)
        if parents:
            self.lm_logprob = self.lm_logprob[parents_t] + lm_logp[parents_t, tokens_t]
            self.generated = torch.cat([self.generated[parents_t], tokens_t[:, None]], 1)
            self.beam_score = torch.tensor(new_scores, device=device)
            self.rows = len(parents)
        return parents_t, tokens_t

    def _sample(
        self, lm_logp: torch.Tensor, q: torch.Tensor, last: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        temperature = self.params.temperature
        lm_scaled = torch.log_softmax(lm_logp / temperature, dim=-1) if temperature != 1.0 else lm_logp
        probs = self.next_distribution(lm_scaled, q).exp()  # (rows, V)
        if self.params.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # keep the smallest set reaching top_p
            outside = sorted_p.cumsum(-1) - sorted_p >= self.params.top_p
            outside[:, 0] = False  # the most likely token always stays (top_p may round to 0 in float32)
            sorted_p[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
        tokens = torch.multinomial(probs, 1, generator=self.generator).reshape(-1)  # (rows,)
        logprob = self.lm_logprob + lm_logp.gather(1, tokens[:, None]).reshape(-1)
        keep = []
        for row, token in enumerate(tokens.tolist()):
            slot = self.sample_index[row]
            ends = self._ends(row, token)
            if ends or last:
                ids = self.generated[row].tolist() + ([] if token == self.eos else [token])
                reason = self._reason(token) if ends else "length"
                self.finished[slot] = _Hypothesis(ids, float(logprob[row]), reason)
            else:
                keep.append(row)
        keep_t = torch.tensor(keep, dtype=torch.long, device=tokens.device)
        self.sample_index = [self.sample_index[r] for r in keep]
        self.generated = torch.cat([self.generated[keep_t], tokens[keep_t, None]], 1)
        self.lm_logprob = logprob[keep_t]
        self.rows = len(keep)
        self.done = not keep
        return keep_t, tokens[keep_t]

    # ------------------------------------------------------------------ streaming and results

    def _settled(self) -> list[tuple[list[int], _Hypothesis | None]]:
        """Per output index, the token ids that can no longer change, and the hypothesis when they are a
        finished one (sampling)."""
        if self.params.do_sample:
            out: list[tuple[list[int], _Hypothesis | None]] = [
                (h.ids, h) if h else ([], None) for h in self.finished
            ]
            for row, slot in enumerate(self.sample_index):
                out[slot] = (self.generated[row].tolist(), None)
            return out
        candidates = [h.ids for h in self.finished] + self.generated.tolist()
        if not candidates:
            return [([], None)]
        common = candidates[0]
        for ids in candidates[1:]:
            n = 0
            while n < min(len(common), len(ids)) and common[n] == ids[n]:
                n += 1
            common = common[:n]
        return [(common, None)] + [([], None) for _ in range(self.params.num_return_sequences - 1)]

    def _settled_text(self, ids: list[int], finished: _Hypothesis | None) -> str:
        """The text of settled ids that is certain to be part of the output's text (the span): all of it
        without a suffix or stop strings; else without the last len(suffix) characters (they may be the
        suffix) and the end of the text from where a stop string may start. A finished output: its span."""
        if finished is not None:
            return self._judge(finished)[0]
        # a character split across tokens decodes to U+FFFD until its last byte comes: held back till then
        text = decode_continuation(self.tokenizer, ids).rstrip("\ufffd")
        if not self.affixed:
            return text
        keep = len(text)
        if self.params.suffix is not None:
            keep -= len(self.params.suffix)
        if self.params.stop:
            cut = first_stop(text, self.params.stop)[1]
            keep = min(
                keep, len(text) if cut is None else cut, len(text) - max(map(len, self.params.stop)) + 1
            )
        return text[: max(0, keep)]

    def _judge(self, h: _Hypothesis) -> tuple[str, bool, str, str]:
        """(span text, satisfied, finish reason, full text) of a finished hypothesis, by the independent
        checker."""
        if h.judgement is None:
            if not self.affixed:
                text = decode_continuation(self.tokenizer, h.ids)
                h.judgement = (text, check_ids(self.constraint, self.tokenizer, h.ids), h.finish_reason, text)
            else:
                found = judge_ids(self.judged, self.tokenizer, h.ids)
                reason = {"suffix": "eos"}.get(found.reason, found.reason)
                if reason == "length" and h.finish_reason == "eos":  # h.ids stop before the EOS that ended it
                    reason = "eos"
                full = found.full_text
                if self.suffix_plan is not None and found.reason == "suffix":
                    full += self.suffix_plan.rest  # attached as text after the junction
                h.judgement = (found.text, found.satisfied, reason, full)
        return h.judgement

    def _stream(self) -> None:
        if self.on_stream is None or (not self.params.do_sample and self.done):
            return  # beam search: the final result carries what was not settled before the end
        for index, (ids, finished) in enumerate(self._settled()):
            sent = self.streamed[index]
            if len(ids) > len(sent) or (finished is not None and index not in self.stream_closed):
                old = self.streamed_text[index]
                new = self._settled_text(ids, finished)
                self.streamed[index] = ids
                if finished is not None:
                    self.stream_closed.add(index)
                if len(new) > len(old) and new.startswith(old):
                    self.streamed_text[index] = new
                    self.on_stream(StreamEvent(index, new[len(old) :], ids[len(sent) :]))

    def _finish(self) -> None:
        results = []
        for h in (h for h in self.finished if h is not None):
            results.append((h, *self._judge(h)))
        ranking = self._score_suffix([item[0] for item in results])
        if not self.params.do_sample:

            def rank(item: tuple) -> tuple:
                h, _, ok, _, _ = item
                length = max(1, len(h.ids) + h.scored_tokens)
                return (bool(ok), h.lm_logprob / (length**self.params.length_penalty))

            results = sorted(results, key=rank, reverse=True)[: self.params.num_return_sequences]
            if self.on_stream is not None:  # the rest of each chosen beam, after what was settled
                for index, (h, text, _, _, _) in enumerate(results):
                    sent = self.streamed[index]
                    done = self.streamed_text[index] if h.ids[: len(sent)] == sent else ""
                    if text != done and text.startswith(done):
                        self.on_stream(StreamEvent(index, text[len(done) :], h.ids[len(sent) :]))
        sequences = [
            SequenceResult(text, h.ids, bool(ok), reason, h.lm_logprob, full, h.logprobs)
            for h, text, ok, reason, full in results
        ]
        decode_ms = (time.perf_counter() - self.decode_started) * 1000
        states = self.dfa.num_states if self.dfa is not None else None  # None: no constraint
        self.output = GenerationOutput(sequences, self.prompt_tokens, states,
                                       {**self.timings, "decode_ms": decode_ms}, self.params.suffix)  # fmt: skip
        if self.suffix_plan is not None:
            self.output.suffix, self.output.ranking = self.suffix_plan.suffix, ranking
        self.output.guide = getattr(self.guide, "kind", None)  # None: no guide (pc_core.unguided)

    def _score_suffix(self, finished: list[_Hypothesis]) -> str | None:
        """With a suffix: add the LM's log-likelihood of its rest to each finished beam that ended with the
        junction, when the LM's context holds prompt, span and suffix (one batched forward); returns how the
        beams are ranked (pc_core.infill.rank_finished)."""
        if self.suffix_plan is None:
            return None
        suffix = self.suffix_plan.suffix
        ended = [h for h in finished if h.judgement is not None and h.judgement[3].endswith(suffix) and h.ids]
        spans = [[t for t in h.ids if t != self.eos] for h in ended]
        ranking, rest = rank_finished(self.lm, self.lm_input, spans, self.suffix_plan, self.fim)
        for h, value in zip(ended, rest):
            if ranking == "span+suffix" and self.suffix_plan.rest_ids:
                h.lm_logprob += value
                h.scored_tokens = len(self.suffix_plan.rest_ids)
        return ranking

    def bind_lm(self, lm: Any) -> None:
        """The LM this search decodes with (BatchDecoder.add): with a suffix and an LM trained for
        fill-in-the-middle (FIM tokens in the tokenizer), the prompt takes FIM form, so the LM sees the
        suffix too (pc_core.infill.fim_prompt)."""
        self.lm = lm
        if self.suffix_plan is None or self.prompt_ids is None:
            return
        limit = max_positions(lm)
        room = None if limit is None else limit - self.params.max_new_tokens
        fim = fim_prompt(self.tokenizer, self.prompt_ids, self.suffix_plan.suffix, room)
        if fim is not None:
            self.lm_input, self.fim = fim, True


# ---------------------------------------------------------------------------------------------- batching


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
    search = prepare(tokenizer, hmm, constraint, prompt, params, on_stream)
    decoder = BatchDecoder(lm)
    decoder.add(search)
    while not search.done:
        decoder.step()
    if search.error is not None:
        raise search.error
    return search.output
