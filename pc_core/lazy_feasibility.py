"""Exact feasibility on a lazily explored automaton (docs/method.md §5.10).

feasible(s, r, t): some continuation of exactly r tokens from state s, started at token index t, is accepted
(ended states are absorbing; an ending token, EOS or one completing the suffix / a stop string, is allowed only
at index >= min_new_tokens). It depends on s alone, not on how s was reached, so answers are memoised per
(s, r, min(t, min_new_tokens)).

It is decided by a depth-first search of the lazy automaton (lazy_dfa.py), with two exact helpers:
  * a lower bound on the tokens still needed (LeafBound, leaf_bound.py): the constraint's tree over small explicit automata
    of its leaves (a keyword, a count, a word position, a word count ...), each compiled with the request's
    suffix and stop strings; `all` takes the largest of its children's bounds, `any` the smallest, `at_least
    k` the k-th smallest, anything else 0. Every accepted text makes each leaf it needs accepted, so the bound
    never exceeds the truth: a branch is cut only where no accepted text can continue it.
  * an order of the successors: by the same tree with sums instead of maxima (an estimate), then by that
    bound; when that search spends its budget, a second one by estimate + bound (each order has its traps:
    prefixes several keywords share, a word count that every word serves). The search tries first the tokens
    that bring the leaves closest to acceptance, so its first descent usually is a witness.
  * a replay of the last witness's tokens before any search (siblings share their witness's tail): a proof
    for the price of stepping (LazyDFA.peek), and successors computed one by one as the search descends
    (LazyDFA.options), the node expanded whole once it has tried PEEKS of them.
A True answer is a witness path (proof); a False answer is an exhausted search (proof). A search that spends
its node budget answers None: not decided. Decoding allows only tokens proven feasible (so the guarantee
holds whatever the budget: the witness that proved the current state feasible always leaves one token), and
a request whose start is not decided within the budget is refused, never served unchecked. A step's question
gets at most what is left of REQUEST_BUDGET (and of STEP_BUDGET), both search orders together; past
REQUEST_BUDGET nodes a request's steps allow only what is proven already or by a replay: its search time is
bounded.
"""

from __future__ import annotations

import numpy as np

from pc_core.lazy_dfa import LazyDFA
from pc_core.leaf_bound import LeafBound

NODE_BUDGET = 4000  # search nodes per question (a node: one state expanded)
STEP_BUDGET = 20_000  # search nodes per beam and step; the tokens left undecided past it are not allowed
PEEKS = 4  # successors of a search node computed one by one (LazyDFA.peek) before it is expanded whole
REQUEST_BUDGET = 4_000
"""Search nodes per request (all steps and beams); past it a step allows only the tokens proven already (each
state's witness leaves one), so a request's search time is bounded whatever its constraint."""


class _OutOfBudget(Exception):
    pass


class LazyFeasibility:
    """feasible(s, r, t) on a LazyDFA by bounded depth-first search (module docstring)."""

    def __init__(
        self, dfa: LazyDFA, bound: LeafBound, horizon: int, min_new_tokens: int = 0, budget: int = NODE_BUDGET
    ) -> None:
        self.dfa, self.bound, self.horizon, self.min_new = dfa, bound, horizon, min_new_tokens
        self.budget = budget
        self.known: dict[tuple[int, int, int], bool] = {}
        self.spent, self.by_bound, self.limit = 0, False, budget
        self.searched = 0  # search nodes over this object's life (reported)
        self.undecided = 0  # questions left undecided by the budget (their tokens are not allowed)
        self.witness: list[int] = []  # the tokens of the last witness the search found (replayed first)
        self.path: list[int] = []  # the search's current path
        self.replayed = 0  # questions a replayed witness answered
        self._step_memo: tuple[int, dict] = (-1, {})  # (t, (state, leaves) -> allowed) of the current step

    def feasible(self, state: int, leaves: np.ndarray, r: int, t: int) -> bool | None:
        """True (a witness), False (exhausted), or None (the budget ran out first)."""
        if self.bound.lower(leaves[None])[0] > r:
            return False
        return self._decide(state, leaves, r, t, self.budget)

    def _decide(
        self, state: int, leaves: np.ndarray, r: int, t: int, budget: int, total: int | None = None
    ) -> bool | None:
        """`feasible` once the leaves' bound is checked (the caller's, for many states at once), with
        `budget` nodes per search order and `total` (None: no cap) for both orders together."""
        if self._replay(state, r, t):
            self.replayed += 1
            return True
        used = 0
        for by_bound in (False, True):  # two orders: each has its traps (shared prefixes, word counts)
            limit = budget if total is None else min(budget, total - used)
            if limit <= 0:
                break
            self.spent, self.by_bound, self.path, self.limit = 0, by_bound, [], limit
            try:
                found = self._search(state, leaves, r, t)
                if found and self.path:
                    self.witness = self.path
                return found
            except _OutOfBudget:
                pass
            finally:
                self.searched += self.spent
                used += self.spent
        self.undecided += 1
        return None

    def _replay(self, state: int, r: int, t: int) -> bool:
        """Does the last witness's token sequence (at most r tokens, then EOS if it stops short) take `state`
        to acceptance? Siblings often share their witness's tail (the keywords still to write, the words
        still to count): a proof for the price of stepping, no expansion (LazyDFA.peek). The states on the
        way are recorded as feasible, as the search records its witness."""
        dfa, tokens = self.dfa, self.witness[:r]
        if not tokens:
            return False
        if len(tokens) < r and tokens[-1] != dfa.eos_token_id:
            tokens = [*tokens, dfa.eos_token_id]
        states, known = [state], None
        for i, token in enumerate(tokens):
            if dfa.is_ended(states[-1]):
                break
            nxt = dfa.peek(states[-1], token)
            if dfa.is_ended(nxt) and t + i < self.min_new:  # an ending token before min_new_tokens
                return False
            states.append(nxt)
            known = self.known.get((nxt, r - i - 1, min(t + i + 1, self.min_new)))
            if known is not None:  # siblings meet again after a token or two: decided already
                break
        if known is False:
            return False
        if not known and (
            not dfa.is_accepting(states[-1]) or (len(states) <= r and not dfa.is_ended(states[-1]))
        ):
            return False
        for i, s in enumerate(states[:-1]):
            self.known[(s, r - i, min(t + i, self.min_new))] = True
        return True

    def _search(self, state: int, leaves: np.ndarray, r: int, t: int) -> bool:
        """(The caller checked the bound of `leaves`.)"""
        dfa = self.dfa
        if r == 0 or dfa.is_ended(state):
            return dfa.is_accepting(state)
        key = (state, r, min(t, self.min_new))
        found = self.known.get(key)
        if found is not None:
            return found
        if self.spent >= self.limit:
            raise _OutOfBudget
        self.spent += 1
        children, states, tokens, picked = self._ordered(state, leaves, r, t)
        for n, i in enumerate(picked):
            child, token = int(children[i]), int(tokens[i])
            if child < 0:  # not computed yet (LazyDFA.options)
                if n == PEEKS:  # many tried: one expansion computes the rest at once
                    dfa.expand(state)
                child = dfa.peek(state, token)
            self.path.append(token)
            if self._search(child, states[i], r - 1, t + 1):
                self.known[key] = True
                return True
            self.path.pop()
        self.known[key] = False
        return False

    def _ordered(
        self, state: int, leaves: np.ndarray, r: int, t: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """The successors worth trying, most promising first: (successor or -1 (E,), leaf states (E, L), a
        token to each (E,), the indices to try in order): an accepted end, then by the leaves' estimate.
        Skipped: ending tokens before min_new_tokens, rejected ends, the sink, and successors whose leaves'
        bound exceeds the r - 1 tokens left after them. (Indices, not tuples: the search usually descends
        into the first.)"""
        dfa = self.dfa
        children, tokens = dfa.options(state)  # -1: a successor computed when tried (below)
        states = self.bound.advance_many(leaves, tokens)  # (K, L)
        live = (children != dfa.end_accept) & (children != dfa.end_reject) & (children != dfa.sink)
        lower = self.bound.lower(states)
        keep = live & (lower <= r - 1)
        picked = np.flatnonzero(keep)
        estimate = self.bound.estimate(states)[picked]
        primary = estimate + lower[picked] if self.by_bound else estimate
        picked = picked[np.lexsort((lower[picked], primary))].tolist()  # lexsort: the last key is the primary
        if t >= self.min_new and dfa.is_accepting(dfa.end_accept) and (children == dfa.end_accept).any():
            picked.insert(0, int(np.flatnonzero(children == dfa.end_accept)[0]))
        return children, states, tokens, picked

    def allowed(self, state: int, leaves: np.ndarray, t: int) -> np.ndarray:
        """(V,) bool: the tokens at index t after which an accepted text of the horizon is proven reachable.
        Beams in the same state with the same leaf states share one answer (memoised for the step t)."""
        key = (state, leaves.tobytes())
        if self._step_memo[0] != t:
            self._step_memo = (t, {})
        found = self._step_memo[1].get(key)
        if found is None:
            found = self._step_memo[1][key] = self._allowed(state, leaves, t)
        return found

    def _allowed(self, state: int, leaves: np.ndarray, t: int) -> np.ndarray:
        dfa = self.dfa
        successors = dfa.successors(state)
        children, first, inverse = np.unique(successors, return_index=True, return_inverse=True)
        r = self.horizon - t - 1
        states = self.bound.advance_many(leaves, first)  # (K, L) after a token leading to each child
        within = self.bound.lower(states) <= r  # the leaves' bound, for every child at once
        ok = np.zeros(len(children), bool)
        spent = self.searched
        for i in np.argsort(self.bound.estimate(states), kind="stable").tolist():  # promising ones first
            child = int(children[i])
            if not within[i] or (dfa.is_ended(child) and t < self.min_new):
                continue
            left = min(STEP_BUDGET - (self.searched - spent), REQUEST_BUDGET - self.searched)
            if left <= 0:  # only what is proven
                found = dfa.is_accepting(child) if dfa.is_ended(child) or r == 0 else None
                if found is None:
                    found = self.known.get((child, r, min(t + 1, self.min_new)))
                if found is None:
                    found = self._replay(child, r, t + 1)  # a proof without search
                ok[i] = bool(found)
                continue  # (the witness that proved this state leaves its next token proven)
            ok[i] = bool(self._decide(child, states[i], r, t + 1, self.budget, left))
        return ok[inverse.reshape(-1)]
