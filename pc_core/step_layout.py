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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from pc_core.guide_ratio import ROW_CERTAIN, ROW_IMPOSSIBLE, marginal_rows, tail_log_ratio
from pc_core.kernels import matmul_exp_nt
from pc_core.logspace import NEG_INF

if TYPE_CHECKING:
    from pc_core.guide_tables import GuideTables

# guide.py imports this module, so its types are not imported here: `guide` below is the calling
# pc_core.guide.ConstraintGuide and `state` its GuideState
ConstraintGuide = GuideState = Any

MAX_ENTRIES = 1 << 22  # (beam, column) entries kept in one table's cached layouts; past it they start over


class TailColumns(NamedTuple):
    """The tail tokens a step computes for some beams, and their successors."""

    columns: torch.Tensor  # (k,) indices into the tail, ascending
    positions: torch.Tensor  # (k,) their columns in the block-ordered output (guide_tables.tail_position)
    tokens: torch.Tensor  # (k,) their token ids
    distinct: torch.Tensor  # (N,) distinct successors, per beam ascending, beams concatenated
    beam_of: torch.Tensor  # (N,) the beam of each
    index: torch.Tensor  # (B, k) per (beam, column) its successor's index into `distinct`
    distinct_np: np.ndarray  # (N,) `distinct` as a numpy array


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


class TailLayout:
    """Lazily filled layouts of one GuideTables' tail. `tail_succ` (S, T); without the block arrays every
    tail token is computed (no block product covers any). Cached per beam states (`of`) and per (beam
    states, tokens left) (`step`)."""

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
        self._columns: dict[tuple, TailColumns] = {}
        self._steps: dict[tuple, TailStep | None] = {}
        self._entries = 0

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
        slot = np.where(np.asarray(whole)[block], self.block_slot[state][block], 0)  # (T,)
        slot = np.maximum(slot, 0)
        covered = self.big_in_block[block] & (self.slot_succ[state][slot] == succ)
        covered &= self.slot_blocks[state][slot, block]
        return ~covered

    def of(self, states: list[int], whole: tuple[bool, ...] | None = None) -> TailColumns:
        """The tail tokens to compute for beams in `states` (all of them with whole=()), on the CPU."""
        key = (tuple(states), self.COVER if whole is None else whole)
        layout = self._columns.get(key)
        if layout is None:
            if whole is None:
                whole = self.whole_rows(states) if self.COVER else ()
            layout = self._columns[key] = self._build(states, whole)
            self._count(layout.index.numel())
        return layout

    def _count(self, entries: int) -> None:
        self._entries += entries
        if self._entries > MAX_ENTRIES:
            self._columns.clear()
            self._steps.clear()
            self._entries = 0

    def _build(self, states: list[int], whole: tuple[bool, ...]) -> TailColumns:
        needed = np.zeros(self.tail_succ.shape[1], bool)
        for s in dict.fromkeys(states):
            needed |= self.uncovered(s, whole)
        columns = np.flatnonzero(needed)
        distinct, beam_of, index, offset = [], [], [], 0
        for beam, s in enumerate(states):
            mine, inverse = np.unique(self.tail_succ[s][columns], return_inverse=True)
            distinct.append(mine)
            beam_of.append(np.full(len(mine), beam))
            index.append(inverse.reshape(-1) + offset)
            offset += len(mine)
        cols = torch.from_numpy(columns)
        return TailColumns(
            cols,
            self.tail_position.index_select(0, cols),
            self.tail_tokens.index_select(0, cols),
            torch.from_numpy(np.concatenate(distinct).astype(np.int64)),
            torch.from_numpy(np.concatenate(beam_of).astype(np.int64)),
            torch.from_numpy(np.stack(index).astype(np.int64)).reshape(len(states), len(columns)),
            np.concatenate(distinct).astype(np.int64),
        )

    def step(
        self,
        states: list[int],
        r: int,
        feasible: torch.Tensor,
        certain: torch.Tensor,
        feasible_np: np.ndarray,
        certain_np: np.ndarray,
    ) -> TailStep | None:
        """The step's layout for beams in `states` with r tokens left after the next one (feasible[r] and
        certain[r] decide which successors need a row; `_np`: the same on the CPU), on `device`; None when
        no tail token is left. Kept per (states, which of their successors are feasible / certain)."""
        layout = self.of(states)
        d = layout.distinct_np
        # the layout depends on r only through which successors are feasible / certain: keyed by that
        key = (tuple(states), self.COVER, feasible_np[r][d].tobytes(), certain_np[r][d].tobytes())
        if key in self._steps:
            return self._steps[key]
        out = None
        if layout.columns.numel():
            distinct, beam_of, index = layout.distinct, layout.beam_of, layout.index
            is_certain = certain[r].index_select(0, distinct.to(certain.device)).cpu()  # (N,)
            needed = feasible[r].index_select(0, distinct.to(feasible.device)).cpu() & ~is_certain
            pairs = needed.nonzero()[:, 0]  # (P,)
            beam_needs = torch.zeros(index.shape[0], dtype=torch.bool)
            beam_needs[beam_of[pairs]] = True
            with_marginal = beam_needs.nonzero()[:, 0]  # (M,)
            m = len(with_marginal)
            marginal_row = torch.full((index.shape[0],), -1, dtype=torch.long)
            marginal_row[with_marginal] = torch.arange(m)
            slot_row = torch.where(is_certain, ROW_CERTAIN, ROW_IMPOSSIBLE)  # (N,) product row, or a code
            slot_row[pairs] = torch.arange(m, m + len(pairs))
            row = slot_row[index]  # (B, k)
            fixed = torch.where(row == ROW_CERTAIN, 0.0, NEG_INF)
            parts = (layout.columns, layout.positions, layout.tokens, beam_of[pairs], distinct[pairs],
                     with_marginal, marginal_row, row, fixed)  # fmt: skip
            out = TailStep(*(x.to(self.device) for x in parts))
            self._count(row.numel())
        self._steps[key] = out
        return out

    def gather(self, states: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every tail token of the beams in `states`: their distinct successors concatenated (N,), the beam
        of each (N,), and per (beam, tail token) its index into the concatenation (B, T)."""
        layout = self.of(states, ())
        return layout.distinct, layout.beam_of, layout.index


def tail_layout(guide_tables: GuideTables) -> TailLayout:
    """The TailLayout kept on `guide_tables` (made on first use; it lives and is evicted with the tables)."""
    layout = getattr(guide_tables, "_tail_layout", None)
    if layout is None:
        t = guide_tables
        big_in_block = np.zeros(t.num_blocks, bool)  # does block k hold a large class
        for k, classes in enumerate(t.block_class):
            big_in_block[k] = bool(t.big_classes[torch.unique(classes).cpu().numpy()].any())
        layout = guide_tables._tail_layout = TailLayout(
            t.tail_succ.cpu(),
            t.block_of[t.tail_tokens.cpu().numpy()],
            t.block_slot.cpu().numpy(),
            t.dense_succ.cpu().numpy(),
            t.slot_blocks.cpu().numpy(),
            big_in_block,
            t.tail_position.cpu(),
            t.tail_tokens.cpu(),
            list(t.block_slot_everywhere),
            t.device,
        )
    return layout


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
    shift = left.max(dim=1).values  # (R,)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    probs = torch.exp(left - shift[:, None]).to(emission_t.dtype)  # (R, H)
    return (probs @ emission_t.T).float(), shift


def assemble_tail(guide: ConstraintGuide, state: GuideState, out: torch.Tensor) -> None:
    """Write into out (B, V), block-ordered and filled by the block assembly, log P(constraint | prefix, x)
    for the tail tokens x the blocks did not give: one product row per distinct (beam, successor) that is
    neither impossible nor certain, after the marginal rows of the beams that have one."""
    guide_tables = guide.tables
    r = guide.horizon - state.position - 1
    feasible_np, certain_np = _status(guide_tables)
    step = tail_layout(guide_tables).step(
        state.dfa_state.tolist(), r, guide_tables.feasible, guide_tables.certain, feasible_np, certain_np
    )
    if step is None:
        return
    if not step.pair_state.numel():  # every successor certain or impossible
        out[:, step.positions] = step.fixed
        return
    left = state.log_alpha + guide_tables.log_scale  # (B, H)
    pair_rows = left.index_select(0, step.pair_beam) + guide_tables.rows(r, step.pair_state)
    rows = torch.cat([left.index_select(0, step.with_marginal), pair_rows])
    product, shift = tail_product(rows, guide_tables, step.columns)  # (M + P, k)
    values = tail_log_ratio(guide, state, product, shift, step.row, step.marginal_row, step.tokens)
    out[:, step.positions] = torch.where(step.row >= 0, values, step.fixed)


class BlockLayout(NamedTuple):
    """A step's rows in one vocabulary block, all but their values: which beams take a marginal row, which
    (beam, dense successor) pairs a joint row, and where each slot's value comes from (guide.py, `plan`)."""

    with_marginal: torch.Tensor  # (M,) beams with a ratio to compute in the block, each a marginal row first
    pair_beam: torch.Tensor  # (Q,) per needed (beam, slot) in the block: the beam
    pair_state: torch.Tensor  # (Q,) and its successor
    row_of_slot: torch.Tensor  # (B, D) joint row per slot, or ROW_IMPOSSIBLE / ROW_CERTAIN
    marginal_row: torch.Tensor  # (B,) each beam's marginal row, -1 where it needs none in this block


MAX_PLANS = 1 << 15  # cached (beam states, tokens left) plans per table; past it they start over


def _status(guide_tables: GuideTables) -> tuple[np.ndarray, np.ndarray]:
    """feasible and certain (n + 1, S) as numpy arrays (views on a CPU), kept on the tables."""
    status = getattr(guide_tables, "_status_np", None)
    if status is None:
        status = guide_tables._status_np = (
            guide_tables.feasible.cpu().numpy(),
            guide_tables.certain.cpu().numpy(),
        )
    return status


def plan_layout(guide_tables: GuideTables, dfa_state: torch.Tensor, r: int) -> list[BlockLayout]:
    """Per vocabulary block, the BlockLayout of beams in `dfa_state` (B,) with r tokens left after the next
    one: a function of the states and of which of their dense successors are feasible / certain at r, so it
    is computed once per (beam states, that status) and kept beside the tables (JSON text revisits its
    states: inside a string, every token; the status changes only near the horizon); a step then only builds
    the rows' values."""
    plans = getattr(guide_tables, "_plan_layouts", None)
    if plans is None or len(plans) >= MAX_PLANS:
        plans = guide_tables._plan_layouts = {}
        guide_tables._dense_succ_np = guide_tables.dense_succ.cpu().numpy()
    states = dfa_state.tolist()
    succ = guide_tables._dense_succ_np[states]  # (B, D), -1 padded: -1 reads the last state, masked below
    feasible, certain = _status(guide_tables)
    valid = succ >= 0
    key = (tuple(states), (feasible[r][succ] & valid).tobytes(), (certain[r][succ] & valid).tobytes())
    layout = plans.get(key)
    if layout is None:
        layout = plans[key] = _plan_layout(guide_tables, dfa_state, r)
    return layout


def _plan_layout(guide_tables: GuideTables, dfa_state: torch.Tensor, r: int) -> list[BlockLayout]:
    succ = guide_tables.dense_succ[dfa_state]  # (B, D), -1 padded
    valid = succ >= 0
    succ_or_0 = succ.clamp_min(0)
    certain = guide_tables.certain[r][succ_or_0] & valid
    needed = guide_tables.feasible[r][succ_or_0] & valid & ~certain
    in_block = guide_tables.slot_blocks[dfa_state]  # (B, D, blocks)
    blocks = []
    for k in range(guide_tables.num_blocks):
        need = needed & in_block[:, :, k]  # (B, D)
        with_marginal, marginal_row = marginal_rows(need)
        beam, slot = need.nonzero(as_tuple=True)
        row_of_slot = torch.full(succ.shape, ROW_IMPOSSIBLE, dtype=torch.long, device=succ.device)
        row_of_slot[beam, slot] = len(with_marginal) + torch.arange(len(beam), device=succ.device)
        row_of_slot = torch.where(certain, ROW_CERTAIN, row_of_slot)
        blocks.append(BlockLayout(with_marginal, beam, succ_or_0[beam, slot], row_of_slot, marginal_row))
    return blocks
