"""What the guide precomputes for (DFA, horizon n, minimum length, HMM), shared by every request using them
(docs/method.md §5.1-5.4, 5.6-5.8). Notation as there: S states, C token classes, E edges, H hidden states.

    feasible[r, s], certain[r, s]   can / must the DFA accept from s within r more tokens      (n + 1, S)
    M[c, z]  = sum_{x in c} B'[z, x]                                class emission masses        (C, H)
    E[e, z]  = sum_{c: delta(s, c) = s'} M[c, z]   for edge e = s -> s'                          (E, H)
    U_0[s]   = 0 if s accepts else -inf;  W_r[s] = logsumexp_e (E[e] + U_{r-1}[s'_e]);  U_r = W_r @ A^T
                                                                                                 (n, S, H)
B' is the emission without the banned tokens (docs/method.md §5.8). The step (guide.py) reads U_r through
rows per *successor slot*: the few successors a state's large token classes lead to; small classes ("tail"
tokens: those that start, extend or finish a relevant word) are handled per token.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch

from pc_core.cache import buffer_bytes
from pc_core.class_masses import class_masses
from pc_core.constraints.dfa import TokenDFA
from pc_core.errors import BlocklistInteraction, DeadlineExceeded
from pc_core.hmm import HMM
from pc_core.kernels import edge_logsumexp, edge_scaled_sum, log_matmul_exp, onednn_packed
from pc_core.kernels.reference import LOSSLESS

NEG_INF = float("-inf")
BIG_CLASS_FRACTION = 0.01  # classes holding >= 1% of the vocabulary get a dense product row


class GuideTables:
    """Everything precomputed for (DFA, horizon, min length, HMM); see the module docstring."""

    LINEAR_PATH = True  # the scaled linear-space backward step; False forces the log-space reference path

    def __init__(
        self,
        hmm: HMM,
        dfa: TokenDFA,
        horizon: int,
        min_new_tokens: int,
        emission_dtype: torch.dtype,
        deadline: float | None = None,
    ) -> None:
        """`deadline` (time.perf_counter()): stop with DeadlineExceeded once it passes (nobody waits)."""
        self.horizon, self.min_new_tokens = horizon, min_new_tokens
        self.deadline = deadline
        self.device = hmm.device
        self.num_states = dfa.num_states
        self.eos_token_id = dfa.eos_token_id
        self.eos_class = int(dfa.token_class[dfa.eos_token_id])
        self.delta = dfa.transitions.astype(np.int64)  # (S, C)
        self.transitions = torch.from_numpy(self.delta).to(self.device)
        self.token_class = torch.from_numpy(dfa.token_class.astype(np.int64)).to(self.device)  # (V,)
        banned = dfa.banned_tokens if dfa.banned_tokens is not None else np.zeros(dfa.vocab_size, bool)
        self.banned = torch.from_numpy(np.flatnonzero(banned)).to(self.device) if banned.any() else None

        self._build_feasibility(dfa, banned)
        masses = self._build_class_masses(hmm, dfa, banned)
        edge_mass, edges = self._build_edge_masses(dfa, masses)
        self._build_backward_tables(hmm, dfa, edge_mass, edges)
        self._build_successor_slots(dfa)
        self._build_vocabulary_blocks(hmm, dfa, emission_dtype)
        self.nbytes = buffer_bytes(vars(self).values())

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise DeadlineExceeded("the guide's precompute stopped: the request's deadline passed")

    # ------------------------------------------------------------------ feasibility (§5.3, 5.4)

    def _build_feasibility(self, dfa: TokenDFA, banned: np.ndarray) -> None:
        """The exact -inf / 0 pattern, decided on the DFA: feasible[r, s] / certain[r, s] with r tokens left.
        An *ending* transition leads from a live state to an ended one: EOS, and with a suffix or stop strings
        the tokens that complete them. end_allowed[r]: may the first of r tokens end the text (not among the
        first min_new_tokens tokens)."""
        n, (s_count, c_count) = self.horizon, dfa.transitions.shape
        ended = dfa.ended
        # Banned tokens lead to the rejecting sink, which must not keep a state from being certain: under B'
        # they have probability 0, so a class of only banned tokens cannot be reached.
        possible = np.bincount(dfa.token_class[~banned], minlength=c_count) > 0  # (C,)
        self.ending = ~ended[:, None] & ended[self.delta]  # (S, C)
        feasible = np.zeros((n + 1, s_count), bool)
        certain = np.zeros((n + 1, s_count), bool)
        feasible[0] = certain[0] = dfa.accepting
        end_allowed = np.ones(n + 1, bool)
        for r in range(1, n + 1):
            end_allowed[r] = n - r + 1 >= self.min_new_tokens + 1
            ok = (
                ~self.ending if not end_allowed[r] else np.ones_like(self.ending)
            )  # after an end, all is allowed
            feasible[r] = (ok & feasible[r - 1][self.delta]).any(axis=1)
            certain[r] = ((ok & certain[r - 1][self.delta]) | ~possible).all(axis=1)
        self.end_allowed = end_allowed
        # tokens other than EOS that end the text (they complete a stop string or the suffix), for the step's mask
        self.ending_t = torch.from_numpy(self.ending).to(self.device)
        eos_column = np.zeros(c_count, bool)
        eos_column[self.eos_class] = True
        self.ends_by_text = bool((self.ending & ~eos_column[None, :]).any())
        if dfa.safe_classes is not None:
            _check_blocklist_cannot_dead_end(dfa, feasible, self.ending, end_allowed, n)
        self.feasible = torch.from_numpy(feasible).to(self.device)
        self.certain = torch.from_numpy(certain).to(self.device)

    # ------------------------------------------------------------------ masses (§5.1, 5.8)

    def _build_class_masses(self, hmm: HMM, dfa: TokenDFA, banned: np.ndarray) -> torch.Tensor:
        """M (C, H) under B', the vocabulary blocks' layout and the banned tokens' scale: generation never
        emits banned tokens, so the guide's HMM has their emissions removed and rows renormalised,
        B'[z, x] = B[z, x] * scale[z]; the scale folds into every left vector, so products read B itself."""
        block_of = np.zeros(dfa.vocab_size, np.int64)  # vocabulary blocks, see _build_vocabulary_blocks
        if dfa.token_block is not None and len(np.unique(dfa.token_block)) > 1:
            block_of = dfa.token_block.astype(np.int64)
        self.block_of = block_of
        self.block_key = hashlib.sha256(block_of.tobytes()).hexdigest()[:16] if block_of.any() else "all"
        masses, banned_mass = class_masses(
            hmm, dfa.token_class, dfa.num_classes, block_of, self.block_key, banned
        )
        self.log_scale = -torch.log1p(-banned_mass).float()  # (H,)
        return (masses / (1 - banned_mass)[None, :]).float()  # (C, H)

    def _build_edge_masses(self, dfa: TokenDFA, masses: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """E (E, H) linear, and the edges (E, 2) sorted by source; log E padded per source state for the
        log-space edge sum (edge_index, edge_index_no_eos, edge_dst: (S, K), unused slots -> a -inf row)."""
        s_count, c_count = dfa.transitions.shape
        # distinct (source, destination) pairs as one int64 key: a 1-D unique, not np.unique(axis=0)
        pair_key = (np.arange(s_count)[:, None] * s_count + self.delta).reshape(-1)  # (S * C,)
        edge_key, edge_of_pair = np.unique(pair_key, return_inverse=True)  # sorted by source state
        edges = np.stack([edge_key // s_count, edge_key % s_count], 1)  # (E, 2)
        e_count = len(edges)
        incidence = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([edge_of_pair.reshape(-1), np.tile(np.arange(c_count), s_count)])),
            torch.ones(s_count * c_count),
            (e_count, c_count),
            check_invariants=False,
        ).to(self.device)
        edge_mass = torch.sparse.mm(incidence, masses)  # (E, H) linear
        self.edge_log_mass = torch.empty(e_count + 1, masses.shape[1], device=self.device)  # + the -inf row
        torch.log(edge_mass, out=self.edge_log_mass[:e_count])
        self.edge_log_mass[e_count] = NEG_INF
        degree = np.bincount(edges[:, 0], minlength=s_count)
        slot = np.arange(e_count) - np.repeat(np.cumsum(degree) - degree, degree)
        edge_index = np.full((s_count, int(degree.max())), e_count, np.int64)
        edge_index[edges[:, 0], slot] = np.arange(e_count)
        edge_dst = np.zeros_like(edge_index)
        edge_dst[edges[:, 0], slot] = edges[:, 1]
        self.is_eos_edge = (~dfa.ended[edges[:, 0]]) & dfa.ended[edges[:, 1]]  # ending edges (EOS, a stop...)
        self.edge_index = torch.from_numpy(edge_index).to(self.device)
        # steps where ending is not allowed: ending edges point at the padding row instead of a table of their own
        no_eos = np.where(np.append(self.is_eos_edge, False)[edge_index], e_count, edge_index)
        self.edge_index_no_eos = torch.from_numpy(no_eos).to(self.device)
        self.edge_dst = torch.from_numpy(edge_dst).to(self.device)
        return edge_mass, edges

    def edge_sum(self, log_u_next: torch.Tensor, r: int, states: torch.Tensor | None = None) -> torch.Tensor:
        """W_r: sum over edges of mass x U_{r-1}[dst], without ending edges (EOS, a completed stop string or
        suffix) where ending is not allowed.
        For all states (S, H), or for `states` only (B, H)."""
        index = self.edge_index if self.end_allowed[r] else self.edge_index_no_eos
        dst = self.edge_dst
        if states is not None:
            index, dst = index[states], dst[states]
        return edge_logsumexp(self.edge_log_mass, log_u_next, index, dst)

    # ------------------------------------------------------------------ backward tables (§5.2, 5.7)

    def _build_backward_tables(
        self, hmm: HMM, dfa: TokenDFA, edge_mass: torch.Tensor, edges: np.ndarray
    ) -> None:
        """log U_r (n, S, H), r = 0..n-1. Fast path: U_r kept as rows in [0, 1] times a per-state scale, so a
        step is gathers, products, an index_add and one matmul, with no exp/log per element. If anything it
        keeps falls below 1e-30 of its row's or edge group's largest value (a dynamic range float32 cannot
        hold exactly), that step and the rest take the exact log-space path (edge_logsumexp). Rows are then
        set to exactly -inf / 0 where the DFA says impossible / certain."""
        s_count, h, device = self.num_states, hmm.hidden_size, self.device
        transition_t = hmm.transition_probs().T  # U = W @ A^T on the transposed view: BLAS reads it as is
        accepting = torch.from_numpy(dfa.accepting).to(device)
        feasible, certain = self.feasible.cpu().numpy(), self.certain.cpu().numpy()
        infeasible_rows = [torch.from_numpy(np.flatnonzero(~f)).to(device) for f in feasible]
        certain_rows = [torch.from_numpy(np.flatnonzero(c)).to(device) for c in certain]
        log_u = torch.empty(self.horizon, s_count, h, device=device)
        log_u[0] = torch.where(accepting[:, None], 0.0, NEG_INF).expand(s_count, h)
        src, dst = torch.from_numpy(edges[:, 0]).to(device), torch.from_numpy(edges[:, 1]).to(device)
        linear = {True: (edge_mass, src, dst)}  # keyed by "ending allowed"
        if not self.end_allowed[1:].all():  # the minimum length forbids ending at some steps
            keep = torch.from_numpy(np.flatnonzero(~self.is_eos_edge)).to(device)
            linear[False] = (edge_mass[keep], src[keep], dst[keep])
        scaled = accepting.float()[:, None].expand(s_count, h).contiguous()  # (S, H) rows in [0, 1]
        scale = torch.where(accepting, 0.0, NEG_INF)  # (S,) log of each row's factor
        robust = not self.LINEAR_PATH
        for r in range(1, self.horizon):
            self._check_deadline()
            if not robust:
                mass, src, dst = linear[bool(self.end_allowed[r])]
                w, w_scale, lossy = edge_scaled_sum(mass, scaled, scale, src, dst, s_count)
                u = w @ transition_t  # (S, H), rows of W scaled to max 1, so no underflow in the product
                rowmax = u.amax(dim=1).clamp_min(torch.finfo(u.dtype).tiny)
                scaled, scale = u.div_(rowmax[:, None]), w_scale + torch.log(rowmax)
                # a feasible row spanning > 69 nats, or whose largest entry is itself that small: float32
                # cannot hold it exactly, so this step is redone in log space
                tiny_rows = (scaled.amin(dim=1) < LOSSLESS) | (rowmax < LOSSLESS)
                robust = lossy or bool(tiny_rows[self.feasible[r]].any())
                if not robust:
                    torch.log(scaled, out=log_u[r]).add_(scale[:, None])
            if robust:  # exact log-space step
                log_u[r] = log_matmul_exp(self.edge_sum(log_u[r - 1], r), transition_t)
            log_u[r].index_fill_(0, infeasible_rows[r], NEG_INF).index_fill_(0, certain_rows[r], 0.0)
        self.used_log_space_fallback = robust
        self.log_u = log_u

    # ------------------------------------------------------------------ step layout (§5.6)

    def _build_successor_slots(self, dfa: TokenDFA) -> None:
        """Per state, its distinct large-class successors (dense slots, -1 padded), the slot of each large
        class, and the tail: tokens of small classes, with their successor per state."""
        s_count, c_count = dfa.transitions.shape
        big = dfa.class_sizes >= max(1, int(BIG_CLASS_FRACTION * dfa.vocab_size))  # (C,)
        big[self.eos_class] = False
        self.big_classes = big
        slot_of_class = np.full((s_count, c_count), -1, np.int64)
        dense = []
        self._check_deadline()
        for s in range(s_count):
            succ = list(dict.fromkeys(self.delta[s, big].tolist()))
            dense.append(succ)
            for c in np.flatnonzero(big):
                slot_of_class[s, c] = succ.index(self.delta[s, c])
        dense_succ = np.full((s_count, max(1, max(len(d) for d in dense))), -1, np.int64)
        for s, succ in enumerate(dense):
            dense_succ[s, : len(succ)] = succ
        self.slot_of_class_np = slot_of_class
        self.dense_succ = torch.from_numpy(dense_succ).to(self.device)  # (S, D)
        self.slot_of_class = torch.from_numpy(slot_of_class).to(self.device)  # (S, C)
        tail = np.flatnonzero(~big[dfa.token_class])
        self.tail_tokens = torch.from_numpy(tail).to(self.device)  # (T,)
        self.tail_succ = torch.from_numpy(self.delta[:, dfa.token_class[tail]]).to(self.device)  # (S, T)

    def _build_vocabulary_blocks(self, hmm: HMM, dfa: TokenDFA, emission_dtype: torch.dtype) -> None:
        """The product is split into vocabulary blocks (TokenDFA.token_block: does the token continue a word
        or not); a successor's row is multiplied only with the blocks holding its classes' tokens. For keyword
        constraints mid-word, "continue the word" and "start another" have different successors, so a beam
        needs 2 rows per block instead of 3 full-vocabulary rows."""
        device, block_of = self.device, self.block_of
        s_count, width = self.dense_succ.shape
        self.num_blocks = int(block_of.max()) + 1
        blocks = [np.flatnonzero(block_of == k) for k in range(self.num_blocks)]
        self.block_tokens = [torch.from_numpy(ids).to(device) for ids in blocks]
        self.block_class = [self.token_class[ids] for ids in self.block_tokens]  # (V_k,) class per column
        position = np.empty(dfa.vocab_size, np.int64)  # column of each token in the block-ordered output
        position[np.concatenate(blocks)] = np.arange(dfa.vocab_size)
        self.block_position = torch.from_numpy(position).to(device)
        self.tail_position = self.block_position[self.tail_tokens]
        class_in_block = np.zeros((dfa.num_classes, self.num_blocks), bool)
        class_in_block[dfa.token_class, block_of] = True
        slot_blocks = np.zeros((s_count, width, self.num_blocks), bool)  # does slot d of state s need block k
        for c in np.flatnonzero(self.big_classes):
            slot_blocks[np.arange(s_count), self.slot_of_class_np[:, c]] |= class_in_block[c]
        self.slot_blocks = torch.from_numpy(slot_blocks).to(device)
        # the one slot all large-class tokens of block k take from state s (-1: several), so that a step
        # selects whole rows instead of gathering per token; the word/non-word split makes this the usual case
        block_slot = np.zeros((s_count, self.num_blocks), np.int64)
        for k in range(self.num_blocks):
            slots = self.slot_of_class_np[:, np.flatnonzero(self.big_classes & class_in_block[:, k])]
            if slots.shape[1]:
                block_slot[:, k] = np.where((slots == slots[:, :1]).all(1), slots[:, 0], -1)
        self.block_slot = torch.from_numpy(block_slot).to(device)
        self.block_slot_everywhere = (block_slot >= 0).all(0).tolist()  # per block: no state needs a gather
        self.tail_emission_t = hmm.emission_scaled_t(self.tail_tokens, emission_dtype)  # (T, H)
        self.tail_emission = onednn_packed.pack(self.tail_emission_t, pad=True) or self.tail_emission_t


def _check_blocklist_cannot_dead_end(
    dfa: TokenDFA, feasible: np.ndarray, ending: np.ndarray, end_allowed: np.ndarray, horizon: int
) -> None:
    """With a blocklist masked beside the DFA, decoding takes only tokens the mask allows. Feasibility computed
    with just the classes that hold a token the mask allows in every text a state stands for must equal
    feasibility with all classes: then every feasible state has a feasible, allowed next token, whatever
    the mask, and masking cannot dead-end a beam (docs/method.md §7). Raises BlocklistInteraction otherwise."""
    delta = dfa.transitions.astype(np.int64)
    reachable = feasible[0].copy()
    for r in range(1, horizon + 1):
        ok = np.where(dfa.ended[:, None], True, (end_allowed[r] | ~ending) & dfa.safe_classes)
        reachable = (ok & reachable[delta]).any(axis=1)
        if not np.array_equal(reachable, feasible[r]):
            lost = int((feasible[r] & ~reachable).sum())
            raise BlocklistInteraction(
                f"the blocklist could block every way to satisfy the rest of the constraint from {lost} "
                f"automaton states with {r} tokens left"
            )
