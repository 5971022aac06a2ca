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
from pc_core.guide_backward import SPECIAL_ROWS, backward_rows, edge_masses, store_rows
from pc_core.hmm import HMM

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
        self.initial_state = int(dfa.initial_state)  # where steps start (block_plan.first_steps)
        self.eos_token_id = dfa.eos_token_id
        self.eos_class = int(dfa.token_class[dfa.eos_token_id])
        self.delta = dfa.transitions.astype(np.int64)  # (S, C)
        self.transitions = torch.from_numpy(self.delta).to(self.device)
        self.token_class = torch.from_numpy(dfa.token_class.astype(np.int64)).to(self.device)  # (V,)
        banned = dfa.banned_tokens if dfa.banned_tokens is not None else np.zeros(dfa.vocab_size, bool)
        self.banned = torch.from_numpy(np.flatnonzero(banned)).to(self.device) if banned.any() else None

        feasibility = self._build_feasibility(dfa)
        masses = self._build_class_masses(hmm, dfa, banned)
        self._build_backward_tables(hmm, dfa, feasibility, masses)
        self._build_successor_slots(dfa)
        self._build_vocabulary_blocks(hmm, dfa, emission_dtype)
        self.nbytes = buffer_bytes(vars(self).values())

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise DeadlineExceeded("the guide's precompute stopped: the request's deadline passed")

    # ------------------------------------------------------------------ feasibility (§5.3, 5.4)

    def _build_feasibility(self, dfa: TokenDFA) -> Feasibility:
        """The exact -inf / 0 pattern and which rows are stored, decided on the DFA (feasibility.py):
        feasible[r, s] / certain[r, s] with r tokens left, and the states reached in exactly n - r tokens."""
        f = self.feasibility
        if f is None or f.horizon != self.horizon or f.min_new_tokens != self.min_new_tokens:
            f = Feasibility(dfa, self.horizon, self.min_new_tokens, no_certain=self.terminal is not None)
        if self.terminal is not None:  # the suffix's rest has probability < 1: no state is certain
            f.certain[:] = False
        self.feasibility = None  # not kept: its arrays live on below as tensors
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
        return f  # for the backward tables only

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

    # ------------------------------------------------------------------ backward tables (§5.2, 5.7)

    def _build_backward_tables(self, hmm: HMM, dfa: TokenDFA, f: Feasibility, masses: torch.Tensor) -> None:
        """The edges' masses E (E, H) and log U_r for the live (r, s) pairs (guide_backward.py), kept as
        rows of one table with row_index (n, S) pointing every pair at its row; the log-space edge sum's
        per-source tables (edge_index, edge_index_no_eos, edge_dst: (S, K), unused slots -> a -inf row)."""
        edges = edge_masses(self.delta, dfa.ended, masses)
        self.edge_log_mass, self.is_eos_edge = edges.log_mass, edges.is_ending  # (E + 1, H), (E,)
        self.edge_index, self.edge_index_no_eos, self.edge_dst = edges.index, edges.index_no_ending, edges.dst
        backward = backward_rows(hmm, dfa, f, edges, self.terminal, self.LINEAR_PATH, self._check_deadline)
        self.used_log_space_fallback = backward.used_log_space_fallback
        self.row_index = backward.row_index  # (n, S)
        self.log_rows, self.row_scale = store_rows(
            backward.log_rows, self.table_dtype, self.used_log_space_fallback
        )

    # ------------------------------------------------------------------ lookup (§5.9)

    def edge_sum(self, r: int, states: torch.Tensor) -> torch.Tensor:
        """W_r for `states` (B,), (B, H): the sum over their edges of mass x U_{r-1}[dst], without ending edges
        (EOS, a completed stop string or suffix) where ending is not allowed."""
        index = (self.edge_index if self.end_allowed[r] else self.edge_index_no_eos)[states]  # (B, K)
        values = self.rows(r - 1, self.edge_dst[states])  # (B, K, H)
        return torch.logsumexp(self.edge_log_mass[index] + values, dim=1)

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
        # (T, H), rows gathered per step (step_layout.py); float32 on CPU, where a plain bfloat16 sgemm is slow
        tail_dtype = torch.float32 if self.device.type == "cpu" else emission_dtype
        self.tail_emission_t = hmm.emission_scaled_t(self.tail_tokens, tail_dtype)
