"""Minimisation of an explored token-level automaton (docs/method.md §4): Moore blocks of states (hashed
rounds over each state's distinct successors, or its events as the explorer groups them, O(edges) a round;
the stable partition verified exactly), then token classes with identical columns merged (hashed, verified,
in np.unique's order); beside a blocklist mask, the classes that are safe at each merged state. The result is
the same minimal DFA, numbered alike, as plain Moore refinement (tests/pc_core/constraints/test_big_compile.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.vocab import VocabTables
from pc_core.errors import ConstraintTooComplex


def _minimise(
    delta: np.ndarray,
    token_class: np.ndarray,
    initial: int,
    accepting: np.ndarray,
    ended: np.ndarray,
    tables: VocabTables,
    max_states: int,
    check_deadline: Any = None,
    safe: np.ndarray | None = None,
    banned: np.ndarray | None = None,
    row_groups: list[tuple[np.ndarray, np.ndarray]] | None = None,
    flags: np.ndarray | None = None,
) -> TokenDFA | tuple[TokenDFA, np.ndarray]:
    """The minimal DFA: Moore blocks of states, then token classes with identical columns merged.

    `safe` (states, classes), for a DFA beside a blocklist mask: whether the class holds a token the mask allows
    in the state's situation. A merged class is safe where one of its classes is; a merged state where all of
    its states are (TokenDFA.safe_classes).

    `row_groups`, from the explorer: (states, the event of each class) such that classes of one event lead
    each of these states to the same successor (checked): a state's edges are then its events, not its classes.

    `flags` (n,) bool: a mark per state that minimisation keeps (marked and unmarked states are never merged);
    the minimal DFA's marks are returned beside it: `(dfa, flags)`.
    """
    assert initial == 0  # explored first: block 0 below
    block = _moore_blocks(delta, accepting, ended, check_deadline, row_groups, flags)  # (n,) each state's
    m = int(block.max()) + 1
    if m > max_states:
        raise ConstraintTooComplex(
            "constraint",
            f"the minimal automaton has {m} states, above the cap of {max_states}; simplify the constraint",
            states=m,
            limit=max_states,
        )
    reps = np.zeros(m, np.int64)
    reps[block] = np.arange(len(block))
    min_delta = block.astype(np.int32)[delta[reps]]  # (m, classes)
    col_reps, col_of_class = _unique_columns(min_delta)
    safe_classes = None
    if safe is not None:
        per_column = _reduce_groups(safe.T, col_of_class, np.logical_or).T  # (n, merged classes)
        safe_classes = _reduce_groups(per_column, block, np.logical_and)  # (m, merged classes)
    dfa = TokenDFA(
        transitions=np.take(min_delta, col_reps, axis=1).astype(np.int32, copy=False),  # (take: fast columns)
        token_class=col_of_class[token_class].astype(np.int32),
        accepting=accepting[reps].copy(),
        ended=ended[reps].copy(),
        initial_state=0,
        eos_token_id=tables.eos_token_id,
        tokenizer_fingerprint=tables.fingerprint,
        banned_tokens=np.asarray(tables.banned if banned is None else banned, bool).copy(),  # byte_chars.py
        token_block=(np.asarray(tables.p_id) == 0).astype(np.int8),  # p_id 0 is the empty leading run
        safe_classes=safe_classes,
    )
    return dfa if flags is None else (dfa, flags[reps].copy())


def _moore_blocks(
    delta: np.ndarray,
    accepting: np.ndarray,
    ended: np.ndarray,
    check_deadline: Any = None,
    row_groups: list[tuple[np.ndarray, np.ndarray]] | None = None,
    flags: np.ndarray | None = None,
) -> np.ndarray:
    """Moore partition refinement: rows are hashed for speed, then the stable partition is verified exactly.
    Blocks are numbered in order of first appearance."""
    n, c = delta.shape
    start = accepting.astype(np.int64) * 2 + ended + (0 if flags is None else 4 * flags.astype(np.int64))
    block = np.unique(start, return_inverse=True)[1].reshape(-1)
    rng = np.random.default_rng(0)
    edges = _Edges(delta, rng.integers(1, 2**62, size=c, dtype=np.int64) | 1, row_groups)
    exact = False
    while True:
        if check_deadline is not None:
            check_deadline()
        if exact:
            new = np.unique(
                np.concatenate([block[:, None], block[delta]], axis=1), axis=0, return_inverse=True
            )[1]
        else:  # a random linear hash of (own block, class -> successor's block), over distinct successors
            own, of_block = rng.integers(1, 2**62, size=(2, int(block.max()) + 1), dtype=np.int64) | 1
            new = np.unique(own[block] + edges.sums(of_block[block]), return_inverse=True)[1]  # wraps
        new = new.reshape(-1)
        if new.max() == block.max():  # stable; verify no hash collision merged different rows
            reps = np.zeros(new.max() + 1, np.int64)
            reps[new] = np.arange(n)
            if exact or (np.array_equal(block, block[reps[new]]) and edges.stable(new, reps[new])):
                block = new
                break
            exact = True
        block = new
    first_seen = np.unique(block, return_index=True)[1]
    remap = np.empty(len(first_seen), np.int64)
    remap[np.argsort(first_seen)] = np.arange(len(first_seen))
    return remap[block]


class _Edges:
    """The weighted edges of every state, grouped by state: a state's edges lead to its successors, each
    weighted by the (wrapping) sum of the weights of the classes leading there. With `row_groups` (states,
    the event of each class), the edges of those states are their events, checked against `delta`: a few per
    state, found without sorting; the other states' edges are found by sorting their rows. A round of Moore's
    refinement then costs O(edges), not O(states x classes)."""

    def __init__(
        self, delta: np.ndarray, weights: np.ndarray, row_groups: list[tuple[np.ndarray, np.ndarray]] | None
    ) -> None:
        self.delta = delta
        n = len(delta)
        covered = np.zeros(n, bool)
        orders, parts_dst, parts_w, counts = [], [], [], []
        self.groups: list[tuple[np.ndarray, int, int]] = []  # (states, first edge, events per state)
        at = 0
        for states, class_event in row_groups or []:
            states = np.asarray(states, np.int64)
            if not len(states) or covered[states].any() or len(np.unique(states)) < len(states):
                continue
            events, first, of_class = np.unique(class_event, return_index=True, return_inverse=True)
            rows = delta[states]
            dst = np.take(rows, first, axis=1)
            if not np.array_equal(rows, np.take(dst, of_class.reshape(-1), axis=1)):  # not as promised
                continue  # (these rows are sorted instead)
            event_weight = np.zeros(len(events), np.int64)
            np.add.at(event_weight, of_class.reshape(-1), weights)  # wraps
            covered[states] = True
            self.groups.append((states, at, len(events)))
            at += dst.size
            orders.append(states)
            parts_dst.append(dst.reshape(-1))
            parts_w.append(np.tile(event_weight, len(states)))
            counts.append(np.full(len(states), len(events), np.int64))
        self.group_of = np.full(n, -1, np.int64)  # the row group of each state, -1: none
        self.local = np.zeros(n, np.int64)  # its index there
        for g, (states, _, _) in enumerate(self.groups):
            self.group_of[states] = g
            self.local[states] = np.arange(len(states))
        rest = np.flatnonzero(~covered)
        if len(rest):
            starts, dst, w = _weighted_edges(delta[rest], weights)
            orders.append(rest)
            parts_dst.append(dst)
            parts_w.append(w)
            counts.append(np.diff(np.append(starts, len(dst))))
        counts = np.concatenate(counts)
        self.order = np.concatenate(orders)  # the states, in the order of their edges
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.dst, self.weight = np.concatenate(parts_dst), np.concatenate(parts_w)

    def sums(self, value: np.ndarray) -> np.ndarray:
        """(n,) per state, the wrapping sum over its edges of weight x value[destination]."""
        out = np.empty(len(value), np.int64)
        out[self.order] = np.add.reduceat(self.weight * value[self.dst], self.starts)
        return out

    def stable(self, block: np.ndarray, rep: np.ndarray) -> bool:
        """Exactly: does every class lead each state into the block it leads `rep[state]` into? A state
        whose rep is in its row group is compared over its events, the others over their classes."""
        successor = block[self.dst]
        same = np.zeros(len(block), bool)
        for g, (states, at, width) in enumerate(self.groups):
            mine = successor[at : at + len(states) * width].reshape(len(states), width)
            theirs = rep[states]
            here = self.group_of[theirs] == g
            if not np.array_equal(mine[here], mine[self.local[theirs[here]]]):
                return False
            same[states[here]] = True
        others = np.flatnonzero(~same)
        return np.array_equal(block[self.delta[others]], block[self.delta[rep[others]]])


def _unique_columns(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As np.unique(table.T, axis=0, return_index=True, return_inverse=True)[1:] (the first column of each
    distinct column, in lexicographic order of the columns; the distinct column of each), without sorting
    whole columns: columns are hashed, equal hashes verified exactly, and the distinct ones ordered by as few
    rows as tell them apart."""
    m, c = table.shape
    weights = np.random.default_rng(1).integers(1, 2**62, size=m, dtype=np.int64) | 1
    hashed = np.zeros(c, np.int64)
    for lo in range(0, m, 4096):  # wraps
        hashed += (table[lo : lo + 4096].astype(np.int64) * weights[lo : lo + 4096, None]).sum(axis=0)
    first: dict[int, int] = {}
    reps, of = [], np.empty(c, np.int64)
    for j, h in enumerate(hashed.tolist()):
        r = first.setdefault(h, j)
        if r == j:
            of[j] = len(reps)
            reps.append(j)
        elif np.array_equal(table[:, j], table[:, r]):
            of[j] = of[r]
        else:  # a hash collision: sort the columns themselves
            _, col_reps, col_of = np.unique(table.T, axis=0, return_index=True, return_inverse=True)
            return col_reps, col_of.reshape(-1)

    # the lexicographic order of the distinct columns, as np.unique orders the rows of table.T: refined a few
    # rows at a time until every column has its own rank (usually within the first rows)
    rank = np.zeros(len(reps), np.int64)
    for lo in range(0, m, 64):
        if rank.max(initial=0) + 1 == len(reps):
            break
        keys = np.concatenate([table[lo : lo + 64][::-1][:, reps], rank[None, :]])
        by = np.lexsort(keys)  # the last key (the rank so far) first
        ordered = keys[:, by]
        rank[by] = np.concatenate([[0], np.cumsum((ordered[:, 1:] != ordered[:, :-1]).any(axis=0))])
    order = np.argsort(rank)
    return np.asarray(reps, np.int64)[order], rank[of]


def _weighted_edges(delta: np.ndarray, weights: np.ndarray, chunk: int = 2**16) -> tuple[np.ndarray, ...]:
    """Each state's distinct successors with the (wrapping) sum of the weights of the classes leading there:
    (first edge of each state (n,), destinations (E,), weights (E,)). A round of Moore's refinement then
    costs O(E), a few successors per state, instead of O(n x classes); rows are sorted in chunks."""
    n, c = delta.shape
    parts_dst, parts_w, counts = [], [], []
    for lo in range(0, n, chunk):
        rows = delta[lo : lo + chunk]
        order = np.argsort(rows, axis=1)
        succ = np.take_along_axis(rows, order, axis=1)  # (m, c) each row sorted
        first = np.ones(succ.shape, bool)
        first[:, 1:] = succ[:, 1:] != succ[:, :-1]
        runs = np.flatnonzero(first.reshape(-1))
        parts_dst.append(succ.reshape(-1)[runs].astype(np.int64))
        parts_w.append(np.add.reduceat(weights[order].reshape(-1), runs))
        counts.append(first.sum(axis=1))
    counts = np.concatenate(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return starts, np.concatenate(parts_dst), np.concatenate(parts_w)


def _reduce_groups(rows: np.ndarray, group: np.ndarray, op: np.ufunc) -> np.ndarray:
    """(groups, ...) op-reduction of the rows of each group (group ids 0..G-1, each present)."""
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.diff(group[order], prepend=-1))
    return op.reduceat(rows[order], starts, axis=0)
