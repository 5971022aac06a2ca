"""One request's guided search (docs/method.md §6): beams or samples over

    score(x) = log p_lm(x | prompt, prefix) + hmm_weight * log P_hmm(constraint | prefix, x)

Tokens with q(x) = 0 are never chosen. Built by pc_core.preparation.prepare, stepped by
pc_core.decoding.BatchDecoder (`choose` after each LM forward); what it streams and returns is
pc_core.search_output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from pc_core.compiled_constraint import CompiledConstraint
from pc_core.constraints.dfa import TokenDFA
from pc_core.errors import TokenizerMismatch
from pc_core.guide import ConstraintGuide, GuideState
from pc_core.infill import SuffixPlan, fim_prompt
from pc_core.lm import max_positions
from pc_core.logit_adjustment import LogitAdjustment
from pc_core.logprob_trail import LogprobTrail
from pc_core.logspace import NEG_INF
from pc_core.params import DecodeParams
from pc_core.results import GenerationOutput, Hypothesis, StreamEvent
from pc_core.search_output import SearchOutput


class GuidedSearch(SearchOutput):
    """One request's search: its guide, beams or samples, and what it has generated so far. Built by
    `prepare`; stepped by BatchDecoder (`choose` after each LM forward)."""

    suffix_plan: SuffixPlan | None = None  # infilling: the junction is params.suffix, the rest is attached
    prompt_ids: list[int] | None = None
    lm: Any = None  # set by BatchDecoder.add: ranks finished beams by span + suffix (pc_core.infill)
    fim = False  # the LM's prompt is in fill-in-the-middle form
    deep: DeepMask | None = None  # a json_schema's deep values: the JSON syntax beside the automaton

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
        deep = getattr(dfa, "deep_values", None)
        self.deep = DeepMask(dfa, guide, tokenizer, self.rows) if deep is not None else None

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
        self.finished: list[Hypothesis | None] = [None] * self.rows if params.do_sample else []
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
        if self.deep is not None:  # the JSON syntax beside the automaton (json_syntax.py)
            q = self.deep.mask(q, self.guide_state)
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
            if self.deep is not None:
                self.deep.advance(parents.tolist(), tokens.tolist())
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
                    self.finished.append(Hypothesis(ids, logprob, self._reason(token) if ends else "length"))
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
                self.finished[slot] = Hypothesis(ids, float(logprob[row]), reason)
            else:
                keep.append(row)
        keep_t = torch.tensor(keep, dtype=torch.long, device=tokens.device)
        self.sample_index = [self.sample_index[r] for r in keep]
        self.generated = torch.cat([self.generated[keep_t], tokens[keep_t, None]], 1)
        self.lm_logprob = logprob[keep_t]
        self.rows = len(keep)
        self.done = not keep
        return keep_t, tokens[keep_t]

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


class DeepMask:
    """A search's side of json_syntax.DeepValues: each row's syntax state, and the tokens it refuses."""

    def __init__(self, dfa: TokenDFA, guide: ConstraintGuide, tokenizer: Any, rows: int) -> None:
        from pc_core.constraints.json_syntax import token_bytes_for

        self.dfa, self.values, self.horizon = dfa, dfa.deep_values, guide.horizon
        self.vocab = token_bytes_for(tokenizer)
        self.feasible = guide.tables.feasible.cpu().numpy()  # (n + 1, S) bool
        self.touches = self.values.touches(dfa)  # (S,)
        self.syntax = [self.values.start()] * rows
        self.looks: dict = {}  # DeepValues.look per (automaton state, syntax state), for this search

    def mask(self, q: torch.Tensor, state: GuideState) -> torch.Tensor:
        """q (rows, V) with the refused tokens at -inf."""
        left = self.horizon - state.position - 1
        out = q
        for row, s in enumerate(state.dfa_state.tolist()):
            if not self.touches[s] and not len(self.vocab.through):
                continue
            blocked = self.values.blocked(
                self.dfa, self.vocab, s, self.syntax[row], left, self.feasible, self.looks
            )
            if len(blocked):
                out = q.clone() if out is q else out
                out[row, torch.from_numpy(blocked).to(q.device)] = NEG_INF
        return out

    def advance(self, parents: list[int], tokens: list[int]) -> None:
        self.syntax = [self.values.advance(self.syntax[p], t, self.vocab) for p, t in zip(parents, tokens)]
