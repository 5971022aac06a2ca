"""The guide's backward recursion (docs/method.md §5.2, 5.7, 5.9): the edges' emission masses and log U_r for
the live (r, s) pairs, computed once per (DFA, horizon, minimum length, HMM). Notation as in guide_tables.py:

    E[e, z]  = sum_{c: delta(s, c) = s'} M[c, z]   for edge e = s -> s'                          (E, H)
    U_0[s]   = 0 if s accepts else -inf;  W_r[s] = logsumexp_e (E[e] + U_{r-1}[s'_e]);  U_r = W_r @ A^T

The rows of U are stored in one table, row_index (n, S) pointing every pair at its row: ROW_NEG_INF
(impossible, or never reached in n - r tokens), ROW_ZERO (certain), ROW_FINAL (an accepting ended state with a
terminal vector) or a computed row. GuideTables (guide_tables.py) keeps the results and reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from pc_core.constraints.dfa import TokenDFA
from pc_core.feasibility import Feasibility
from pc_core.hmm import HMM
from pc_core.kernels import edge_scaled_sum, log_matmul_exp
from pc_core.kernels.reference import LOSSLESS
from pc_core.logspace import NEG_INF

SPECIAL_ROWS = 3  # rows every step shares: -inf (impossible), 0 (certain), the terminal vector's row
ROW_NEG_INF, ROW_ZERO, ROW_FINAL = 0, 1, 2


class Edges(NamedTuple):
    """The DFA's distinct (source, destination) pairs, their masses, and per-source tables of them padded to K
    slots (unused slots point at the -inf row of log_mass), for the log-space edge sum."""

    pairs: np.ndarray  # (E, 2) source, destination; sorted by source
    mass: torch.Tensor  # (E, H) linear
    log_mass: torch.Tensor  # (E + 1, H): log mass, then a -inf row
    is_ending: np.ndarray  # (E,) bool: the edge ends the text (EOS, a completed stop string or suffix)
    index: torch.Tensor  # (S, K) edge ids of each source state
    index_no_ending: torch.Tensor  # (S, K) the same, ending edges pointing at the -inf row
    dst: torch.Tensor  # (S, K) the destination of each slot


def edge_masses(delta: np.ndarray, ended: np.ndarray, masses: torch.Tensor) -> Edges:
    """E (E, H) from the class masses M (C, H) and the transitions delta (S, C) int64; ended (S,) bool."""
    s_count, c_count = delta.shape
    device = masses.device
    # distinct (source, destination) pairs as one int64 key: a 1-D unique, not np.unique(axis=0)
    pair_key = (np.arange(s_count)[:, None] * s_count + delta).reshape(-1)  # (S * C,)
    edge_key, edge_of_pair = np.unique(pair_key, return_inverse=True)  # sorted by source state
    pairs = np.stack([edge_key // s_count, edge_key % s_count], 1)  # (E, 2)
    e_count = len(pairs)
    incidence = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([edge_of_pair.reshape(-1), np.tile(np.arange(c_count), s_count)])),
        torch.ones(s_count * c_count),
        (e_count, c_count),
        check_invariants=False,
    ).to(device)
    mass = torch.sparse.mm(incidence, masses)  # (E, H) linear
    log_mass = torch.empty(e_count + 1, masses.shape[1], device=device)  # + the -inf row
    torch.log(mass, out=log_mass[:e_count])
    log_mass[e_count] = NEG_INF
    degree = np.bincount(pairs[:, 0], minlength=s_count)
    slot = np.arange(e_count) - np.repeat(np.cumsum(degree) - degree, degree)
    index = np.full((s_count, int(degree.max())), e_count, np.int64)
    index[pairs[:, 0], slot] = np.arange(e_count)
    dst = np.zeros_like(index)
    dst[pairs[:, 0], slot] = pairs[:, 1]
    is_ending = (~ended[pairs[:, 0]]) & ended[pairs[:, 1]]  # ending edges (EOS, a stop...)
    # steps where ending is not allowed: ending edges point at the padding row instead of a table of their own
    no_ending = np.where(np.append(is_ending, False)[index], e_count, index)
    to_device = lambda a: torch.from_numpy(a).to(device)
    return Edges(pairs, mass, log_mass, is_ending, to_device(index), to_device(no_ending), to_device(dst))


class RowLayout(NamedTuple):
    row_index: np.ndarray  # (n, S) int64: the row of each (r, s) pair
    live: list[np.ndarray]  # per step r, the states whose rows step r computes, (L_r,)
    starts: list[int]  # per step r, its first row


def row_layout(f: Feasibility, accepting: np.ndarray, is_final: np.ndarray, has_terminal: bool) -> RowLayout:
    """Rows numbered step by step after the special rows: U_0 is special rows only; step r >= 1 computes the
    live states' rows (feasibility.Feasibility.live) that are neither certain nor final."""
    n, s_count = f.horizon, len(accepting)
    row_index = np.full((n, s_count), ROW_NEG_INF, np.int64)
    live, starts, start = [], [], SPECIAL_ROWS
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
    return RowLayout(row_index, live, starts)


class BackwardRows(NamedTuple):
    row_index: torch.Tensor  # (n, S) int64
    log_rows: torch.Tensor  # (SPECIAL_ROWS + P, H) float32, log U
    used_log_space_fallback: bool  # some step took the exact log-space path


def backward_rows(
    hmm: HMM,
    dfa: TokenDFA,
    f: Feasibility,
    edges: Edges,
    terminal: torch.Tensor | None,
    linear: bool,
    check_deadline: Callable[[], None],
) -> BackwardRows:
    """log U_r for the live (r, s) pairs, r = 0..n-1. Fast path (`linear`): rows in [0, 1] times a per-row
    scale, so a step is gathers, products, an index_add and one matmul over the live sources, with no exp/log
    per element. If anything it keeps falls below 1e-30 of its row's or edge group's largest value (a dynamic
    range float32 cannot hold exactly), that step and the rest take the exact log-space path."""
    n, h, device = f.horizon, hmm.hidden_size, hmm.device
    transition_t = hmm.transition_probs().T  # U = W @ A^T on the transposed view: BLAS reads it as is
    final, final_u = _terminal_row(dfa, terminal, transition_t)  # accepting ended states, their row
    is_final = np.zeros(dfa.num_states, bool)
    is_final[final] = True
    layout = row_layout(f, dfa.accepting, is_final, bool(is_final.any()) or terminal is not None)
    live = layout.live
    log_rows = torch.empty(SPECIAL_ROWS + sum(len(states) for states in live), h, device=device)  # (R, H)
    log_rows[ROW_NEG_INF], log_rows[ROW_ZERO], log_rows[ROW_FINAL] = NEG_INF, 0.0, final_u
    final_peak = final_u.max()
    special_scaled = torch.stack([torch.zeros(h), torch.ones(h), torch.zeros(h)]).to(device)
    special_scaled[ROW_FINAL] = (final_u - final_peak).exp()
    special_scale = torch.tensor([NEG_INF, 0.0, 0.0], device=device)
    special_scale[ROW_FINAL] = final_peak
    scaled, scale = special_scaled, special_scale  # rows of step r - 1, in row_index[r - 1]'s local order
    robust, start = not linear, SPECIAL_ROWS
    for r in range(1, n):
        check_deadline()
        states = live[r]  # (L,) sources with a row at this step
        sel, src_t, dst_t = _step_edges(layout, r, edges, f.end_allowed[r], device)
        if not robust:
            w, w_scale, lossy = edge_scaled_sum(
                edges.mass[_long(sel, device)], scaled, scale, src_t, dst_t, len(states)
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
            prev_log = torch.cat([log_rows[:SPECIAL_ROWS], log_rows[layout.starts[r - 1] : start]])
            w_log = _edge_logsumexp_flat(
                edges.log_mass[_long(sel, device)], prev_log, src_t, dst_t, len(states)
            )
            log_rows[start : start + len(states)] = log_matmul_exp(w_log, transition_t)
        start += len(states)
    return BackwardRows(torch.from_numpy(layout.row_index).to(device), log_rows, robust)


def store_rows(
    log_rows: torch.Tensor, table_dtype: torch.dtype, used_log_space_fallback: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rows, row_scale): the rows in log space (float32) and no scale, or with table_dtype bfloat16 as rows
    scaled to max 1 in bfloat16 and a float32 scale (R,): half the bytes, and every value within a relative
    2^-8 of float32 (bfloat16 keeps float32's exponent range, so nothing the fast path kept underflows; a table
    that needed the log-space path stays float32). docs/method.md §5.9 bounds the effect on the guide."""
    if table_dtype == torch.float32 or used_log_space_fallback:
        return log_rows, None
    peak = log_rows.amax(dim=1)  # (R,)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    return (log_rows - peak[:, None]).exp_().to(table_dtype), peak  # (R, H) scaled rows, (R,)


def _terminal_row(
    dfa: TokenDFA, terminal: torch.Tensor | None, transition_t: torch.Tensor
) -> tuple[np.ndarray, torch.Tensor]:
    """The accepting ended states (none without a terminal vector) and their row (H,): log P(the suffix's
    rest | z emitted the text's last token) = log sum_z' A[z, z'] exp(terminal[z']); 0 without one."""
    h, device = transition_t.shape[0], transition_t.device
    if terminal is None:
        return np.zeros(0, np.int64), torch.zeros(h, device=device)
    final = np.flatnonzero(dfa.accepting & dfa.ended)
    row = log_matmul_exp(terminal.float().to(device)[None, :], transition_t)[0]  # (H,)
    return final, row


def _step_edges(
    layout: RowLayout, r: int, edges: Edges, end_allowed: bool, device: torch.device
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The edges of step r: those leaving its live states (not ending ones where ending is not allowed), as
    (edge ids, source's position among the live states, destination's row among step r - 1's special + live
    rows)."""
    states, pairs = layout.live[r], edges.pairs
    local = np.full(layout.row_index.shape[1], -1, np.int64)
    local[states] = np.arange(len(states))
    keep = local[pairs[:, 0]] >= 0
    if not end_allowed:  # the minimum length forbids ending here
        keep &= ~edges.is_ending
    sel = np.flatnonzero(keep)
    rows = layout.row_index[r - 1][pairs[sel, 1]]  # (E_r,) global rows of step r - 1
    rows = np.where(rows >= SPECIAL_ROWS, rows - layout.starts[r - 1] + SPECIAL_ROWS, rows)
    return sel, _long(local[pairs[sel, 0]], device), _long(rows, device)


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
