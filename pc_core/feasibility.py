"""Exact feasibility on a token DFA, over its distinct edges (docs/method.md §5.3, 5.4, 5.9).

With n the horizon and r the tokens left:
    feasible[r, s]  some continuation of r tokens from s is accepted                    (n + 1, S) bool
    certain[r, s]   every continuation of r tokens from s that the guide's HMM can emit is accepted
    reach[t, s]     some prefix of t tokens from the initial state ends in s            (n + 1, S) bool
An *ending* transition leads from a live state to an ended one (EOS, and with a suffix or stop strings the
tokens that complete them); end_allowed[r] says whether the first of r tokens may end the text (not among
the first min_new_tokens tokens).

The guide stores a table row only for pairs (r, s) with reach[n - r, s] & feasible[r, s] & ~certain[r, s]
(`live`): a successor seen with r tokens left was reached in exactly n - r tokens, the other rows are -inf
or 0. `reach` counts every transition (banned tokens and early endings included), so every prefix a caller
can build lands on a stored row: pruning never depends on the decoder obeying the mask.

Everything is computed on the distinct (source, destination) edges instead of the (S, C) class table: one
bincount per step, so 100,000-state automata take well under a second per 64 steps.
"""

from __future__ import annotations

import numpy as np

from pc_core.constraints.dfa import TokenDFA
from pc_core.errors import BlocklistInteraction


def distinct_edges(delta: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """(E, 2) distinct (source, destination) pairs of the (S, C) successor table, sorted by source; only
    the classes `columns` (bool (C,)) when given."""
    table = delta if columns is None else delta[:, columns]
    if table.shape[1] == 0:
        return np.zeros((0, 2), np.int64)
    ordered = np.sort(table, axis=1)  # (S, C') per row: duplicates side by side
    keep = np.ones(ordered.shape, bool)
    keep[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    src = np.broadcast_to(np.arange(len(table))[:, None], ordered.shape)[keep]
    return np.stack([src, ordered[keep]], 1).astype(np.int64)


class Feasibility:
    """feasible / certain / reach for (DFA, horizon, min_new_tokens); see the module docstring."""

    def __init__(
        self, dfa: TokenDFA, horizon: int, min_new_tokens: int = 0, no_certain: bool = False
    ) -> None:
        """`no_certain`: no state counts as certain (infilling: the suffix's rest has probability < 1)."""
        n, (s_count, c_count) = horizon, dfa.transitions.shape
        self.horizon, self.min_new_tokens = horizon, min_new_tokens
        delta = dfa.transitions.astype(np.int64)
        banned = dfa.banned_tokens if dfa.banned_tokens is not None else np.zeros(dfa.vocab_size, bool)
        # classes with a token the guide's HMM can emit (banned tokens have probability 0 under B')
        possible = np.bincount(dfa.token_class[~banned], minlength=c_count) > 0  # (C,)
        ended = dfa.ended
        self.ending = ~ended[:, None] & ended[delta]  # (S, C)
        edges = distinct_edges(delta, possible)  # (E, 2), what the HMM can emit
        src, dst = edges[:, 0], edges[:, 1]
        ends = ~ended[src] & ended[dst]  # (E,) ending edges
        feasible = np.zeros((n + 1, s_count), bool)
        certain = np.zeros((n + 1, s_count), bool)
        feasible[0] = certain[0] = dfa.accepting
        end_allowed = np.ones(n + 1, bool)
        # a state whose impossible classes are all it has is certain only through its possible ones (as
        # in the class-table form); a state without any possible class is vacuously certain
        for r in range(1, n + 1):
            end_allowed[r] = n - r + 1 >= min_new_tokens + 1
            ok = np.ones(len(edges), bool) if end_allowed[r] else ~ends
            feasible[r] = np.bincount(src[ok & feasible[r - 1][dst]], minlength=s_count) > 0
            bad = ~(ok & certain[r - 1][dst])
            certain[r] = np.bincount(src[bad], minlength=s_count) == 0
        if no_certain:
            certain[:] = False
        self.feasible, self.certain, self.end_allowed = feasible, certain, end_allowed
        self.reach = _reachable(delta, dfa.initial_state, n)
        self.possible, self.edges = possible, edges
        if dfa.safe_classes is not None:
            check_blocklist_cannot_dead_end(dfa, feasible, self.ending, end_allowed, n)

    def live(self, r: int) -> np.ndarray:
        """(S,) bool: the states that need a table row with r tokens left."""
        return self.reach[self.horizon - r] & self.feasible[r] & ~self.certain[r]

    @property
    def live_pairs(self) -> int:
        """Reachable (step, state) pairs that can still accept and are not certain: the rows the exact
        guide stores (and computes, one (1, H) x (H, H) product each)."""
        return int(sum(int(self.live(r).sum()) for r in range(1, self.horizon)))


def _reachable(delta: np.ndarray, initial: int, n: int) -> np.ndarray:
    """reach[t]: states some t-token prefix ends in, over every transition."""
    edges = distinct_edges(delta)
    s_count = len(delta)
    reach = np.zeros((n + 1, s_count), bool)
    reach[0, initial] = True
    for t in range(1, n + 1):
        hit = edges[reach[t - 1][edges[:, 0]], 1]
        reach[t, hit] = True
    return reach


def check_blocklist_cannot_dead_end(
    dfa: TokenDFA, feasible: np.ndarray, ending: np.ndarray, end_allowed: np.ndarray, horizon: int
) -> None:
    """With a blocklist masked beside the DFA, decoding takes only tokens the mask allows. Feasibility computed
    with just the classes that hold a token the mask allows in every text a state stands for must equal
    feasibility with all classes: then every feasible state has a feasible, allowed next token, whatever
    the mask, and masking cannot dead-end a beam (docs/method.md §7). Raises BlocklistInteraction otherwise."""
    delta = dfa.transitions.astype(np.int64)
    reachable = feasible[0].copy()
    for r in range(1, horizon + 1):
        ok = np.where(dfa.ended[:, None], True, (end_allowed[r] | ~ending) & dfa.safe_classes)
        reachable = (ok & reachable[delta]).any(axis=1)
        if not np.array_equal(reachable, feasible[r]):
            lost = int((feasible[r] & ~reachable).sum())
            raise BlocklistInteraction(
                f"the blocklist could block every way to satisfy the rest of the constraint from {lost} "
                f"automaton states with {r} tokens left"
            )
