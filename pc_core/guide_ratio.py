"""The guide's values from the shared products: log(joint / marginal) per (beam, token), exact where float32
is not.

A step's product rows (pc_core/guide.py: `plan`, `multiply`) hold, per beam, a marginal row a_t B' and joint
rows a_t B' U_r[successor] in linear space with a log shift per row. The guide's value for token x is the log
of their ratio plus the shift difference: `log_ratio` for a vocabulary block, `tail_log_ratio` for the tail
(pc_core/step_layout.py). Row codes stand for the successors that need no product: ROW_IMPOSSIBLE (-inf) and
ROW_CERTAIN (0). Where a product fell below float32's full precision (LOSSLESS), the value is recomputed by
log-space sums in float64 (`exact_log_ratio`), so "-inf exactly where impossible" holds for certain.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pc_core.kernels.reference import LOSSLESS
from pc_core.logspace import NEG_INF

# pc_core.guide imports this module, so its types are not imported here: `guide` below is a
# pc_core.guide.ConstraintGuide and `state` its GuideState
ConstraintGuide = GuideState = Any

ROW_IMPOSSIBLE, ROW_CERTAIN = (
    -1,
    -2,
)  # product-row codes: the successor cannot accept (-inf) / always does (0)


def log_(x: torch.Tensor) -> torch.Tensor:
    """x.log_() for vocabulary-wide rows: on a CPU through numpy, whose float32 log has its own vectorised
    code (within 3 ulp of the exact log, torch's within 1: a few 1e-7 relative, where a bfloat16 product
    alone allows 1.6%, docs/method.md §5.7 and §5.9). 19 us against torch's 51-74 us for 50,257 entries on
    the dev box's AMD CPU: 4.5% of a step inside a JSON string (in-process A/B). log 0 = -inf and log nan =
    nan, as torch's, without a warning."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return x.log_()
    values = x.numpy()  # a view, strided where x is (a block's columns of a (B, V) row)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log(values, out=values)
    return x


def marginal_rows(need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """need (B, n): which beams have a ratio to compute. Returns those beams (M,) in order, and per beam its
    marginal row among the first M product rows, -1 for beams that need none."""
    with_marginal = need.any(dim=1).nonzero()[:, 0]  # (M,)
    marginal_row = torch.full((need.shape[0],), -1, dtype=torch.long, device=need.device)
    marginal_row[with_marginal] = torch.arange(len(with_marginal), device=need.device)
    return with_marginal, marginal_row


def log_ratio(
    guide: ConstraintGuide,
    state: GuideState,
    out: torch.Tensor,
    product: torch.Tensor,
    shift: torch.Tensor,
    row: torch.Tensor,
    marginal_row: torch.Tensor,
    tokens: torch.Tensor | None,
    in_order: bool | None = None,
) -> None:
    """out (B, n) = log(product[row] / product[marginal_row]) + shift difference: log P(constraint |
    prefix, x) for column j = token tokens[j] (token j where tokens is None). row: (B, 1) one product row
    per beam, or (B, n) per token; entries < 0 (certain, impossible) and beams without a marginal row give
    values the caller overwrites. `in_order`: whether the product is every beam's marginal row then its one
    joint row, in beam order (found here when None). `product`: float32, or bfloat16 (guide.multiply's raw
    product), read as its exact float32 values. Products below float32's full precision are redone exactly."""
    b = out.shape[0]
    if in_order is None:
        in_order = row.shape[1] == 1 and product.shape[0] == 2 * b and bool((marginal_row >= 0).all())
        in_order = in_order and torch.equal(row[:, 0], torch.arange(b, 2 * b, device=row.device))
    if in_order:  # every beam: its marginal row, then its one joint row
        joint, denominator = product[b:], product[:b]
        if product.dtype != torch.float32:  # the joint rows are cast (exactly) as the division reads them;
            # the marginal rows cast into `out` and divided in place: no second (B, n) buffer
            log_(torch.div(joint, out.copy_(denominator), out=out))
        else:
            log_(torch.div(joint, denominator, out=out))
        if b == 1 and shift.device.type == "cpu":  # the float32 difference as a scalar: fewer ops per step
            pair = shift.numpy()
            out.add_(float(pair[1] - pair[0]))
        else:
            out.add_((shift[b:] - shift[:b])[:, None])
        _redo_lossy(guide, state, out, product, joint, denominator, row, marginal_row, tokens)
        return
    product = product.float()  # (a bfloat16 product: exactly its values)
    rows = row.clamp_min(0)
    marginal = marginal_row.clamp_min(0)
    denominator = product.index_select(0, marginal)  # (B, n)
    joint = product.index_select(0, rows[:, 0]) if row.shape[1] == 1 else product.gather(0, rows)
    shift_difference = shift[rows] - shift[marginal][:, None]  # (B, 1) or (B, n)
    log_(torch.div(joint, denominator, out=out)).add_(shift_difference)
    _redo_lossy(guide, state, out, product, joint, denominator, row, marginal_row, tokens)


def tail_log_ratio(
    guide: ConstraintGuide,
    state: GuideState,
    product: torch.Tensor,
    shift: torch.Tensor,
    row: torch.Tensor,
    marginal_row: torch.Tensor,
    tokens: torch.Tensor,
    clamped: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, k) `log_ratio` for tail tokens (pc_core/step_layout.py): a row per (beam, token) always, read
    through index_select (a fraction of advanced indexing's cost at these sizes); `tokens` (k,): the token
    of each column; `clamped`: row and marginal_row with codes as row 0, when the caller has them. Entries
    with row < 0 are left for the caller."""
    rows, marginal = clamped if clamped is not None else (row.clamp_min(0), marginal_row.clamp_min(0))
    joint = product.gather(0, rows)  # (B, k)
    if rows.shape[0] == 1:  # one beam: its marginal row is row 0 (its codes were clamped to 0): views
        denominator = product[:1]
        shift_difference = shift.index_select(0, rows[0]).sub_(shift[0])[None, :]
    else:
        denominator = product.index_select(0, marginal)  # (B, k)
        per_token = shift.index_select(0, rows.reshape(-1)).view(rows.shape)
        shift_difference = per_token - shift.index_select(0, marginal)[:, None]
    out = torch.div(joint, denominator).log_().add_(shift_difference)
    _redo_lossy(guide, state, out, product, joint, denominator, row, marginal_row, tokens)
    return out


def _redo_lossy(
    guide: ConstraintGuide,
    state: GuideState,
    out: torch.Tensor,
    product: torch.Tensor,
    joint: torch.Tensor,
    denominator: torch.Tensor,
    row: torch.Tensor,
    marginal_row: torch.Tensor,
    tokens: torch.Tensor | None,
) -> None:
    """Where a needed product fell below float32's full precision, the exact float64 value in `out`
    (column j is token tokens[j], or token j where tokens is None)."""
    # full precision everywhere (a bfloat16 minimum is exact); min(), not amin(): the same value, a faster
    # full reduction on a CPU (bfloat16 (2, 50,257): 9 us against 22 us)
    if float(product.min()) >= LOSSLESS:
        return
    joint, denominator = joint.float(), denominator.float()  # compared in float32, as computed
    live = (row >= 0) & (marginal_row >= 0)[:, None]
    beams, columns = (live & ((joint < LOSSLESS) | (denominator < LOSSLESS))).nonzero(as_tuple=True)
    if beams.numel():
        ids = columns if tokens is None else tokens[columns]
        out[beams, columns] = exact_log_ratio(guide, state, beams, ids)


def exact_log_ratio(
    guide: ConstraintGuide, state: GuideState, beams: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """log P(constraint | prefix, x) for single (beam, token) pairs by log-space sums over z, in float64:
    the fallback where a linear-space product fell below 1e-30, where float32 loses digits and then
    reaches 0 (a token emitted only by states the forward vector gives next to no mass). Scaled emission
    columns make this rare; it keeps the ratios exact and "-inf exactly where impossible" true instead
    of probably true."""
    guide_tables, hmm = guide.tables, guide.hmm
    r = guide.horizon - state.position - 1
    succ = guide_tables.transitions[state.dfa_state[beams], guide_tables.token_class[tokens]]  # (n,)
    out = torch.empty(len(beams), device=beams.device)
    chunk = max(1, 2**22 // hmm.hidden_size)  # (chunk, H) temporaries of ~16 MB
    for start in range(0, len(beams), chunk):
        part = slice(start, start + chunk)
        emitted = (state.log_alpha[beams[part]] + guide_tables.log_scale).double()  # (chunk, H)
        emitted += hmm.log_emission.index_select(1, tokens[part]).T.double()
        marginal = torch.logsumexp(emitted, dim=1)
        joint = torch.logsumexp(emitted + guide_tables.rows(r, succ[part]), dim=1)
        out[part] = (joint - marginal).float()
    out = torch.where(guide_tables.feasible[r][succ], out, NEG_INF)
    return torch.where(guide_tables.certain[r][succ], 0.0, out)
