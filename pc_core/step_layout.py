"""Per-state layout of the guide's tail (the small token classes): which tail tokens a step must compute, so
a step needs no `torch.unique` and no product over tokens the dense product already gives.

The tail's successors of a DFA state s are tail_succ[s] (T,), a handful of distinct states repeated over T
tokens. Most tail tokens (T ~ 1-3k: tokens that start, extend or finish something the automaton tracks) take
the same successor as the large classes of their vocabulary block: inside a JSON string a digit or a
punctuation token continues the string like any word does. The dense product of that block (guide.py) has
already computed those tokens' values, joint row and marginal row alike: its columns span every token of
the block, tail tokens included. So per state only the *uncovered* tail tokens are computed here: those whose
successor differs from the successor whose row the block assembly gave them (a step along the 100 MaskBench
schemas of benchmarks.json_step: median 4 of ~2,250 tail tokens, at most ~400). For them, one product row
per distinct (beam, successor) that is neither impossible nor certain, after the marginal rows of the beams
that have one, on their own (k, H) rows of the emission.

Which tokens are covered depends on the state and on how the block assembly took its rows (whole rows per
beam, or a row per token where a beam of the batch has several successors in the block: then tail tokens
read slot 0, which depends on the beam states only), so the layout is computed once per beam states and kept
beside the guide tables, and with it, once per (beam states, tokens left), everything a step needs but the
product: which successors need a row, the beams' marginal rows, each column's row or its exact 0 / -inf
(lazily: a request visits at most `horizon` of them). Product rows are the same rows in the same order as
with the whole tail (beam, then successor ascending). Values of a covered token come from the block's
(packed) product instead of the tail's plain sgemm: the same ratio to float32 rounding (or to the emission
dtype's, docs/method.md §5.9), and its exact 0 / -inf entries are the same.

A JSON walk meets a new state at about half its steps, so building a layout is part of the step's cost:
layouts are built in numpy (a handful of beams and slots; tensors only at the end), the block layouts from
a pattern shared by states with the same slots and status (`_plan_pattern`), and every single state's tail
columns are precomputed with the tables (`TailLayout.precompute`, part of the guide's precompute). All the
layouts of a table live within `layout_budget(tables)` bytes (`LayoutMemory`), which GUIDE_TABLES counts
with the tables: they are built after the tables entered that cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from pc_core.block_plan import precompute_patterns, state_status
from pc_core.cache import buffer_bytes
from pc_core.guide_ratio import ROW_CERTAIN, ROW_IMPOSSIBLE, tail_log_ratio
from pc_core.kernels import matmul_exp_nt
from pc_core.layout_memory import MAX_LAYOUT_BYTES, LayoutMemory, as_tensors, layout_memory, nbytes_of
from pc_core.logspace import NEG_INF

if TYPE_CHECKING:
    from pc_core.guide_tables import GuideTables

# guide.py imports this module, so its types are not imported here: `guide` below is the calling
# pc_core.guide.ConstraintGuide and `state` its GuideState
ConstraintGuide = GuideState = Any


class TailColumns(NamedTuple):
    """The tail tokens a step computes for some beams, and their successors."""

    columns: torch.Tensor  # (k,) indices into the tail, ascending
    positions: torch.Tensor  # (k,) their columns in the block-ordered output (guide_tables.tail_position)
    tokens: torch.Tensor  # (k,) their token ids
    distinct: torch.Tensor  # (N,) distinct successors, per beam ascending, beams concatenated
    beam_of: torch.Tensor  # (N,) the beam of each
    index: torch.Tensor  # (B, k) per (beam, column) its successor's index into `distinct`
    distinct_np: np.ndarray  # (N,) `distinct`, `beam_of` and `index` as numpy arrays
    beam_of_np: np.ndarray
    index_np: np.ndarray


class TailStep(NamedTuple):
    """What a step with r tokens left after the next one computes for the tail, all but the product."""

    columns: torch.Tensor  # (k,) as TailColumns
    positions: torch.Tensor  # (k,)
    tokens: torch.Tensor  # (k,)
    pair_beam: torch.Tensor  # (P,) per needed (beam, successor): the beam
    pair_state: torch.Tensor  # (P,) and the successor, in beam order, successors ascending
    with_marginal: torch.Tensor  # (M,) the beams with a needed successor, each a marginal row first
    marginal_row: torch.Tensor  # (B,) each beam's marginal row, -1 for none
    row: torch.Tensor  # (B, k) product row of each (beam, column), or ROW_CERTAIN / ROW_IMPOSSIBLE
    fixed: torch.Tensor  # (B, k) the value where row < 0: 0 (certain) or -inf (impossible)
    row_beam: torch.Tensor  # (M + P,) the beam of each product row: with_marginal, then pair_beam
    computed: torch.Tensor  # (B, k) row >= 0
    row_or_0: torch.Tensor  # (B, k) row with the codes as 0
    marginal_or_0: torch.Tensor  # (B,) marginal_row with -1 as 0


class TailLayout:
    """Lazily filled layouts of one GuideTables' tail. `tail_succ` (S, T); without the block arrays every
    tail token is computed (no block product covers any). Cached per beam states (`of`) and per (beam
    states, tokens left) (`step`), within `memory`'s budget."""

    COVER = True  # skip the tail tokens the blocks give; False computes every one (the reference, tests)

    def __init__(
        self,
        tail_succ: torch.Tensor,
        tail_block: np.ndarray | None = None,
        block_slot: np.ndarray | None = None,
        slot_succ: np.ndarray | None = None,
        slot_blocks: np.ndarray | None = None,
        big_in_block: np.ndarray | None = None,
        tail_position: torch.Tensor | None = None,
        tail_tokens: torch.Tensor | None = None,
        everywhere: list[bool] | None = None,
        device: torch.device | str = "cpu",
        memory: LayoutMemory | None = None,
    ) -> None:
        self.tail_succ = tail_succ.numpy()  # (S, T)
        self.tail_block, self.block_slot = tail_block, block_slot  # (T,) block per tail token, (S, K)
        self.slot_succ = slot_succ  # (S, D): guide_tables.dense_succ
        self.slot_blocks, self.big_in_block = slot_blocks, big_in_block  # (S, D, K), (K,)
        self.everywhere = everywhere  # (K,) guide_tables.block_slot_everywhere
        t = self.tail_succ.shape[1]
        self.tail_position = tail_position if tail_position is not None else torch.arange(t)
        self.tail_tokens = tail_tokens if tail_tokens is not None else torch.arange(t)
        self.device = torch.device(device)
        self.memory = memory if memory is not None else LayoutMemory(MAX_LAYOUT_BYTES)
        self._columns: dict[tuple, TailColumns] = self.memory.cache()
        self._steps: dict[tuple, TailStep | None] = self.memory.cache()
        self._single: tuple[np.ndarray, ...] | None = None  # `precompute`: every single state's columns
        self._tail_position_np, self._tail_tokens_np = self.tail_position.numpy(), self.tail_tokens.numpy()

    def precompute(self, max_bytes: int) -> bool:
        """The columns of every single beam state at once (the guide's precompute, so that a step in a state
        it has not seen yet only slices them): per state its uncovered tail columns, their positions,
        tokens and index into the state's distinct successors, all concatenated with offsets (CSR). Not kept
        (False) when they would take more than `max_bytes`."""
        if self.tail_block is None or self.everywhere is None:
            return False
        s_count, t_count = self.tail_succ.shape
        block = self.tail_block
        whole = np.asarray(self.everywhere, bool)[None, :] | (self.block_slot >= 0)  # (S, K), one beam
        big = self.big_in_block[block][None, :]  # (1, T)
        chunk = max(1, (1 << 21) // max(1, t_count))
        found_state, found_column, total = [], [], 0
        for start in range(0, s_count, chunk):
            part = slice(start, min(s_count, start + chunk))
            slots = self.block_slot[part][:, block]  # (c, T)
            slot = np.maximum(np.where(whole[part][:, block], slots, 0), 0)
            beam = np.arange(slot.shape[0])[:, None]
            covered = big & (self.slot_succ[part][beam, slot] == self.tail_succ[part])
            covered &= self.slot_blocks[part][beam, slot, block[None, :]]
            state, column = np.nonzero(~covered)
            found_state.append(state + start)
            found_column.append(column)
            total += len(column)
            if 8 * total > max_bytes:  # two int32 arrays of the columns' length (and fewer successors)
                return False
        state, column = np.concatenate(found_state), np.concatenate(found_column)
        succ = self.tail_succ[state, column]
        pairs, inverse = np.unique(state * s_count + succ, return_inverse=True)  # per state, ascending
        starts = np.arange(s_count + 1)
        offsets = np.searchsorted(state, starts)  # (S + 1,) into the columns
        pair_offsets = np.searchsorted(pairs // s_count, starts)  # (S + 1,) into the distinct successors
        index = (inverse.reshape(-1) - pair_offsets[state]).astype(np.int32)
        self._single = (offsets, column.astype(np.int32), pair_offsets, pairs % s_count, index)
        self.memory.fixed += nbytes_of(*self._single)
        return True

    def _of_single(self, s: int) -> TailColumns:
        offsets, column, pair_offsets, distinct, index = self._single
        a, b = offsets[s], offsets[s + 1]
        mine = distinct[pair_offsets[s] : pair_offsets[s + 1]]
        beam_of, index = np.zeros(len(mine), np.int64), index[a:b].astype(np.int64).reshape(1, -1)
        cols = column[a:b].astype(np.int64)
        positions, tokens = self._tail_position_np[cols], self._tail_tokens_np[cols]
        return TailColumns(*as_tensors([cols, positions, tokens, mine, beam_of, index], torch.device("cpu")),
                           mine, beam_of, index)  # fmt: skip

    def whole_rows(self, states: list[int]) -> tuple[bool, ...]:
        """Per vocabulary block, whether the block assembly takes whole rows for these beams (guide.py,
        `_assemble_block`: every beam has one slot for the block's large classes) or a row per token."""
        if self.everywhere is None:
            return ()
        slots = self.block_slot[states]  # (B, K)
        return tuple(bool(every or (slots[:, k] >= 0).all()) for k, every in enumerate(self.everywhere))

    def uncovered(self, state: int, whole: tuple[bool, ...]) -> np.ndarray:
        """(T,) bool: the tail tokens of `state` whose value the block assembly does not give. With whole rows
        in block k a tail token there read the row of block_slot[state, k]; with a row per token, slot 0's (a
        small class has no slot of its own: guide.py clamps its -1 to 0). Covered where that slot leads to
        the token's own successor and has its row (or its exact 0 / -inf) in block k."""
        succ = self.tail_succ[state]
        if self.tail_block is None or not whole:
            return np.ones(len(succ), bool)
        block = self.tail_block
        if all(whole):  # every block: the state's own slot (most steps)
            slot = np.maximum(self.block_slot[state], 0)[block]  # (T,)
        else:
            slot = np.maximum(np.where(np.asarray(whole)[block], self.block_slot[state][block], 0), 0)
        covered = self.big_in_block[block] & (self.slot_succ[state][slot] == succ)
        covered &= self.slot_blocks[state][slot, block]
        return ~covered

    def of(self, states: list[int], whole: tuple[bool, ...] | None = None) -> TailColumns:
        """The tail tokens to compute for beams in `states` (all of them with whole=()), on the CPU."""
        key = (tuple(states), self.COVER if whole is None else whole)
        layout = self._columns.get(key)
        if layout is None:
            if self._single is not None and whole is None and self.COVER and len(states) == 1:
                layout = self._of_single(states[0])  # views on the precomputed arrays, but beam_of
                size = layout.beam_of_np.nbytes + 32 * len(layout.columns)
            else:
                if whole is None:
                    whole = self.whole_rows(states) if self.COVER else ()
                layout = self._build(states, whole)
                size = nbytes_of(layout.distinct_np, layout.beam_of_np, layout.index_np) + 24 * len(
                    layout.columns
                )
            if self.memory.charge(size):
                self._columns[key] = layout
        return layout

    def _build(self, states: list[int], whole: tuple[bool, ...]) -> TailColumns:
        unique = list(dict.fromkeys(states))
        needed = self.uncovered(unique[0], whole)
        for s in unique[1:]:
            needed |= self.uncovered(s, whole)
        columns = np.flatnonzero(needed)
        distinct, beam_of, index, offset = [], [], [], 0
        for beam, s in enumerate(states):
            mine, inverse = np.unique(self.tail_succ[s][columns], return_inverse=True)
            distinct.append(mine)
            beam_of.append(np.full(len(mine), beam, np.int64))
            index.append(inverse.reshape(-1) + offset)
            offset += len(mine)
        distinct_np = np.concatenate(distinct).astype(np.int64)
        beam_of_np = np.concatenate(beam_of)
        index_np = np.stack(index).astype(np.int64).reshape(len(states), len(columns))
        cols = torch.from_numpy(columns)
        return TailColumns(
            cols,
            self.tail_position.index_select(0, cols),
            self.tail_tokens.index_select(0, cols),
            torch.from_numpy(distinct_np),
            torch.from_numpy(beam_of_np),
            torch.from_numpy(index_np),
            distinct_np,
            beam_of_np,
            index_np,
        )

    def step(
        self, states: list[int], r: int, feasible_np: np.ndarray, certain_np: np.ndarray
    ) -> TailStep | None:
        """The step's layout for beams in `states` with r tokens left after the next one (feasible_np[r] and
        certain_np[r], (n + 1, S) on the CPU, decide which successors need a row), on `device`; None when no
        tail token is left. Kept per (states, which of their successors are feasible / certain)."""
        layout = self.of(states)
        d = layout.distinct_np
        is_feasible, is_certain = feasible_np[r][d], certain_np[r][d]  # (N,)
        # the layout depends on r only through which successors are feasible / certain: keyed by that
        key = (tuple(states), self.COVER, is_feasible.tobytes(), is_certain.tobytes())
        if key in self._steps:
            return self._steps[key]
        out, size = None, 0
        if len(layout.columns):
            b = len(states)
            pairs = np.flatnonzero(is_feasible & ~is_certain)  # (P,)
            beam_needs = np.zeros(b, bool)
            beam_needs[layout.beam_of_np[pairs]] = True
            with_marginal = np.flatnonzero(beam_needs)  # (M,)
            m = len(with_marginal)
            marginal_row = np.full(b, -1, np.int64)
            marginal_row[with_marginal] = np.arange(m)
            slot_row = np.where(is_certain, ROW_CERTAIN, ROW_IMPOSSIBLE)  # (N,) product row, or a code
            slot_row[pairs] = np.arange(m, m + len(pairs))
            row = slot_row[layout.index_np]  # (B, k)
            fixed = np.where(row == ROW_CERTAIN, np.float32(0.0), np.float32(NEG_INF)).astype(np.float32)
            pair_beam = layout.beam_of_np[pairs]
            parts = (pair_beam, d[pairs], with_marginal, marginal_row, row, fixed,
                     np.concatenate([with_marginal, pair_beam]), row >= 0, np.maximum(row, 0),
                     np.maximum(marginal_row, 0))  # fmt: skip
            size = nbytes_of(*parts) + 24 * len(layout.columns)
            head = layout[:3] if self.device.type == "cpu" else [x.to(self.device) for x in layout[:3]]
            out = TailStep(*head, *as_tensors(parts, self.device))
        if self.memory.charge(size):
            self._steps[key] = out
        return out

    def gather(self, states: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every tail token of the beams in `states`: their distinct successors concatenated (N,), the beam
        of each (N,), and per (beam, tail token) its index into the concatenation (B, T)."""
        layout = self.of(states, ())
        return layout.distinct, layout.beam_of, layout.index


def tail_layout(guide_tables: GuideTables) -> TailLayout:
    """The TailLayout kept on `guide_tables` (made on first use; it lives and is evicted with the tables,
    its layouts within the tables' layout budget)."""
    layout = getattr(guide_tables, "_step_tail", None)
    if layout is None:
        t = guide_tables
        memory = layout_memory(t)
        big_in_block = np.zeros(t.num_blocks, bool)  # does block k hold a large class
        for k, classes in enumerate(t.block_class):
            big_in_block[k] = bool(t.big_classes[torch.unique(classes).cpu().numpy()].any())
        arrays = (t.tail_succ.cpu(), t.block_slot.cpu().numpy(), t.dense_succ.cpu().numpy(),
                  t.slot_blocks.cpu().numpy(), t.tail_position.cpu(), t.tail_tokens.cpu())  # fmt: skip
        tail_block = t.block_of[t.tail_tokens.cpu().numpy()]
        # on a CPU the arrays are the tables' own (counted in nbytes); elsewhere copies, kept with the layouts
        copies = t.device.type != "cpu"
        memory.fixed += tail_block.nbytes + big_in_block.nbytes + (buffer_bytes(arrays) if copies else 0)
        layout = guide_tables._step_tail = TailLayout(
            arrays[0],
            tail_block,
            *arrays[1:4],
            big_in_block,
            *arrays[4:],
            list(t.block_slot_everywhere),
            t.device,
            memory,
        )
    return layout


def precompute_layouts(guide_tables: GuideTables) -> None:
    """With the tables (the guide's precompute): every single beam state's tail columns (TailLayout.precompute),
    within half the tables' layout budget, and the block row patterns of one-beam steps
    (block_plan.precompute_patterns), within three quarters of it."""
    budget = layout_memory(guide_tables).budget
    if guide_tables.tail_tokens.numel():
        tail_layout(guide_tables).precompute(budget // 2)
    precompute_patterns(guide_tables, 3 * budget // 4)


def tail_product(
    left: torch.Tensor, guide_tables: GuideTables, columns: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """matmul_exp_nt(left, the emission rows of the tail tokens `columns` (all when None)) (R, k), (R,). On
    CPU a plain `probs @ E^T` on the gathered rows: at a tail's size (k <= T ~ 1-3k, R ~ 2-12) MKL's sgemm
    takes 20-130 us where the packed oneDNN product (built for the full vocabulary) takes 110-190 us
    (measured at H = 64 / 256, /tmp scripts); with a few columns, microseconds."""
    emission_t = guide_tables.tail_emission_t  # (T, H)
    if columns is not None and len(columns) < emission_t.shape[0]:
        emission_t = emission_t.index_select(0, columns.to(emission_t.device))  # (k, H)
    if left.is_cuda:
        return matmul_exp_nt(left, emission_t)
    shift = torch.nan_to_num(left.amax(dim=1), nan=0.0, posinf=0.0, neginf=0.0)  # (R,), 0 for no finite entry
    probs = (left - shift[:, None]).exp_()  # (R, H)
    if emission_t.dtype != torch.float32:
        return (probs.to(emission_t.dtype) @ emission_t.T).float(), shift
    return probs @ emission_t.T, shift


def tail_step(guide_tables: GuideTables, states: list[int], r: int) -> TailStep | None:
    """The TailStep of beams in `states` with r tokens left after the next one (None: no tail token)."""
    feasible_np, certain_np = state_status(guide_tables)
    return tail_layout(guide_tables).step(states, r, feasible_np, certain_np)


def assemble_tail(
    guide: ConstraintGuide,
    state: GuideState,
    out: torch.Tensor,
    step: TailStep | None | bool = False,
    left: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    token_order: bool = False,
) -> None:
    """Write into out (B, V), block-ordered and filled by the block assembly, log P(constraint | prefix, x)
    for the tail tokens x the blocks did not give: one product row per distinct (beam, successor) that is
    neither impossible nor certain, after the marginal rows of the beams that have one. `step`, `left`
    (the beams' scaled forward rows) and `rows` (those product rows): as the plan found them (looked up /
    computed here when not given). `token_order`: out is in token order (a whole-vocabulary product)."""
    guide_tables = guide.tables
    r = guide.horizon - state.position - 1
    if step is False:
        step = tail_step(guide_tables, state.dfa_state.tolist(), r)
    if step is None:
        return
    positions = step.tokens if token_order else step.positions  # the tail tokens' columns in out
    if not step.pair_state.numel():  # every successor certain or impossible
        out.index_copy_(1, positions, step.fixed)
        return
    if rows is None:
        if left is None:
            left = state.log_alpha + guide_tables.log_scale  # (B, H)
        rows = left.index_select(0, step.row_beam)  # (M + P, H): the marginal rows, then the pairs'
        rows[len(step.with_marginal) :] += guide_tables.rows(r, step.pair_state)
    product, shift = tail_product(rows, guide_tables, step.columns)  # (M + P, k)
    clamped = (step.row_or_0, step.marginal_or_0)
    values = tail_log_ratio(guide, state, product, shift, step.row, step.marginal_row, step.tokens, clamped)
    # the columns are distinct: index_copy_ writes what out[:, positions] = ... does, with fewer ops
    out.index_copy_(1, positions, torch.where(step.computed, values, step.fixed))
