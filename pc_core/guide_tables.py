"""What the guide precomputes for (DFA, horizon n, minimum length, HMM), shared by every request using them
(docs/method.md §5.1-5.4, 5.6-5.8). Notation as there: S states, C token classes, E edges, H hidden states.

    feasible[r, s], certain[r, s]   can / must the DFA accept from s within r more tokens      (n + 1, S)
    M[c, z]  = sum_{x in c} B'[z, x]                                class emission masses        (C, H)
    E[e, z]  = sum_{c: delta(s, c) = s'} M[c, z]   for edge e = s -> s'                          (E, H)
    U_0[s]   = 0 if s accepts else -inf;  W_r[s] = logsumexp_e (E[e] + U_{r-1}[s'_e]);  U_r = W_r @ A^T
                                                                                                 (n, S, H)
Only the rows of live (r, s) pairs are computed and stored (reachable in n - r tokens, able to accept, not
certain: feasibility.py); `rows(r, states)` reads them (§5.9). B' is the emission without the banned tokens (docs/method.md §5.8). The step (guide.py) reads U_r through
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
from pc_core.errors import DeadlineExceeded
from pc_core.feasibility import Feasibility
from pc_core.hmm import HMM
from pc_core.kernels import edge_scaled_sum, log_matmul_exp, onednn_packed
from pc_core.kernels.reference import LOSSLESS
from pc_core.logspace import NEG_INF

BIG_CLASS_FRACTION = 0.01  # classes holding >= 1% of the vocabulary get a dense product row
SPECIAL_ROWS = 3  # rows every step shares: -inf (impossible), 0 (certain), the terminal vector's row
ROW_NEG_INF, ROW_ZERO, ROW_FINAL = 0, 1, 2


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
        terminal: torch.Tensor | None = None,
        table_dtype: torch.dtype = torch.float32,
        feasibility: Feasibility | None = None,
    ) -> None:
        """`deadline` (time.perf_counter()): stop with DeadlineExceeded once it passes (nobody waits).
        `terminal` (H,): infilling, log P(the suffix's rest | z emits its first token) (pc_core.infill); the
        rows of the accepting ended states hold it, one transition back, instead of 0 (docs/method.md §4)."""
        self.horizon, self.min_new_tokens = horizon, min_new_tokens
        self.terminal = terminal
        self.table_dtype, self.feasibility = table_dtype, feasibility  # rows' storage; a precomputed one
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
        """The exact -inf / 0 pattern and which rows are stored, decided on the DFA (feasibility.py):
        feasible[r, s] / certain[r, s] with r tokens left, and the states reached in exactly n - r tokens."""
        f = self.feasibility
        if f is None or f.horizon != self.horizon or f.min_new_tokens != self.min_new_tokens:
            f = Feasibility(dfa, self.horizon, self.min_new_tokens, no_certain=self.terminal is not None)
        if self.terminal is not None:  # the suffix's rest has probability < 1: no state is certain
            f.certain[:] = False
        self.feasibility = None  # not kept: its arrays live on below as tensors
        self._feasibility = f  # for the backward tables only (deleted there)
        self.ending, self.end_allowed = f.ending, f.end_allowed
        c_count = dfa.num_classes
        # tokens other than EOS that end the text (they complete a stop string or the suffix), for the step's mask
        self.ending_t = torch.from_numpy(self.ending).to(self.device)
        eos_column = np.zeros(c_count, bool)
        eos_column[self.eos_class] = True
        self.ends_by_text = bool((self.ending & ~eos_column[None, :]).any())
        self.feasible = torch.from_numpy(f.feasible).to(self.device)
        self.certain = torch.from_numpy(f.certain).to(self.device)
        # reached[r, s]: some prefix of n - r tokens ends in s (rows of other pairs are never read)
        self.reached = torch.from_numpy(f.reach[self.horizon : 0 : -1].copy()).to(self.device)  # (n, S)

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

    def edge_sum(self, r: int, states: torch.Tensor) -> torch.Tensor:
        """W_r for `states` (B,), (B, H): the sum over their edges of mass x U_{r-1}[dst], without ending edges
        (EOS, a completed stop string or suffix) where ending is not allowed."""
        index = (self.edge_index if self.end_allowed[r] else self.edge_index_no_eos)[states]  # (B, K)
        values = self.rows(r - 1, self.edge_dst[states])  # (B, K, H)
        return torch.logsumexp(self.edge_log_mass[index] + values, dim=1)

    # ------------------------------------------------------------------ backward tables (§5.2, 5.7)

    def _build_backward_tables(
        self, hmm: HMM, dfa: TokenDFA, edge_mass: torch.Tensor, edges: np.ndarray
    ) -> None:
        """log U_r for the live (r, s) pairs only (feasibility.Feasibility.live), r = 0..n-1, stored as rows
        of one table with row_index (n, S) pointing every pair at its row: ROW_NEG_INF (impossible, or never
        reached in n - r tokens), ROW_ZERO (certain), ROW_FINAL (an accepting ended state with a terminal
        vector) or a computed row. Fast path: rows in [0, 1] times a per-row scale, so a step is gathers,
        products, an index_add and one matmul over the live sources, with no exp/log per element. If anything
        it keeps falls below 1e-30 of its row's or edge group's largest value (a dynamic range float32 cannot
        hold exactly), that step and the rest take the exact log-space path."""
        f, n, h, device = self._feasibility, self.horizon, hmm.hidden_size, self.device
        del self._feasibility
        transition_t = hmm.transition_probs().T  # U = W @ A^T on the transposed view: BLAS reads it as is
        final, final_u = self._terminal_rows(dfa, transition_t)  # accepting ended states, their row
        is_final = np.zeros(self.num_states, bool)
        is_final[final.cpu().numpy()] = True
        row_index, live = self._row_layout(f, dfa.accepting, is_final)
        total = SPECIAL_ROWS + sum(len(states) for states in live)
        log_rows = torch.empty(total, h, device=device)  # (SPECIAL_ROWS + P, H)
        log_rows[ROW_NEG_INF], log_rows[ROW_ZERO], log_rows[ROW_FINAL] = NEG_INF, 0.0, final_u
        final_peak = final_u.max()
        special_scaled = torch.stack([torch.zeros(h), torch.ones(h), torch.zeros(h)]).to(device)
        special_scaled[ROW_FINAL] = (final_u - final_peak).exp()
        special_scale = torch.tensor([NEG_INF, 0.0, 0.0], device=device)
        special_scale[ROW_FINAL] = final_peak
        scaled, scale = special_scaled, special_scale  # rows of step r - 1, in row_index[r - 1]'s local order
        robust, start = not self.LINEAR_PATH, SPECIAL_ROWS
        for r in range(1, n):
            self._check_deadline()
            states = live[r]  # (L,) sources with a row at this step
            sel, src_t, dst_t = self._step_edges(r, states, row_index[r - 1], edges)
            if not robust:
                w, w_scale, lossy = edge_scaled_sum(
                    edge_mass[_long(sel, device)], scaled, scale, src_t, dst_t, len(states)
                )
                u = w @ transition_t  # (L, H), rows of W scaled to max 1, so no underflow in the product
                rowmax = u.amax(dim=1).clamp_min(torch.finfo(u.dtype).tiny)
                new_scaled, new_scale = u.div_(rowmax[:, None]), w_scale + torch.log(rowmax)
                # a row spanning > 69 nats, or whose largest entry is itself that small: float32 cannot hold it
                # exactly, so this step is redone in log space
                tiny_rows = (new_scaled.amin(dim=1) < LOSSLESS) | (rowmax < LOSSLESS)
                robust = lossy or bool(tiny_rows.any())
                if not robust:
                    torch.log(new_scaled, out=log_rows[start : start + len(states)]).add_(new_scale[:, None])
                    scaled = torch.cat([special_scaled, new_scaled])
                    scale = torch.cat([special_scale, new_scale])
            if robust:  # exact log-space step
                prev_log = torch.cat([log_rows[:SPECIAL_ROWS], log_rows[self._block_start[r - 1] : start]])
                w_log = _edge_logsumexp_flat(
                    self.edge_log_mass[_long(sel, device)], prev_log, src_t, dst_t, len(states)
                )
                log_rows[start : start + len(states)] = log_matmul_exp(w_log, transition_t)
            start += len(states)
        self.used_log_space_fallback = robust
        self.row_index = torch.from_numpy(row_index).to(device)  # (n, S)
        self._store_rows(log_rows)

    def _step_edges(
        self, r: int, states: np.ndarray, prev: np.ndarray, edges: np.ndarray
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """The edges of step r: those leaving `states` (not ending ones where ending is not allowed), as
        (edge ids, source's position in `states`, destination's row among step r - 1's special + live rows)."""
        local = np.full(self.num_states, -1, np.int64)
        local[states] = np.arange(len(states))
        keep = local[edges[:, 0]] >= 0
        if not self.end_allowed[r]:  # the minimum length forbids ending here
            keep &= ~self.is_eos_edge
        sel = np.flatnonzero(keep)
        rows = prev[edges[sel, 1]]  # (E_r,) global rows of step r - 1
        rows = np.where(rows >= SPECIAL_ROWS, rows - self._block_start[r - 1] + SPECIAL_ROWS, rows)
        return sel, _long(local[edges[sel, 0]], self.device), _long(rows, self.device)

    def _row_layout(
        self, f: Feasibility, accepting: np.ndarray, is_final: np.ndarray
    ) -> tuple[np.ndarray, list]:
        """row_index (n, S) and the live states of each step, rows numbered step by step after the special
        rows; self._block_start[r] is the first row of step r."""
        n, s_count = self.horizon, self.num_states
        row_index = np.full((n, s_count), ROW_NEG_INF, np.int64)
        live, starts, start = [], [], SPECIAL_ROWS
        has_terminal = bool(is_final.any()) or self.terminal is not None
        for r in range(n):
            if r == 0:  # U_0: 0 where accepting (the terminal row with one), else -inf
                row_index[0][accepting] = ROW_FINAL if has_terminal else ROW_ZERO
                states = np.zeros(0, np.int64)
            else:
                row_index[r][f.certain[r]] = ROW_ZERO
                row_index[r][is_final & f.feasible[r]] = ROW_FINAL
                states = np.flatnonzero(f.live(r) & ~is_final)
                row_index[r][states] = start + np.arange(len(states))
            live.append(states)
            starts.append(start)
            start += len(states)
        self._block_start = starts
        return row_index, live

    def _store_rows(self, log_rows: torch.Tensor) -> None:
        """Keep the rows in log space (float32), or with table_dtype bfloat16 as rows scaled to max 1 in
        bfloat16 times a float32 scale: half the bytes, and every value within a relative 2^-8 of float32
        (bfloat16 keeps float32's exponent range, so nothing the fast path kept underflows; a table that
        needed the log-space path stays float32). docs/method.md §5.9 bounds the effect on the guide."""
        self._block_start = None
        if self.table_dtype == torch.float32 or self.used_log_space_fallback:
            self.log_rows, self.row_scale = log_rows, None
            return
        peak = log_rows.amax(dim=1)  # (R,)
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        self.log_rows = (log_rows - peak[:, None]).exp_().to(self.table_dtype)  # (R, H) scaled rows
        self.row_scale = peak

    def rows(self, r: int, states: torch.Tensor) -> torch.Tensor:
        """log U_r[states]: states.shape + (H,) float32."""
        return self.rows_by_id(self.row_index[r][states])

    def rows_by_id(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.log_rows[ids]
        if self.row_scale is None:
            return out
        return out.float().log_().add_(self.row_scale[ids][..., None])

    @property
    def log_u(self) -> torch.Tensor:
        """(n, S, H) dense view of the stored rows (tests, debugging): rows never reached are -inf."""
        return self.rows_by_id(self.row_index)

    @property
    def stored_rows(self) -> int:
        return int(self.log_rows.shape[0]) - SPECIAL_ROWS

    def _terminal_rows(self, dfa: TokenDFA, transition_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The accepting ended states (none without a terminal vector) and their row (H,): log P(the suffix's
        rest | z emitted the text's last token) = log sum_z' A[z, z'] exp(terminal[z']); 0 without one."""
        h = transition_t.shape[0]
        if self.terminal is None:
            return torch.empty(0, dtype=torch.long, device=self.device), torch.zeros(h, device=self.device)
        final = torch.from_numpy(np.flatnonzero(dfa.accepting & dfa.ended)).to(self.device)
        row = log_matmul_exp(self.terminal.float().to(self.device)[None, :], transition_t)[0]  # (H,)
        return final, row

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


def _long(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values, np.int64)).to(device)


def _edge_logsumexp_flat(
    log_mass: torch.Tensor, log_values: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, count: int
) -> torch.Tensor:
    """out[s] = logsumexp over edges e with src[e] = s of log_mass[e] + log_values[dst[e]]: (count, H).
    Max-shifted per source, so exact to float32 rounding whatever the range."""
    terms = log_mass + log_values[dst]  # (E, H)
    peak = torch.full((count, terms.shape[1]), NEG_INF, device=terms.device)
    peak = peak.scatter_reduce(0, src[:, None].expand_as(terms), terms, reduce="amax", include_self=True)
    safe = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.zeros_like(safe).index_add_(0, src, (terms - safe[src]).exp_())
    return total.log_().add_(safe)
