"""Guided decoding (method notes, section 5): the LM proposes, the guide's exact q(x) reweights.

    score(x) = log p_lm(x | prompt, prefix) + hmm_weight * log P_hmm(constraint | prefix, x)

Tokens with q(x) = 0 are never chosen, so every finished text satisfies the constraint within
max_new_tokens; `constraint_satisfied` is then re-checked on the decoded text by the independent checker.

`BatchDecoder` steps many requests together (each with its own constraint, guide state and search): one
LM forward for all their rows over a shared left-padded KV cache, one guide product for all their beams.
Requests join and leave between steps (continuous batching). `generate()` is the one-request front door.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pc_core.constraints import check_ids, compile_constraint, decode_continuation, parse_constraint
from pc_core.constraints.compiler import DEFAULT_MAX_STATES, DEFAULT_TIME_BUDGET_S, explain_unsatisfiable
from pc_core.errors import BlocklistInteraction, PcgenError, UnsatisfiableConstraint
from pc_core.guide import ConstraintGuide, GuideState, batched_next_log_probs
from pc_core.hmm import HMM
from pc_core.lm import KVBatch

NEG_INF = float("-inf")
MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflows float32 on ordinary LM logits


class DecodingError(PcgenError, ValueError):
    """Invalid decoding parameters."""


@dataclass
class DecodeParams:
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    num_beams: int = 1
    num_return_sequences: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    hmm_weight: float = 1.0
    length_penalty: float = 1.0  # final choice: LM log-likelihood / length ** length_penalty
    hmm_context_tokens: int = 0  # prompt tokens fed to the HMM's forward vector
    max_states: int = DEFAULT_MAX_STATES
    time_budget_s: float = DEFAULT_TIME_BUDGET_S  # for compiling the constraint

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise DecodingError(message)

        need(self.max_new_tokens >= 1, "max_new_tokens must be >= 1")
        need(0 <= self.min_new_tokens <= self.max_new_tokens, "min_new_tokens must be in 0..max_new_tokens")
        need(self.num_beams >= 1, "num_beams must be >= 1")
        need(self.num_return_sequences >= 1, "num_return_sequences must be >= 1")
        if self.do_sample:
            need(self.num_beams == 1, "sampling uses num_beams = 1 (num_return_sequences samples instead)")
        else:
            need(self.num_return_sequences <= self.num_beams, "num_return_sequences must be <= num_beams")
        need(MIN_TEMPERATURE <= self.temperature and math.isfinite(self.temperature),
             f"temperature must be >= {MIN_TEMPERATURE} (use beam search for deterministic output)")  # fmt: skip
        need(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        need(self.time_budget_s > 0, "time_budget_s must be > 0")
        need(self.hmm_weight >= 0 and math.isfinite(self.hmm_weight), "hmm_weight must be >= 0")
        need(self.hmm_context_tokens >= 0, "hmm_context_tokens must be >= 0")


@dataclass
class SequenceResult:
    text: str
    token_ids: list[int]
    constraint_satisfied: bool
    finish_reason: str  # "eos" | "length"
    logprob: float  # LM log-likelihood of the continuation (EOS included when generated)


@dataclass
class GenerationOutput:
    sequences: list[SequenceResult]
    prompt_tokens: int
    dfa_states: int
    timings: dict[str, float] = field(default_factory=dict)  # dfa_ms, precompute_ms, decode_ms


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
    finish_reason: str


class Request:
    """One generation request: its guide, its search state, and its rows in the shared batch."""

    def __init__(
        self,
        tokenizer: Any,
        hmm: HMM,
        constraint: Any,
        prompt: str | Sequence[int] = "",
        params: DecodeParams | None = None,
        on_stream: Callable[[StreamEvent], None] | None = None,
    ) -> None:
        self.params = params = params or DecodeParams()
        params.validate()
        self.tokenizer, self.hmm, self.on_stream = tokenizer, hmm, on_stream
        self.eos = tokenizer.eos_token_id
        self.vocab_size = hmm.vocab_size
        if len(tokenizer) != hmm.vocab_size:
            raise DecodingError(f"the tokenizer has {len(tokenizer)} tokens but the HMM has {hmm.vocab_size}")
        if isinstance(prompt, str):
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
        else:
            prompt_ids = list(prompt)
        self.prompt_tokens = len(prompt_ids)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos
        self.lm_input = prompt_ids or [bos]  # the LM needs at least one token to condition on
        started = time.perf_counter()
        self.constraint = parse_constraint(constraint)
        compile_args = {"max_states": params.max_states, "time_budget_s": params.time_budget_s}
        self.dfa = compile_constraint(self.constraint, tokenizer, **compile_args)
        dfa_done = time.perf_counter()
        guide_args = {"horizon": params.max_new_tokens, "min_new_tokens": params.min_new_tokens}
        try:
            self.guide = ConstraintGuide(hmm, self.dfa, **guide_args)
        except BlocklistInteraction:  # the blocklist and the rest interact: one exact product instead
            self.dfa = compile_constraint(self.constraint, tokenizer, blocklist_mask=False, **compile_args)
            self.guide = ConstraintGuide(hmm, self.dfa, **guide_args)
        t = self.guide.tables
        if not bool(t.feasible[params.max_new_tokens][self.dfa.initial_state]):
            needed = int(self.dfa.steps_to_accept[self.dfa.initial_state])
            detail = (
                f"it needs at least {needed} tokens"
                if needed >= 0
                else explain_unsatisfiable(self.constraint, tokenizer)
            )
            raise UnsatisfiableConstraint(
                "constraint",
                f"cannot be satisfied within max_new_tokens={params.max_new_tokens} "
                f"(min_new_tokens={params.min_new_tokens}): {detail}",
            )
        self.timings = {
            "dfa_ms": (dfa_done - started) * 1000,
            "precompute_ms": (time.perf_counter() - dfa_done) * 1000,
        }
        context = prompt_ids[-params.hmm_context_tokens :] if params.hmm_context_tokens else []
        self.rows = params.num_return_sequences if params.do_sample else params.num_beams
        self.guide_state: GuideState = self.guide.init_state(self.rows, hmm_context=context)
        device = hmm.device
        self.generated = torch.zeros((self.rows, 0), dtype=torch.long, device=device)  # (rows, t)
        self.lm_logprob = torch.zeros(self.rows, device=device)  # cumulative LM log-likelihood
        self.beam_score = torch.full((self.rows,), NEG_INF, device=device)  # cumulative guided log-prob
        self.beam_score[0 if not params.do_sample else slice(None)] = 0.0  # beams start as copies of one
        self.sample_index = list(range(self.rows))  # sampling: output slot of each live row
        self.finished: list[_Hypothesis | None] = [None] * self.rows if params.do_sample else []
        self.generator = None
        if params.do_sample:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(
                params.seed if params.seed is not None else int(torch.randint(2**62, ()))
            )
        self.streamed: list[list[int]] = [[] for _ in range(params.num_return_sequences)]
        self.done = False
        self.error: Exception | None = None  # set when this request failed inside a batched step
        self.step_count = 0
        self.decode_started = time.perf_counter()
        self.output: GenerationOutput | None = None

    # ------------------------------------------------------------------ one step

    def choose(self, lm_logits: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick next tokens from LM logits (rows, V_lm) and guide log-probs (rows, V).

        Returns (parent row per continuing row, next token per continuing row); empty when finished.
        """
        p = self.params
        lm_logp = torch.log_softmax(lm_logits[:, : self.vocab_size].float(), dim=-1)  # (rows, V)
        if lm_logits.shape[1] < self.vocab_size:
            raise DecodingError(
                f"the LM has {lm_logits.shape[1]} output logits, fewer than the {self.vocab_size} tokens"
            )
        last = self.step_count + 1 >= p.max_new_tokens
        if p.do_sample:
            parents, tokens = self._sample(lm_logp, q, last)
        else:
            parents, tokens = self._beam(lm_logp, q, last)
        self.step_count += 1
        if tokens.numel():
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

    def _beam(self, lm_logp: torch.Tensor, q: torch.Tensor, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        beams, v = self.rows, self.vocab_size
        guided = self.next_distribution(lm_logp, q)
        scores = (self.beam_score[:, None] + guided).reshape(-1)  # (beams * V,)
        top = torch.topk(scores, min(2 * beams + 1, scores.numel()))
        parents, tokens, new_scores = [], [], []
        ended = 0
        for rank, (score, flat) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            if score == NEG_INF or len(parents) == beams:
                break
            parent, token = divmod(flat, v)
            if token == self.eos or last:
                if rank < beams and ended < beams:  # like transformers: only EOS among the top beams counts
                    ids = self.generated[parent].tolist() + ([] if token == self.eos else [token])
                    logprob = float(self.lm_logprob[parent] + lm_logp[parent, token])
                    self.finished.append(_Hypothesis(ids, logprob, "eos" if token == self.eos else "length"))
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
        p = self.params
        lm_scaled = torch.log_softmax(lm_logp / p.temperature, dim=-1) if p.temperature != 1.0 else lm_logp
        probs = self.next_distribution(lm_scaled, q).exp()  # (rows, V)
        if p.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p >= p.top_p  # keep the smallest set reaching top_p
            outside[:, 0] = False  # the most likely token always stays (top_p may round to 0 in float32)
            sorted_p[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
        tokens = torch.multinomial(probs, 1, generator=self.generator).reshape(-1)  # (rows,)
        logprob = self.lm_logprob + lm_logp.gather(1, tokens[:, None]).reshape(-1)
        keep = []
        for row, token in enumerate(tokens.tolist()):
            slot = self.sample_index[row]
            if token == self.eos or last:
                ids = self.generated[row].tolist() + ([] if token == self.eos else [token])
                self.finished[slot] = _Hypothesis(
                    ids, float(logprob[row]), "eos" if token == self.eos else "length"
                )
            else:
                keep.append(row)
        keep_t = torch.tensor(keep, dtype=torch.long, device=tokens.device)
        self.sample_index = [self.sample_index[r] for r in keep]
        self.generated = torch.cat([self.generated[keep_t], tokens[keep_t, None]], 1)
        self.lm_logprob = logprob[keep_t]
        self.rows = len(keep)
        if not keep:
            self.done = True
        return keep_t, tokens[keep_t]

    # ------------------------------------------------------------------ streaming and results

    def _settled(self) -> list[list[int]]:
        """Per output index, the token ids that can no longer change."""
        if self.params.do_sample:
            out = [h.ids if h else [] for h in self.finished]
            for row, slot in enumerate(self.sample_index):
                out[slot] = self.generated[row].tolist()
            return out
        candidates = [h.ids for h in self.finished] + self.generated.tolist()
        if not candidates:
            return [[]]
        common = candidates[0]
        for ids in candidates[1:]:
            n = 0
            while n < min(len(common), len(ids)) and common[n] == ids[n]:
                n += 1
            common = common[:n]
        return [common] + [[] for _ in range(self.params.num_return_sequences - 1)]

    def _stream(self) -> None:
        if self.on_stream is None or (not self.params.do_sample and self.done):
            return  # beam search: the final result carries what was not settled before the end
        for index, ids in enumerate(self._settled()):
            sent = self.streamed[index]
            if len(ids) > len(sent):
                old = decode_continuation(self.tokenizer, sent)
                new = decode_continuation(self.tokenizer, ids)
                self.streamed[index] = ids
                if new != old:
                    self.on_stream(StreamEvent(index, new[len(old) :], ids[len(sent) :]))

    def _finish(self) -> None:
        p = self.params
        hyps = [h for h in self.finished if h is not None]
        results = []
        for h in hyps:
            text = decode_continuation(self.tokenizer, h.ids)
            results.append((h, text, check_ids(self.constraint, self.tokenizer, h.ids)))
        if not p.do_sample:

            def rank(item: tuple) -> tuple:
                h, _, ok = item
                length = max(1, len(h.ids))
                return (bool(ok), h.lm_logprob / (length**p.length_penalty))

            results.sort(key=rank, reverse=True)
            results = results[: p.num_return_sequences]
        if (
            self.on_stream is not None and not p.do_sample
        ):  # the rest of each chosen beam, after what was settled
            for index, (h, text, _) in enumerate(results):
                sent = (
                    self.streamed[index] if h.ids[: len(self.streamed[index])] == self.streamed[index] else []
                )
                done = decode_continuation(self.tokenizer, sent)
                if text != done:
                    self.on_stream(StreamEvent(index, text[len(done) :], h.ids[len(sent) :]))
        self.output = GenerationOutput(
            sequences=[
                SequenceResult(text, h.ids, bool(ok), h.finish_reason, h.lm_logprob)
                for h, text, ok in results
            ],
            prompt_tokens=self.prompt_tokens,
            dfa_states=self.dfa.num_states,
            timings={**self.timings, "decode_ms": (time.perf_counter() - self.decode_started) * 1000},
        )


class BatchDecoder:
    """Steps many Requests together over one LM; add() between steps, collect finished ones from step()."""

    def __init__(self, lm: Any, max_rows: int | None = None) -> None:
        self.lm = lm
        self.max_rows = max_rows
        self.requests: list[Request] = []
        self.kv: KVBatch | None = None
        self.pending: list[torch.Tensor] = []  # per request: LM logits (rows, V_lm) for its next choice

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.requests)

    def add(self, request: Request) -> None:
        """Prefill the prompt and join the batch (its rows start as copies of the prompt row)."""
        lm_device = next(self.lm.parameters()).device
        if lm_device != request.hmm.device:
            raise DecodingError(
                f"the LM is on {lm_device} but the HMM is on {request.hmm.device}; use one device"
            )
        kv, logits = KVBatch.prefill(self.lm, request.lm_input)
        index = torch.zeros(request.rows, dtype=torch.long, device=logits.device)
        kv = kv.select(index)
        self.kv = kv if self.kv is None else KVBatch.concat([self.kv, kv])
        self.requests.append(request)
        self.pending.append(logits.expand(request.rows, -1))

    def step(self) -> list[Request]:
        """One token for every active request; returns the requests that finished in this step (those that
        failed have `error` set and no output; the others in the batch carry on)."""
        if not self.requests:
            return []
        qs = batched_next_log_probs([(r.guide, r.guide_state) for r in self.requests])
        index, tokens, survivors, finished = [], [], [], []
        offset = 0
        for request, logits, q in zip(self.requests, self.pending, qs):
            rows_before = logits.shape[0]
            try:
                parents, next_tokens = request.choose(logits, q)
            except Exception as err:  # noqa: BLE001 - one bad request must not take its batch down
                request.error, request.done = err, True
            if request.done:
                finished.append(request)
            else:
                index.append(parents + offset)
                tokens.append(next_tokens)
                survivors.append(request)
            offset += rows_before
        self.requests = survivors
        if not survivors:
            self.kv, self.pending = None, []
            return finished
        self.kv, logits = self.kv.select(torch.cat(index)).forward(self.lm, torch.cat(tokens))
        self.pending = list(logits.split([r.rows for r in survivors]))
        return finished

    def cancel(self, request: Request) -> None:
        """Drop a request's rows (client went away)."""
        if request not in self.requests:
            return
        keep, offset = [], 0
        for r, logits in zip(self.requests, self.pending):
            if r is not request:
                keep.append(torch.arange(offset, offset + logits.shape[0], device=logits.device))
            offset += logits.shape[0]
        i = self.requests.index(request)
        del self.requests[i], self.pending[i]
        self.kv = self.kv.select(torch.cat(keep)) if keep else None


def generate(
    lm: Any,
    tokenizer: Any,
    hmm: HMM,
    constraint: Any,
    prompt: str | Sequence[int] = "",
    max_new_tokens: int = 32,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    hmm_weight: float = 1.0,
    length_penalty: float = 1.0,
    hmm_context_tokens: int = 0,
    on_stream: Callable[[StreamEvent], None] | None = None,
) -> GenerationOutput:
    """Generate text that satisfies `constraint` (a spec of the constraint language, or parsed)."""
    params = DecodeParams(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        hmm_weight=hmm_weight,
        length_penalty=length_penalty,
        hmm_context_tokens=hmm_context_tokens,
    )
    request = Request(tokenizer, hmm, constraint, prompt, params, on_stream)
    decoder = BatchDecoder(lm)
    decoder.add(request)
    while not request.done:
        decoder.step()
    return request.output
