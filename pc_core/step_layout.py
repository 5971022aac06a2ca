"""Per-state layout of the guide's tail (the small token classes), so a step needs no `torch.unique`.

The tail's successors of a DFA state s are tail_succ[s] (T,), a handful of distinct states repeated over T
tokens. `ConstraintGuide._assemble_tail` used to find the distinct (beam, successor) pairs of every step
with a `torch.unique` over (B, T) keys plus ~10 ops on (B, T) to build them. The distinct successors of s
and each token's index among them depend on s only, so they are computed once per visited state (lazily:
a request visits at most `horizon` states) and kept beside the guide tables. A step then decides which of
the few distinct successors are certain / impossible / needed and reads its (B, T) answers through the
stored index. Product rows are the same rows in the same order as before (beam, then successor
ascending). On CPU the tail's product is a plain sgemm rather than the packed oneDNN one (faster at a
tail's size), so values agree with the unique-based code to float32 rounding (largest log-space difference
measured along 20 MaskBench schemas: 3e-5) and its exact 0 / -inf entries are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pc_core.kernels import matmul_exp_nt
from pc_core.kernels.reference import LOSSLESS
from pc_core.logspace import NEG_INF

if TYPE_CHECKING:
    from pc_core.guide_tables import GuideTables

# guide.py imports this module, so its types are not imported here: `guide` below is the calling
# pc_core.guide.ConstraintGuide and `state` its GuideState
ConstraintGuide = GuideState = Any

ROW_IMPOSSIBLE, ROW_CERTAIN = -1, -2  # as in pc_core.guide (not imported: guide imports this module)


class TailLayout:
    """Lazily filled per-state layouts of one GuideTables' tail."""

    def __init__(self, tail_succ: torch.Tensor) -> None:
        self.tail_succ = tail_succ  # (S, T) long
        self._by_state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def of(self, state: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(distinct successors (n,) ascending, index of each tail token among them (T,))."""
        layout = self._by_state.get(state)
        if layout is None:
            distinct, inverse = torch.unique(self.tail_succ[state], return_inverse=True)
            layout = self._by_state[state] = (distinct, inverse)
        return layout

    def gather(self, states: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For beams in `states`: distinct successors of all beams concatenated (N,), the beam of each (N,),
        and per (beam, tail token) its index into the concatenation (B, T)."""
        layouts = [self.of(s) for s in states]
        if len(layouts) == 1:
            distinct, inverse = layouts[0]
            return distinct, torch.zeros(len(distinct), dtype=torch.long), inverse[None, :]
        counts = torch.tensor([len(d) for d, _ in layouts])
        offsets = (counts.cumsum(0) - counts).tolist()
        distinct = torch.cat([d for d, _ in layouts])
        beam_of = torch.repeat_interleave(torch.arange(len(layouts)), counts)
        index = torch.stack([inv + off for (_, inv), off in zip(layouts, offsets)])
        return distinct, beam_of, index


def tail_layout(guide_tables: GuideTables) -> TailLayout:
    """The TailLayout kept on `guide_tables` (made on first use; it lives and is evicted with the tables)."""
    layout = getattr(guide_tables, "_tail_layout", None)
    if layout is None:
        layout = guide_tables._tail_layout = TailLayout(guide_tables.tail_succ.cpu())
    return layout


def tail_product(left: torch.Tensor, guide_tables: GuideTables) -> tuple[torch.Tensor, torch.Tensor]:
    """matmul_exp_nt(left, tail emission) (R, T), (R,). On CPU a plain `probs @ E_tail^T`: at a tail's
    size (T ~ 1-3k, R ~ 2-12) MKL's sgemm takes 20-130 us where the packed oneDNN product (built for the
    full vocabulary) takes 110-190 us (measured at H = 64 / 256, /tmp scripts)."""
    if left.is_cuda:
        return matmul_exp_nt(left, guide_tables.tail_emission)
    shift = left.max(dim=1).values  # (R,)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    emission_t = guide_tables.tail_emission_t  # (T, H)
    probs = torch.exp(left - shift[:, None]).to(emission_t.dtype)  # (R, H)
    return (probs @ emission_t.T).float(), shift


def assemble_tail(guide: ConstraintGuide, state: GuideState) -> torch.Tensor:
    """(B, T) log P(constraint | prefix, x) for the tail tokens x: one product row per distinct (beam,
    successor) that is neither impossible nor certain, after the marginal rows of the beams that have one."""
    guide_tables = guide.tables
    device = state.log_alpha.device
    r = guide.horizon - state.position - 1
    distinct, beam_of, index = tail_layout(guide_tables).gather(state.dfa_state.tolist())
    distinct, beam_of, index = distinct.to(device), beam_of.to(device), index.to(device)
    certain = guide_tables.certain[r][distinct]  # (N,)
    needed = guide_tables.feasible[r][distinct] & ~certain  # (N,)
    pairs = needed.nonzero()[:, 0]  # (P,) in beam order, successors ascending
    slot_row = torch.where(certain, ROW_CERTAIN, ROW_IMPOSSIBLE)  # (N,) product row, or a code
    if not pairs.numel():
        return torch.where(_take(slot_row, index) == ROW_CERTAIN, 0.0, NEG_INF)
    # index_fill_ / index_copy_: a fraction of the cost of `x[index] = ...` at these sizes
    beam_needs = torch.zeros(index.shape[0], dtype=torch.bool, device=device).index_fill_(
        0, beam_of[pairs], True
    )
    with_marginal = beam_needs.nonzero()[:, 0]  # (M,)
    m = len(with_marginal)
    marginal_row = torch.full((index.shape[0],), -1, dtype=torch.long, device=device)  # (B,)
    marginal_row.index_copy_(0, with_marginal, torch.arange(m, device=device))
    left = state.log_alpha + guide_tables.log_scale  # (B, H)
    pair_rows = left[beam_of[pairs]] + guide_tables.rows(r, distinct[pairs])
    product, shift = tail_product(torch.cat([left[with_marginal], pair_rows]), guide_tables)  # (M + P, T)
    slot_row.index_copy_(0, pairs, torch.arange(m, m + len(pairs), device=device))
    row = _take(slot_row, index)  # (B, T)
    out = _tail_ratio(guide, state, product, shift, row, marginal_row)
    return out.masked_fill_(row == ROW_IMPOSSIBLE, NEG_INF).masked_fill_(row == ROW_CERTAIN, 0.0)


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] for a 1-D `values` and an (B, T) index: one index_select (advanced indexing is slower)."""
    return values.index_select(0, index.reshape(-1)).view(index.shape)


def _tail_ratio(
    guide: ConstraintGuide,
    state: GuideState,
    product: torch.Tensor,
    shift: torch.Tensor,
    row: torch.Tensor,
    marginal_row: torch.Tensor,
) -> torch.Tensor:
    """(B, T) log(product[row] / product[marginal_row]) + shift difference, as ConstraintGuide._ratio; where
    a needed product fell below float32's full precision, the exact float64 value. Entries with row < 0
    are left for the caller."""
    rows, marginal = row.clamp_min(0), marginal_row.clamp_min(0)
    joint, denominator = product.gather(0, rows), product.index_select(0, marginal)  # (B, T)
    shift_difference = _take(shift, rows) - shift.index_select(0, marginal)[:, None]
    out = torch.div(joint, denominator).log_().add_(shift_difference)
    if float(product.amin()) < LOSSLESS:  # below float32's full precision somewhere
        live = (row >= 0) & (marginal_row >= 0)[:, None]
        beams, columns = (live & ((joint < LOSSLESS) | (denominator < LOSSLESS))).nonzero(as_tuple=True)
        if beams.numel():
            out[beams, columns] = guide._exact_log_ratio(state, beams, guide.tables.tail_tokens[columns])
    return out
