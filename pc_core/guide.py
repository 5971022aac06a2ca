"""The exact constraint guide: P_hmm(constraint | prefix, next token) by dynamic programming (section 4).

Precompute (per DFA, horizon n, minimum length, HMM; cached):
    M[c, z]      = sum_{x in class c} B[z, x]                         class emission masses   (C, H)  class_masses.py
    E[s->s', z]  = sum_{c: delta(s, c) = s'} M[c, z]                  edge masses             (edges, H)
    U_0[s, z]    = 1 if s accepting else 0
    W_r[s, z]    = sum_{edges s->s'} E[s->s', z] * U_{r-1}[s', z]      (EOS edges dropped where the minimum
    U_r[s, z]    = sum_z' A[z, z'] W_r[s, z']                           length forbids EOS)
all in log space; U_r[s] is -inf exactly where the DFA cannot accept in r more tokens (decided on the DFA,
not on floating point) and exactly 0 where every continuation is accepted.

Step (prefix of length t in DFA state s, predictive forward vector a_t[z] = P(z_{t+1} | prefix)):
    log P(x, constraint | prefix) = log sum_z a_t[z] B[z, x] U_r[delta(s, x), z],  r = n - t - 1
    log P(x | prefix)             = log sum_z a_t[z] B[z, x]
and next_log_probs returns their difference. Tokens are grouped by successor: the few large token classes
("any other word", "a space then any other word") share a left vector, so all beams together cost one
(rows, H) x (H, V_k) product per vocabulary block k (tokens that continue a word / all others): one row per
large-class successor that is neither impossible nor certain and has tokens in the block, plus the beam's
marginal row where it has such a successor, about two full-vocabulary rows per beam in all. A beam whose
successors in a block are all certain or impossible takes no rows there (exact 0 / -inf): once every keyword
is in, it costs no product. The small classes (tokens that start, extend or finish a relevant word) are
computed on their own (H, |tail|) slice of B.

Several requests with different guides can be stepped together (`batched_next_log_probs`): their rows are
stacked into the same product.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from pc_core.cache import LRUCache
from pc_core.class_masses import class_masses
from pc_core.constraints.dfa import TokenDFA
from pc_core.errors import BlocklistInteraction, PcgenError, TokenizerMismatch
from pc_core.hmm import HMM
from pc_core.kernels import (
    edge_logsumexp,
    edge_scaled_sum,
    log_matmul_exp,
    matmul_exp_nt,
    onednn_packed,
)
from pc_core.kernels.reference import LOSSLESS

NEG_INF = float("-inf")
DEAD, CERTAIN = -1, -2  # product-row codes: successor impossible (-inf) / every continuation accepted (0)
DEFAULT_MAX_HORIZON = 1024
BIG_CLASS_FRACTION = 0.01  # classes holding >= 1% of the vocabulary get a dense product row


class GuideError(PcgenError, ValueError):
    """Bad guide arguments: horizon, token ids, prefix longer than the horizon, mismatched sizes."""


@dataclass
class GuideState:
    """Per-beam state of one request: forward vector, DFA state, shared position (tokens generated)."""

    log_alpha: torch.Tensor  # (B, H) log P(z_{t+1} | prefix), normalised per row
    dfa_state: torch.Tensor  # (B,) long
    position: int
    open_words: tuple[str, ...] | None = None  # (B,) with a blocklist beside the DFA: each beam's open word

    @property
    def batch_size(self) -> int:
        return int(self.dfa_state.shape[0])

    def select(self, index: torch.Tensor | Sequence[int]) -> GuideState:
        """Reorder / filter / duplicate beams (e.g. after a beam-search step)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.dfa_state.device)
        words = None if self.open_words is None else tuple(self.open_words[i] for i in index.tolist())
        return GuideState(
            self.log_alpha.index_select(0, index), self.dfa_state.index_select(0, index), self.position, words
        )


class BlockPlan(NamedTuple):
    """A guide's share of one vocabulary block's product in a step."""

    rows: torch.Tensor  # (M + Q, H) log-space left rows: M marginal rows, then Q joint rows
    row_of_slot: torch.Tensor  # (B, D) joint row per dense successor slot, or DEAD / CERTAIN
    marginal_row: torch.Tensor  # (B,) each beam's marginal row, -1 where it needs none in this block


class GuideTables:
    """Everything precomputed for (DFA, horizon, min length, HMM); shared by all requests using them."""

    LINEAR_PATH = True  # the scaled linear-space backward step; False forces the log-space reference path

    def __init__(
        self, hmm: HMM, dfa: TokenDFA, horizon: int, min_new_tokens: int, emission_dtype: torch.dtype
    ) -> None:
        self.horizon, self.min_new_tokens = horizon, min_new_tokens
        device = hmm.device
        self.device = device
        s_count, c_count = dfa.transitions.shape
        self.num_states = s_count
        delta = dfa.transitions.astype(np.int64)
        eos_class = int(dfa.token_class[dfa.eos_token_id])
        ended = dfa.ended

        # Generation never emits banned tokens (they split a character), so the guide's HMM is the HMM
        # with those emissions removed and rows renormalised: B'[z, x] = B[z, x] * scale[z]. The scale folds
        # into every left vector, so the product still reads the original B.
        banned = dfa.banned_tokens if dfa.banned_tokens is not None else np.zeros(dfa.vocab_size, bool)
        # A class of banned tokens only has probability 0 under B'. Such tokens lead to the rejecting sink,
        # which must not keep a state from being certain: it cannot be reached.
        possible = np.bincount(dfa.token_class[~banned], minlength=c_count) > 0  # (C,)

        # structural feasibility / certainty per remaining count r (the exact -inf / 0 pattern)
        feasible = np.zeros((horizon + 1, s_count), bool)
        certain = np.zeros((horizon + 1, s_count), bool)
        feasible[0] = certain[0] = dfa.accepting
        allowed = np.ones((horizon + 1, c_count), bool)  # allowed[r, c]: class c allowed as first of r tokens
        for r in range(1, horizon + 1):
            eos_ok = horizon - r + 1 >= min_new_tokens + 1
            allowed[r, eos_class] = eos_ok
            ok = np.where(ended[:, None], True, allowed[r][None, :])  # after EOS, everything is allowed
            feasible[r] = (ok & feasible[r - 1][delta]).any(axis=1)
            certain[r] = ((ok & certain[r - 1][delta]) | ~possible).all(axis=1)
        if dfa.safe_classes is not None:
            _check_blocklist_cannot_dead_end(dfa, feasible, allowed, horizon)
        self.feasible = torch.from_numpy(feasible).to(device)
        self.certain = torch.from_numpy(certain).to(device)
        self.allowed = allowed

        token_class = torch.from_numpy(dfa.token_class.astype(np.int64)).to(device)
        h = hmm.hidden_size
        banned_ids = torch.from_numpy(np.flatnonzero(banned)).to(device)
        self.banned = banned_ids if banned.any() else None
        # vocabulary blocks (TokenDFA.token_block: does the token continue a word or not), see the step below
        block_of = np.zeros(dfa.vocab_size, np.int64)
        if dfa.token_block is not None and len(np.unique(dfa.token_block)) > 1:
            block_of = dfa.token_block.astype(np.int64)
        self.block_key = hashlib.sha256(block_of.tobytes()).hexdigest()[:16] if block_of.any() else "all"
        masses, banned_mass = class_masses(hmm, dfa.token_class, c_count, block_of, self.block_key, banned)
        self.log_scale = -torch.log1p(-banned_mass).float()  # (H,)
        masses = (masses / (1 - banned_mass)[None, :]).float()  # (C, H) class masses under B'
        # distinct (source, destination) pairs as one int64 key: a 1-D unique (np.unique(axis=0) sorted the
        # (S * C, 2) rows lexicographically, 44 ms of a 260 ms precompute at 690 states)
        pair_key = (np.arange(s_count)[:, None] * s_count + delta).reshape(-1)  # (S * C,)
        edge_key, edge_of_pair = np.unique(pair_key, return_inverse=True)  # sorted by source state
        edges = np.stack([edge_key // s_count, edge_key % s_count], 1)  # (E, 2)
        edge_of_pair = edge_of_pair.reshape(-1)
        e_count = len(edges)
        incidence = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([edge_of_pair, np.tile(np.arange(c_count), s_count)])),
            torch.ones(len(edge_of_pair)),
            (e_count, c_count),
            check_invariants=False,
        ).to(device)
        edge_mass = torch.sparse.mm(incidence, masses)  # (E, H) linear
        # (E + 1, H) in log space, the last row the -inf padding that unused slots point at
        self.edge_log_mass = torch.empty(e_count + 1, h, device=device)
        torch.log(edge_mass, out=self.edge_log_mass[:e_count])
        self.edge_log_mass[e_count] = NEG_INF
        is_eos = (~ended[edges[:, 0]]) & ended[edges[:, 1]]  # only EOS leaves a live state for an ended one
        # padded per source state: (S, K) edge ids (E = the -inf padding row) and destinations
        degree = np.bincount(edges[:, 0], minlength=s_count)
        width = int(degree.max())
        slot = np.arange(e_count) - np.repeat(np.cumsum(degree) - degree, degree)
        edge_index = np.full((s_count, width), e_count, np.int64)
        edge_index[edges[:, 0], slot] = np.arange(e_count)
        edge_dst = np.zeros((s_count, width), np.int64)
        edge_dst[edges[:, 0], slot] = edges[:, 1]
        self.edge_index = torch.from_numpy(edge_index).to(device)
        # for steps where EOS is not allowed, EOS edges point at the padding row instead of a table of their own
        self.edge_index_no_eos = torch.from_numpy(
            np.where(np.append(is_eos, False)[edge_index], e_count, edge_index)
        ).to(device)
        self.edge_dst = torch.from_numpy(edge_dst).to(device)

        # backward tables U_r, r = 0..n-1
        # U = W @ A^T on the transposed view: BLAS reads it as is, a contiguous copy cost 68 ms at H = 4096
        transition_t = hmm.transition_probs().T
        accepting = torch.from_numpy(dfa.accepting).to(device)
        # per r, the states whose U_r row is exactly -inf (cannot accept) or exactly 0 (always accepts)
        infeasible_rows = [torch.from_numpy(np.flatnonzero(~f)).to(device) for f in feasible]
        certain_rows = [torch.from_numpy(np.flatnonzero(c)).to(device) for c in certain]
        log_u = torch.empty(horizon, s_count, h, device=device)
        log_u[0] = torch.where(accepting[:, None], 0.0, NEG_INF).expand(s_count, h)
        # Fast path: U_r kept as rows in [0, 1] times a per-state scale, so a step is gathers, products, an
        # index_add and one matmul, with no exp/log per element. Measured on CPU (H = 1024, 690 states,
        # horizon 32, 1 thread, one run): 3.0 s instead of 13.4 s for the log-space path, max |difference| of
        # the log tables 7.6e-6. If anything it keeps falls below 1e-30
        # of its row's or edge group's largest value (a dynamic range float32 cannot hold exactly), that step
        # and the rest use the log-space path (edge_logsumexp), so the tables never lose a term.
        src, dst = torch.from_numpy(edges[:, 0]).to(device), torch.from_numpy(edges[:, 1]).to(device)
        linear = {True: (edge_mass, src, dst)}  # keyed by "EOS allowed"
        if not allowed[1:, eos_class].all():  # the minimum length forbids EOS at some steps
            keep = torch.from_numpy(np.flatnonzero(~is_eos)).to(device)
            linear[False] = (edge_mass[keep], src[keep], dst[keep])
        scaled, scale = (
            accepting.float()[:, None].expand(s_count, h).contiguous(),
            torch.where(accepting, 0.0, NEG_INF),
        )
        robust = not self.LINEAR_PATH
        for r in range(1, horizon):
            if not robust:
                mass, src, dst = linear[bool(allowed[r, eos_class])]
                w, w_scale, lossy = edge_scaled_sum(mass, scaled, scale, src, dst, s_count)
                u = w @ transition_t  # (S, H), rows of W scaled to max 1, so no underflow in the product
                rowmax = u.amax(dim=1).clamp_min(torch.finfo(u.dtype).tiny)
                scaled, scale = u.div_(rowmax[:, None]), w_scale + torch.log(rowmax)
                # a feasible row spanning > 69 nats: float32 cannot hold it exactly, redo in log space
                # or a feasible row whose largest entry is itself that small (before scaling it to 1)
                tiny_rows = (scaled.amin(dim=1) < LOSSLESS) | (rowmax < LOSSLESS)
                robust = lossy or bool(tiny_rows[self.feasible[r]].any())
                if not robust:
                    torch.log(scaled, out=log_u[r]).add_(scale[:, None])
            if robust:  # exact log-space step
                log_u[r] = log_matmul_exp(self._edge_sum(log_u[r - 1], r), transition_t)
            log_u[r].index_fill_(0, infeasible_rows[r], NEG_INF).index_fill_(0, certain_rows[r], 0.0)
        self.used_log_space_fallback = robust
        self.log_u = log_u

        # dense rows for big classes, gathered tail for small ones
        sizes = dfa.class_sizes
        big = sizes >= max(1, int(BIG_CLASS_FRACTION * dfa.vocab_size))
        big[eos_class] = False
        slot_of_class = np.full((s_count, c_count), -1, np.int64)
        dense = []
        for s in range(s_count):
            succ = list(dict.fromkeys(delta[s, big].tolist()))
            dense.append(succ)
            for c in np.flatnonzero(big):
                slot_of_class[s, c] = succ.index(delta[s, c])
        width = max(1, max(len(d) for d in dense))
        dense_succ = np.full((s_count, width), -1, np.int64)
        for s, succ in enumerate(dense):
            dense_succ[s, : len(succ)] = succ
        self.dense_succ = torch.from_numpy(dense_succ).to(device)
        self.slot_of_class = torch.from_numpy(slot_of_class).to(device)
        self.token_class = token_class
        tail = np.flatnonzero(~big[dfa.token_class])
        self.tail_tokens = torch.from_numpy(tail).to(device)

        # The product is split into vocabulary blocks (TokenDFA.token_block: does the token continue a word
        # or not); a successor's row is multiplied only with the blocks holding its classes' tokens. For
        # keyword constraints mid-word, "continue the word" (17k tokens) and "start another" (32k) have
        # different successors, so each beam needs 2 rows per block instead of 3 full-vocabulary rows.
        self.num_blocks = int(block_of.max()) + 1
        blocks = [np.flatnonzero(block_of == k) for k in range(self.num_blocks)]
        self.block_tokens = [torch.from_numpy(ids).to(device) for ids in blocks]
        self.block_class = [token_class[ids] for ids in self.block_tokens]  # (V_k,) class per column
        position = np.empty(dfa.vocab_size, np.int64)  # column of each token in the block-ordered output
        position[np.concatenate(blocks)] = np.arange(dfa.vocab_size)
        self.block_position = torch.from_numpy(position).to(device)
        self.tail_position = self.block_position[self.tail_tokens]
        class_in_block = np.zeros((c_count, self.num_blocks), bool)
        class_in_block[dfa.token_class, block_of] = True
        slot_blocks = np.zeros((s_count, width, self.num_blocks), bool)  # does slot d of state s need block k
        for c in np.flatnonzero(big):
            slot_blocks[np.arange(s_count), slot_of_class[:, c]] |= class_in_block[c]
        self.slot_blocks = torch.from_numpy(slot_blocks).to(device)
        # the one slot that all large-class tokens of block k take from state s (-1: several), so that a step
        # selects whole rows instead of gathering per token; the word/non-word split makes this the usual case
        block_slot = np.zeros((s_count, self.num_blocks), np.int64)
        for k in range(self.num_blocks):
            slots = slot_of_class[:, np.flatnonzero(big & class_in_block[:, k])]  # (S, classes in block k)
            if slots.shape[1]:
                block_slot[:, k] = np.where((slots == slots[:, :1]).all(1), slots[:, 0], -1)
        self.block_slot = torch.from_numpy(block_slot).to(device)
        self.block_slot_everywhere = (block_slot >= 0).all(0).tolist()  # per block: no state needs a gather
        self.tail_succ = torch.from_numpy(delta[:, dfa.token_class[tail]]).to(device)  # (S, |tail|)
        tail_emission_t = hmm.emission_scaled_t(self.tail_tokens, emission_dtype)  # (|tail|, H)
        self.tail_emission = onednn_packed.pack(tail_emission_t) or tail_emission_t  # packed on CPU
        self.transitions = torch.from_numpy(delta).to(device)
        self.eos_token_id = dfa.eos_token_id
        self.nbytes = sum(
            t.numel() * t.element_size()
            for t in (
                self.log_u,
                self.edge_log_mass,
                tail_emission_t,
                self.tail_succ,
            )
        )

    def _edge_sum(self, log_u_next: torch.Tensor, r: int, states: torch.Tensor | None = None) -> torch.Tensor:
        """W_r: sum over edges of mass x U_{r-1}[dst], without EOS edges where EOS is not allowed.
        For all states (S, H), or for `states` only (B, H)."""
        index = self.edge_index if self.allowed[r].all() else self.edge_index_no_eos
        dst = self.edge_dst
        if states is not None:
            index, dst = index[states], dst[states]
        return edge_logsumexp(self.edge_log_mass, log_u_next, index, dst)


TABLES: LRUCache[GuideTables] = LRUCache("guide", 2 * 2**30, lambda tables: tables.nbytes)
"""Guide tables by content (DFA, horizon, minimum length, HMM, device, dtype), bounded in bytes."""


def _tables(
    hmm: HMM, dfa: TokenDFA, horizon: int, min_new_tokens: int, emission_dtype: torch.dtype
) -> GuideTables:
    key = (dfa.content_key, horizon, min_new_tokens, hmm.fingerprint, str(hmm.device), emission_dtype)
    tables = TABLES.get(key)
    if tables is None:
        tables = GuideTables(hmm, dfa, horizon, min_new_tokens, emission_dtype)
        TABLES.put(key, tables)
    return tables


def _check_blocklist_cannot_dead_end(
    dfa: TokenDFA, feasible: np.ndarray, allowed: np.ndarray, horizon: int
) -> None:
    """With a blocklist masked beside the DFA, decoding takes only tokens the mask allows. Feasibility computed
    with just the classes that hold a token the mask allows in every text a state stands for must equal
    feasibility with all classes: then every feasible state has a feasible, allowed next token, whatever
    the mask, and masking cannot dead-end a beam (docs/method.md §7). Raises BlocklistInteraction otherwise."""
    delta = dfa.transitions.astype(np.int64)
    ended = dfa.ended
    safe = dfa.safe_classes
    reachable = feasible[0].copy()
    for r in range(1, horizon + 1):
        ok = np.where(ended[:, None], True, allowed[r][None, :] & safe)
        reachable = (ok & reachable[delta]).any(axis=1)
        if not np.array_equal(reachable, feasible[r]):
            lost = int((feasible[r] & ~reachable).sum())
            raise BlocklistInteraction(
                f"the blocklist could block every way to satisfy the rest of the constraint from {lost} "
                f"automaton states with {r} tokens left"
            )


class ConstraintGuide:
    """`ConstraintGuide(hmm, dfa, horizon=n)`; see the module docstring for the mathematics."""

    def __init__(
        self,
        hmm: HMM,
        dfa: TokenDFA,
        horizon: int,
        min_new_tokens: int = 0,
        max_horizon: int = DEFAULT_MAX_HORIZON,
        emission_dtype: torch.dtype = torch.float32,
    ) -> None:
        if dfa.vocab_size != hmm.vocab_size:
            raise TokenizerMismatch(
                f"the DFA was compiled for a vocabulary of {dfa.vocab_size} tokens but the HMM has {hmm.vocab_size}"
            )
        if hmm.eos_token_id is not None and hmm.eos_token_id != dfa.eos_token_id:
            raise TokenizerMismatch(f"EOS differs: DFA {dfa.eos_token_id}, HMM {hmm.eos_token_id}")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= max_horizon:
            raise GuideError(f"horizon must be an integer in 1..{max_horizon}, got {horizon!r}")
        if not 0 <= min_new_tokens <= horizon:
            raise GuideError(f"min_new_tokens must be in 0..horizon ({horizon}), got {min_new_tokens}")
        self.hmm, self.dfa, self.horizon, self.min_new_tokens = hmm, dfa, horizon, min_new_tokens
        self.emission_dtype = emission_dtype
        self.tables = _tables(hmm, dfa, horizon, min_new_tokens, emission_dtype)

    # ------------------------------------------------------------------ states

    def init_state(self, batch_size: int = 1, hmm_context: Sequence[int] | None = None) -> GuideState:
        """Beams at position 0. `hmm_context`: prompt tokens fed into the forward vector (not the DFA)."""
        hmm = self.hmm
        log_alpha = hmm.log_initial.float()[None, :]  # (1, H)
        dfa_state = torch.full((1,), self.dfa.initial_state, dtype=torch.long, device=hmm.device)
        for token in hmm_context or ():  # the prompt is observed as is: the unrestricted emission
            self._check_tokens([token])
            log_alpha = self._forward(log_alpha, torch.tensor([token], device=hmm.device), generated=False)
        state = GuideState(log_alpha, dfa_state, 0, ("",) if self.dfa.blocklist is not None else None)
        return state.select([0] * batch_size)

    def _forward(self, log_alpha: torch.Tensor, tokens: torch.Tensor, generated: bool = True) -> torch.Tensor:
        """a' = normalise((a * B'[:, x]) @ A), in log space (B for prompt tokens)."""
        emitted = log_alpha + self.hmm.log_emission.index_select(1, tokens).T.float()  # (B, H)
        if generated:
            emitted = emitted + self.tables.log_scale
        scaled, log_peak = self.hmm.transition_scaled()
        out = log_matmul_exp(emitted, scaled) + log_peak
        return out - torch.logsumexp(out, dim=1, keepdim=True)

    def advance(self, state: GuideState, tokens: torch.Tensor | Sequence[int]) -> GuideState:
        """Every beam takes its next token (B,)."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.hmm.device).reshape(-1)
        if tokens.shape[0] != state.batch_size:
            raise GuideError(f"expected {state.batch_size} tokens (one per beam), got {tokens.shape[0]}")
        self._check_tokens(tokens)
        if state.position >= self.horizon:
            raise GuideError(f"the prefix already has {state.position} tokens, the horizon is {self.horizon}")
        t = self.tables
        next_dfa = t.transitions[state.dfa_state, t.token_class[tokens]]
        words = state.open_words
        if words is not None:
            blocklist = self.dfa.blocklist
            words = tuple(blocklist.advance(w, x) for w, x in zip(words, tokens.tolist()))
        return GuideState(self._forward(state.log_alpha, tokens), next_dfa, state.position + 1, words)

    def _check_tokens(self, tokens: torch.Tensor | Sequence[int]) -> None:
        tokens = torch.as_tensor(tokens)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.hmm.vocab_size):
            raise GuideError(f"token ids must be in 0..{self.hmm.vocab_size - 1}")

    def state_for(self, prefix: Sequence[int], hmm_context: Sequence[int] | None = None) -> GuideState:
        if len(prefix) > self.horizon:
            raise GuideError(f"prefix of {len(prefix)} tokens is longer than the horizon {self.horizon}")
        state = self.init_state(1, hmm_context)
        for token in prefix:
            state = self.advance(state, [token])
        return state

    # ------------------------------------------------------------------ queries

    def next_log_probs(self, state_or_prefix: GuideState | Sequence[int]) -> torch.Tensor:
        """log P(constraint | prefix, x) for every x: (B, V) for a state, (V,) for a token-id prefix."""
        if isinstance(state_or_prefix, GuideState):
            return batched_next_log_probs([(self, state_or_prefix)])[0]
        return batched_next_log_probs([(self, self.state_for(state_or_prefix))])[0][0]

    def log_prob(self, state_or_prefix: GuideState | Sequence[int]) -> torch.Tensor:
        """log P(constraint | prefix) over continuations that complete the horizon: (B,) or a scalar."""
        single = not isinstance(state_or_prefix, GuideState)
        state = self.state_for(state_or_prefix) if single else state_or_prefix
        t = self.tables
        k = self.horizon - state.position
        if k == 0:
            out = torch.where(t.feasible[0][state.dfa_state], 0.0, NEG_INF)
        else:
            # R_k[s] = edge sum over U_{k-1}, only for the beams' states
            r_k = t._edge_sum(t.log_u[k - 1], k, state.dfa_state)  # (B, H)
            r_k = torch.where(t.feasible[k][state.dfa_state][:, None], r_k, NEG_INF)
            out = torch.logsumexp(state.log_alpha + r_k, dim=1)
            out = torch.where(t.certain[k][state.dfa_state], 0.0, out.clamp_max(0.0))
        return out[0] if single else out

    # ------------------------------------------------------------------ batched step, in two halves

    def _dense_rows(self, state: GuideState) -> list[BlockPlan]:
        """Left rows of the shared product, per vocabulary block: a marginal row for each beam with a ratio
        to compute in that block, then one row per needed (beam, dense successor) whose classes have tokens
        in the block. A beam whose successors in a block are all certain or impossible needs no row there:
        its values are exactly 0 or -inf (once every keyword is in, a beam costs no product at all).
        """
        t = self.tables
        pos = state.position
        if pos >= self.horizon:
            raise GuideError(f"the prefix already has {pos} tokens, the horizon is {self.horizon}")
        r = self.horizon - pos - 1
        succ = t.dense_succ[state.dfa_state]  # (B, D), -1 padded
        valid = succ >= 0
        safe = succ.clamp_min(0)
        feasible = t.feasible[r][safe] & valid
        certain = t.certain[r][safe] & valid
        needed = feasible & ~certain
        in_block = t.slot_blocks[state.dfa_state]  # (B, D, blocks)
        left = state.log_alpha + t.log_scale  # (B, H): a_t * scale, so rows @ B equals a_t @ B'
        plans = []
        for k in range(t.num_blocks):
            need = needed & in_block[:, :, k]  # (B, D)
            with_marginal, marginal_row = _marginal_rows(need)
            m = len(with_marginal)
            beam_idx, slot_idx = need.nonzero(as_tuple=True)
            rows = torch.cat([left[with_marginal], left[beam_idx] + t.log_u[r][safe[beam_idx, slot_idx]]], 0)
            row_of_slot = torch.full(succ.shape, DEAD, dtype=torch.long, device=succ.device)
            row_of_slot[beam_idx, slot_idx] = m + torch.arange(len(beam_idx), device=succ.device)
            plans.append(BlockPlan(rows, torch.where(certain, CERTAIN, row_of_slot), marginal_row))
        return plans

    def _finish(
        self,
        state: GuideState,
        products: Sequence[tuple[torch.Tensor, torch.Tensor]],
        plans: Sequence[BlockPlan],
    ) -> torch.Tensor:
        """Assemble (B, V) from this guide's slices of the block products (rows as planned, linear with a
        log shift per row) plus the tail. Each block is one ratio joint / marginal, one log and one shift,
        then exactly 0 / -inf where the successor is certain / impossible."""
        t = self.tables
        b = state.batch_size
        r = self.horizon - state.position - 1
        out = torch.empty(b, self.hmm.vocab_size, device=state.log_alpha.device)  # columns in block order
        column = 0
        for k, ((product, shift), plan) in enumerate(zip(products, plans)):
            ratio = out[:, column : column + product.shape[1]]  # (B, V_k) view
            column += product.shape[1]
            slots = t.block_slot[state.dfa_state, k]  # (B,)
            if t.block_slot_everywhere[k] or bool((slots >= 0).all()):  # one successor per beam: whole rows
                row = plan.row_of_slot.gather(1, slots[:, None].clamp_min(0))  # (B, 1)
            else:  # several successors in this block: a row per token
                slot = t.slot_of_class[state.dfa_state][:, t.block_class[k]].clamp_min(0)  # (B, V_k)
                row = plan.row_of_slot.gather(1, slot)  # (B, V_k)
            if product.shape[0]:
                self._ratio(state, ratio, product, shift, row, plan.marginal_row, t.block_tokens[k])
            for code, value in ((DEAD, NEG_INF), (CERTAIN, 0.0)):
                if row.shape[1] > 1:
                    ratio.masked_fill_(row == code, value)
                else:  # whole rows: fill only those
                    hit = (row[:, 0] == code).nonzero()[:, 0]
                    if hit.numel():
                        ratio.index_fill_(0, hit, value)

        # tail tokens: one row per distinct (beam, successor) that is neither impossible nor certain, after
        # the marginal rows over the tail of the beams that have such a successor
        tail = t.tail_tokens
        if tail.numel():
            succ = t.tail_succ[state.dfa_state]  # (B, T)
            feasible, certain = t.feasible[r][succ], t.certain[r][succ]
            needed = feasible & ~certain
            values = torch.where(certain, 0.0, NEG_INF).expand(succ.shape)  # (B, T)
            if needed.any():
                with_marginal, marginal_row = _marginal_rows(needed)
                m = len(with_marginal)
                pair_key = torch.arange(b, device=succ.device)[:, None] * t.num_states + succ
                keys, inverse = torch.unique(torch.where(needed, pair_key, -1), return_inverse=True)
                pk = keys[keys >= 0]
                left = state.log_alpha + t.log_scale  # (B, H)
                rows = torch.cat(
                    [left[with_marginal], left[pk // t.num_states] + t.log_u[r][pk % t.num_states]]
                )
                tail_out, tail_shift = matmul_exp_nt(rows, t.tail_emission)  # (M + P, T), (M + P,)
                row = m + inverse - int((keys < 0).sum())  # (B, T) product row, < m where not needed
                log_ratio = torch.empty(succ.shape, device=succ.device)
                self._ratio(
                    state, log_ratio, tail_out, tail_shift, row.clamp_min(m), marginal_row, tail, needed
                )
                values = torch.where(needed, log_ratio, values)
            out[:, t.tail_position] = values
        out.clamp_max_(0.0)
        if t.num_blocks > 1:
            out = out.index_select(1, t.block_position)  # back to token order
        if t.banned is not None:
            out[:, t.banned] = NEG_INF
        if state.position + 1 < self.min_new_tokens + 1:
            out[:, t.eos_token_id] = NEG_INF
        if state.open_words is not None:  # the blocklist beside the DFA
            for beam, word in enumerate(state.open_words):
                blocked = torch.from_numpy(~self.dfa.blocklist.allowed(word)).to(out.device)
                out[beam].masked_fill_(blocked, NEG_INF)
        return out

    def _ratio(
        self,
        state: GuideState,
        out: torch.Tensor,
        product: torch.Tensor,
        shift: torch.Tensor,
        row: torch.Tensor,
        marginal_row: torch.Tensor,
        tokens: torch.Tensor,
        live: torch.Tensor | None = None,
    ) -> None:
        """out (B, n) = log(product[row] / product[marginal_row]) + shift difference: log P(constraint |
        prefix, x) for column j = token tokens[j]. row: (B, 1) one product row per beam, or (B, n) per
        token; entries < 0 (certain, impossible) and beams without a marginal row give values the caller
        overwrites. Products below float32's full precision are redone exactly (only where `live`)."""
        b = out.shape[0]
        rows = row.clamp_min(0)
        marginal = marginal_row.clamp_min(0)
        in_order = row.shape[1] == 1 and product.shape[0] == 2 * b and bool((marginal_row >= 0).all())
        in_order = in_order and torch.equal(rows[:, 0], torch.arange(b, 2 * b, device=rows.device))
        if in_order:  # every beam: its marginal row, then its one joint row
            joint, denominator = product[b:], product[:b]
        else:
            denominator = product.index_select(0, marginal)  # (B, n)
            joint = product.index_select(0, rows[:, 0]) if row.shape[1] == 1 else product.gather(0, rows)
        shift_difference = shift[rows] - shift[marginal][:, None]  # (B, 1) or (B, n)
        torch.div(joint, denominator, out=out).log_().add_(shift_difference)
        if float(product.amin()) < LOSSLESS:  # below float32's full precision somewhere
            if live is None:
                live = (row >= 0) & (marginal_row >= 0)[:, None]
            self._redo_imprecise(state, out, joint, denominator, live, tokens)

    def _redo_imprecise(
        self,
        state: GuideState,
        log_ratio: torch.Tensor,
        joint: torch.Tensor,
        marginal: torch.Tensor,
        live: torch.Tensor,
        tokens: torch.Tensor,
    ) -> None:
        """Overwrite, in place, the (B, n) log ratios whose linear products fell below 1e-30 (only where
        `live`; column j is token tokens[j]) with their exact values."""
        beams, columns = (live & ((joint < LOSSLESS) | (marginal < LOSSLESS))).nonzero(as_tuple=True)
        if beams.numel():
            log_ratio[beams, columns] = self._exact_log_ratio(state, beams, tokens[columns])

    def _exact_log_ratio(self, state: GuideState, beams: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """log P(constraint | prefix, x) for single (beam, token) pairs by log-space sums over z, in float64:
        the fallback where a linear-space product fell below 1e-30, where float32 loses digits and then
        reaches 0 (a token emitted only by states the forward vector gives next to no mass). Scaled emission
        columns make this rare; it keeps the ratios exact and "-inf exactly where impossible" true instead
        of probably true."""
        t = self.tables
        r = self.horizon - state.position - 1
        succ = t.transitions[state.dfa_state[beams], t.token_class[tokens]]  # (n,)
        out = torch.empty(len(beams), device=beams.device)
        chunk = max(1, 2**22 // self.hmm.hidden_size)  # (chunk, H) temporaries of ~16 MB
        for start in range(0, len(beams), chunk):
            part = slice(start, start + chunk)
            emitted = (state.log_alpha[beams[part]] + t.log_scale).double()  # (chunk, H)
            emitted += self.hmm.log_emission.index_select(1, tokens[part]).T.double()
            marginal = torch.logsumexp(emitted, dim=1)
            joint = torch.logsumexp(emitted + t.log_u[r][succ[part]], dim=1)
            out[part] = (joint - marginal).float()
        out = torch.where(t.feasible[r][succ], out, NEG_INF)
        return torch.where(t.certain[r][succ], 0.0, out)


def _marginal_rows(need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """need (B, n): which beams have a ratio to compute. Returns those beams (M,) in order, and per beam its
    marginal row among the first M product rows, -1 for beams that need none."""
    with_marginal = need.any(dim=1).nonzero()[:, 0]  # (M,)
    marginal_row = torch.full((need.shape[0],), -1, dtype=torch.long, device=need.device)
    marginal_row[with_marginal] = torch.arange(len(with_marginal), device=need.device)
    return with_marginal, marginal_row


def batched_next_log_probs(items: Sequence[tuple[ConstraintGuide, GuideState]]) -> list[torch.Tensor]:
    """Step several guides (different constraints, same HMM) with one shared product per vocabulary block."""
    if not items:
        return []
    hmm = items[0][0].hmm
    if any(g.hmm is not hmm for g, _ in items):
        raise GuideError("batched guides must share one HMM")
    plans = [g._dense_rows(s) for g, s in items]
    products: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in items]
    groups: dict[tuple, list[int]] = {}  # guides with the same vocabulary blocks share their products
    for i, (guide, _) in enumerate(items):
        groups.setdefault((guide.tables.block_key, guide.emission_dtype), []).append(i)
    for (key, dtype), members in groups.items():
        tables = items[members[0]][0].tables
        for k in range(tables.num_blocks):
            tokens = None if tables.num_blocks == 1 else tables.block_tokens[k]
            right = hmm.emission_block(tokens, f"{key}/{k}", dtype)  # (V_k, H), maybe packed
            rows = torch.cat([plans[i][k].rows for i in members], 0)
            if rows.shape[0]:
                product, shift = matmul_exp_nt(rows, right)  # (rows of all members, V_k), (rows,)
            else:  # every beam certain or impossible in this block
                size = tables.block_tokens[k].numel()
                product, shift = rows.new_empty(0, size), rows.new_empty(0)
            start = 0
            for i in members:
                size = plans[i][k].rows.shape[0]
                products[i].append((product[start : start + size], shift[start : start + size]))
                start += size
    return [guide._finish(state, products[i], plans[i]) for i, (guide, state) in enumerate(items)]
