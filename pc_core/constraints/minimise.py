"""Minimisation of an explored token-level automaton (docs/method.md §4): Moore blocks of states (hashed
rounds, verified exactly), then token classes with identical columns merged; beside a blocklist mask, the
classes that are safe at each merged state."""

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
) -> TokenDFA:
    """The minimal DFA: Moore blocks of states, then token classes with identical columns merged.

    `safe` (states, classes), for a DFA beside a blocklist mask: whether the class holds a token the mask allows
    in the state's situation. A merged class is safe where one of its classes is; a merged state where all of
    its states are (TokenDFA.safe_classes)."""
    assert initial == 0  # explored first: block 0 below
    block = _moore_blocks(delta, accepting, ended, check_deadline)  # (n,) block of each state
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
    min_delta = block[delta[reps]]  # (m, classes)
    _, col_reps, col_of_class = np.unique(min_delta.T, axis=0, return_index=True, return_inverse=True)
    col_of_class = col_of_class.reshape(-1)
    safe_classes = None
    if safe is not None:
        per_column = _reduce_groups(safe.T, col_of_class, np.logical_or).T  # (n, merged classes)
        safe_classes = _reduce_groups(per_column, block, np.logical_and)  # (m, merged classes)
    return TokenDFA(
        transitions=np.ascontiguousarray(min_delta[:, col_reps]).astype(np.int32),
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


def _moore_blocks(
    delta: np.ndarray, accepting: np.ndarray, ended: np.ndarray, check_deadline: Any = None
) -> np.ndarray:
    """Moore partition refinement: rows are hashed for speed, then the stable partition is verified exactly.
    Blocks are numbered in order of first appearance."""
    n, c = delta.shape
    block = np.unique(accepting.astype(np.int64) * 2 + ended, return_inverse=True)[1].reshape(-1)
    rng = np.random.default_rng(0)
    starts, dst, edge_weight = _weighted_edges(delta, rng.integers(1, 2**62, size=c, dtype=np.int64) | 1)
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
            signature = own[block] + np.add.reduceat(edge_weight * of_block[block[dst]], starts)  # wraps
            new = np.unique(signature, return_inverse=True)[1]
        new = new.reshape(-1)
        if new.max() == block.max():  # stable; verify no hash collision merged different rows
            reps = np.zeros(new.max() + 1, np.int64)
            reps[new] = np.arange(n)
            same_rows = np.array_equal(new[delta], new[delta[reps[new]]])
            if exact or (same_rows and np.array_equal(block, block[reps[new]])):
                block = new
                break
            exact = True
        block = new
    first_seen = np.unique(block, return_index=True)[1]
    remap = np.empty(len(first_seen), np.int64)
    remap[np.argsort(first_seen)] = np.arange(len(first_seen))
    return remap[block]


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
