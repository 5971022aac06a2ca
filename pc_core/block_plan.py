"""The row plan of a guide step's vocabulary blocks (guide.py, `plan`): per set of beam states and vocabulary
block, which beams take a marginal row, which (beam, successor) pairs a joint row, and where each slot's value
comes from. Built in numpy from a pattern shared by states with the same slots and status, kept within the
table's layout memory (layout_memory.py); the patterns of one-beam steps are built with the tables
(`precompute_patterns`). The tail tokens the blocks do not give are step_layout.py's."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from pc_core.guide_ratio import ROW_CERTAIN, ROW_IMPOSSIBLE
from pc_core.layout_memory import as_tensors, layout_memory, nbytes_of

if TYPE_CHECKING:
    from pc_core.guide_tables import GuideTables


class BlockLayout(NamedTuple):
    """A step's rows in one vocabulary block, all but their values: which beams take a marginal row, which
    (beam, dense successor) pairs a joint row, and where each slot's value comes from (guide.py, `plan`);
    with whole rows (every beam one slot for the block's large classes), each beam's row and its fills."""

    with_marginal: torch.Tensor  # (M,) beams with a ratio to compute in the block, each a marginal row first
    pair_beam: torch.Tensor  # (Q,) per needed (beam, slot) in the block: the beam
    pair_state: torch.Tensor  # (Q,) and its successor
    row_of_slot: torch.Tensor  # (B, D) joint row per slot, or ROW_IMPOSSIBLE / ROW_CERTAIN
    marginal_row: torch.Tensor  # (B,) each beam's marginal row, -1 where it needs none in this block
    row_beam: torch.Tensor  # (M + Q,) the beam of each product row: with_marginal, then pair_beam
    row: torch.Tensor | None  # (B, 1) with whole rows: each beam's product row or code; None: a row per token
    impossible: torch.Tensor | None  # with whole rows: the beams whose row is ROW_IMPOSSIBLE (None: none)
    certain: torch.Tensor | None  # and ROW_CERTAIN
    in_order: bool  # with whole rows: the product is every beam's marginal row, then its joint row, in order
    uniform: bool = False  # every block has these whole rows: one product over the vocabulary (guide.py)


def state_status(guide_tables: GuideTables) -> tuple[np.ndarray, np.ndarray]:
    """feasible and certain (n + 1, S) as numpy arrays (views on a CPU), kept on the tables."""
    status = getattr(guide_tables, "_status_np", None)
    if status is None:
        status = guide_tables._status_np = (
            guide_tables.feasible.cpu().numpy(),
            guide_tables.certain.cpu().numpy(),
        )
        if guide_tables.device.type != "cpu":  # copies: kept with the layouts
            layout_memory(guide_tables).fixed += status[0].nbytes + status[1].nbytes
    return status


class _PlanArrays(NamedTuple):
    """The tables' arrays a plan layout reads, on the CPU (views on a CPU), and the layouts kept."""

    dense_succ: np.ndarray  # (S, D)
    slot_blocks: np.ndarray  # (S, D, K)
    block_slot: np.ndarray  # (S, K)
    everywhere: list[bool]  # (K,)
    plans: dict  # (states, status) -> list[BlockLayout]
    patterns: dict  # (slots, status) -> _plan_pattern's


def _plan_arrays(guide_tables: GuideTables) -> _PlanArrays:
    arrays = getattr(guide_tables, "_plan_arrays", None)
    if arrays is None:
        t, memory = guide_tables, layout_memory(guide_tables)
        parts = (t.dense_succ.cpu().numpy(), t.slot_blocks.cpu().numpy(), t.block_slot.cpu().numpy())
        if t.device.type != "cpu":
            memory.fixed += nbytes_of(*parts)
        arrays = guide_tables._plan_arrays = _PlanArrays(
            *parts, list(t.block_slot_everywhere), memory.cache(), memory.cache()
        )
    return arrays


def plan_layout(guide_tables: GuideTables, states: list[int], r: int) -> list[BlockLayout]:
    """Per vocabulary block, the BlockLayout of beams in `states` with r tokens left after the next one: a
    function of the states and of which of their dense successors are feasible / certain at r, so it is
    computed once per (beam states, that status) and kept beside the tables (JSON text revisits its states:
    inside a string, every token; the status changes only near the horizon); a step then only builds the
    rows' values."""
    arrays = _plan_arrays(guide_tables)
    succ = arrays.dense_succ[states]  # (B, D), -1 padded: -1 reads the last state, masked below
    feasible, certain = state_status(guide_tables)
    valid = succ >= 0
    is_feasible, is_certain = feasible[r][succ] & valid, certain[r][succ] & valid
    status = (is_feasible.tobytes(), is_certain.tobytes())
    key = (tuple(states), *status)
    layout = arrays.plans.get(key)
    if layout is None:
        pattern = _pattern(guide_tables, arrays, states, succ.shape, is_feasible, is_certain, status)
        succ_or_0 = np.maximum(succ, 0)
        layout, size = [], 0
        for block, (beam, slot) in zip(pattern[0], pattern[2]):
            pair_state = succ_or_0[beam, slot]
            size += pair_state.nbytes
            layout.append(block._replace(pair_state=as_tensors([pair_state], guide_tables.device)[0]))
        if guide_tables._layout_memory.charge(size):
            arrays.plans[key] = layout
    return layout


def _pattern(
    guide_tables: GuideTables,
    arrays: _PlanArrays,
    states: list[int],
    shape: tuple[int, ...],
    is_feasible: np.ndarray,
    is_certain: np.ndarray,
    status: tuple[bytes, bytes],
) -> tuple:
    """`_plan_pattern`'s layouts for beams in `states` whose dense successors have this status, kept: all
    but the successors of the joint rows depends on the beams' slots only, not on which states they are, so
    it is shared by the states with the same slots (new states mostly repeat one)."""
    in_block, block_slot = arrays.slot_blocks[states], arrays.block_slot[states]  # (B, D, K), (B, K)
    pattern_key = (shape, *status, in_block.tobytes(), block_slot.tobytes())
    pattern = arrays.patterns.get(pattern_key)
    if pattern is None:
        pattern = _plan_pattern(arrays.everywhere, is_feasible & ~is_certain, is_certain, in_block, block_slot,
                                guide_tables.device)  # fmt: skip
        if guide_tables._layout_memory.charge(pattern[1]):
            arrays.patterns[pattern_key] = pattern
    return pattern


def first_steps(guide_tables: GuideTables) -> tuple[np.ndarray, np.ndarray]:
    """The states a one-beam step can be in and, for each, the tokens left after the next one (r) at the
    earliest position a step can be there: a state at position t (r = n - t - 1) is reached by some t-token
    prefix and can still accept within n - t tokens."""
    n = guide_tables.horizon
    feasible = state_status(guide_tables)[0]  # (n + 1, S)
    reached = guide_tables.reached.cpu().numpy()  # (n, S): some prefix of n - i tokens ends in s
    live = np.zeros((n, guide_tables.num_states), bool)  # (t, S) for t = 0 .. n - 1
    live[0, guide_tables.initial_state] = True
    live[1:] = reached[:0:-1]  # t = 1 .. n - 1: reached[n - t]
    live &= feasible[n:0:-1]  # feasible with n - t tokens left
    states = np.flatnonzero(live.any(0))
    return states, n - 1 - live[:, states].argmax(0)


def precompute_patterns(guide_tables: GuideTables, max_bytes: int) -> int:
    """With the tables (the guide's precompute): the row patterns (`_pattern`) a one-beam step in each state
    it can be in would build on its first visit there, at the status of its dense successors where a step
    first can be there (the same at any r far enough from the horizon; a step at another status builds its
    own). A table has a few dozen distinct patterns at most, each built once; a step that would build one
    takes ~0.1-0.5 ms, this ~1 ms per table in all. Stops once the kept layouts reach `max_bytes` or the
    request's deadline passes. Returns the number of patterns built."""
    arrays, memory = _plan_arrays(guide_tables), layout_memory(guide_tables)
    states, r = first_steps(guide_tables)
    if not len(states):
        return 0
    feasible, certain = state_status(guide_tables)
    succ = arrays.dense_succ[states]  # (L, D)
    valid = succ >= 0
    is_feasible, is_certain = feasible[r[:, None], succ] & valid, certain[r[:, None], succ] & valid
    signature = np.concatenate(  # what a pattern depends on, one row per state
        [is_feasible, is_certain, arrays.slot_blocks[states].reshape(len(states), -1),
         np.ascontiguousarray(arrays.block_slot[states]).view(np.uint8)], axis=1)  # fmt: skip
    built, deadline = 0, guide_tables.deadline
    for i in np.unique(signature, axis=0, return_index=True)[1]:
        late = deadline is not None and time.perf_counter() > deadline
        if late or memory.fixed + memory.bytes >= max_bytes:
            break
        one = slice(i, i + 1)
        feasible_one, certain_one = is_feasible[one], is_certain[one]
        status = (feasible_one.tobytes(), certain_one.tobytes())
        before = len(arrays.patterns)
        _pattern(guide_tables, arrays, [int(states[i])], succ[one].shape, feasible_one, certain_one, status)
        built += len(arrays.patterns) - before
    return built


def _plan_pattern(
    everywhere: list[bool],
    needed: np.ndarray,
    certain: np.ndarray,
    in_block: np.ndarray,
    block_slot: np.ndarray,
    device: torch.device,
) -> tuple[list[BlockLayout], int, list[tuple[np.ndarray, np.ndarray]]]:
    """The BlockLayouts of beams whose dense slots are `needed` / `certain` (B, D), with the slots' blocks
    `in_block` (B, D, K) and each beam's whole-row slot `block_slot` (B, K), built on the CPU in numpy (a
    handful of beams and slots), but for pair_state; their bytes; per block the (beam, slot) of each pair.
    When every block takes whole rows and the same ones (same marginal rows, pairs and row per beam: inside a
    JSON string, or where every successor is certain or impossible), the layouts say `uniform`: the step
    then takes one product over the whole vocabulary, in token order (guide.py)."""
    b = needed.shape[0]
    beams = np.arange(b)
    blocks, size, pairs, rows = [], 0, [], []
    for k, every in enumerate(everywhere):
        need = needed & in_block[:, :, k]  # (B, D)
        with_marginal = np.flatnonzero(need.any(1))  # (M,)
        m = len(with_marginal)
        marginal_row = np.full(b, -1, np.int64)
        marginal_row[with_marginal] = np.arange(m)
        beam, slot = need.nonzero()
        row_of_slot = np.full(need.shape, ROW_IMPOSSIBLE, np.int64)
        row_of_slot[beam, slot] = m + np.arange(len(beam))
        row_of_slot[certain] = ROW_CERTAIN
        parts = [with_marginal, beam, row_of_slot, marginal_row, np.concatenate([with_marginal, beam])]
        row = impossible = certain_beams = None
        in_order = False
        if every or bool((block_slot[:, k] >= 0).all()):  # whole rows: one slot per beam
            row = row_of_slot[beams, np.maximum(block_slot[:, k], 0)][:, None]  # (B, 1)
            in_order = m == b and len(beam) == b and bool((row[:, 0] == beams + b).all())
            impossible = np.flatnonzero(row[:, 0] == ROW_IMPOSSIBLE)
            certain_beams = np.flatnonzero(row[:, 0] == ROW_CERTAIN)
            parts += [row, impossible, certain_beams]
        size += nbytes_of(*parts, slot)
        t = as_tensors(parts, device)
        whole = t[5:] if row is not None else [None, None, None]
        fills = [x if x is not None and len(x) else None for x in whole[1:]]
        blocks.append(BlockLayout(t[0], t[1], None, t[2], t[3], t[4], whole[0], *fills, in_order))
        pairs.append((beam, slot))
        rows.append(None if row is None else (with_marginal, beam, slot, row))
    # the same whole rows in every block: one product over the vocabulary. On CPU only, where it was measured
    # (docs/benchmarks.md, json-step); it reads one more emission-sized operand (guide.emission_operands),
    # which on a GPU with a large HMM would be gigabytes
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and len(blocks) > 1 and all(x is not None for x in rows):
        first = rows[0]
        if all(all(np.array_equal(a, b) for a, b in zip(first, x)) for x in rows[1:]):
            blocks = [b._replace(uniform=True) for b in blocks]
    return blocks, size, pairs
