"""Exact lower bounds on the tokens a lazily explored constraint still needs (docs/method.md §5.10), for the
feasibility search of lazy_feasibility.py.

LeafBound: the constraint's tree over small explicit automata of its leaves (a keyword, a count, a word position,
a word count ...), each compiled with the request's suffix and stop strings; `all` takes the largest of its
children's bounds, `any` the smallest, `at_least k` the k-th smallest (exact per group of leaves one token can
advance together: co_progress), anything else 0. Every accepted text makes each leaf it needs accepted, so the
bound never exceeds the truth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.nodes import All, AnyOf, AtLeast, AtMost, Constraint, Not, WordAt, WordCount
from pc_core.constraints.spec import split_affixes, with_affixes
from pc_core.errors import ConstraintTooComplex

FAR = 1 << 20  # a leaf that can never accept again
BY_TOKEN_BYTES = 64 * 2**20  # the leaves' successor-per-token table, when it fits
FROM_END_EXPLICIT = 8
"""`word_at -k` with k above this gets no explicit leaf (its automaton has 2^k states) but one of a language that
holds wherever it holds: the word occurs and the text has at least k words (LeafBound._build)."""


class LeafBound:
    """Lower bounds and search order from explicit automata of the constraint's leaves (module docstring)."""

    def __init__(
        self,
        constraint: Constraint,
        compile_leaf: Callable[[Constraint], TokenDFA | None],
        separator: int | None = None,
    ) -> None:
        """`separator`: a token that ends the current word (a space): the estimate reads each leaf's distance
        after it, so that a word prefix several keywords share does not look like progress."""
        self.separator = separator
        body, suffix, stop = split_affixes(constraint)
        self.affixed = suffix is not None or bool(stop)  # one ending token may bring every leaf home at once
        self.dfas: list[TokenDFA] = []
        self.dist: list[np.ndarray] = []  # per leaf: (S_i,) tokens to acceptance, FAR where never
        self.tree = self._build(body, lambda leaf: compile_leaf(with_affixes(leaf, suffix, stop)))
        self._flatten()

    def _build(self, node: Constraint, compile_leaf: Callable) -> tuple:
        if isinstance(node, (All, AtLeast)):
            children = [self._build(c, compile_leaf) for c in node.children]
            k = node.k if isinstance(node, AtLeast) else len(children)
            leaves = [c[1] for c in children if c[0] == "leaf"]
            return ("all" if isinstance(node, All) else "at_least", k, children, self._classes(leaves))
        if isinstance(node, AnyOf):
            far_back = [c for c in node.children if isinstance(c, WordAt) and -c.index > FROM_END_EXPLICIT]
            rest = [self._build(c, compile_leaf) for c in node.children if c not in far_back]
            for index in sorted({c.index for c in far_back}):  # "the k-th last word is one of these"
                words = [c.word for c in far_back if c.index == index]
                rest.append(self._from_end(words, -index, compile_leaf))
            return ("any", 0, rest, [])
        if isinstance(node, WordAt) and -node.index > FROM_END_EXPLICIT:
            return self._from_end([node.word], -node.index, compile_leaf)
        if isinstance(node, (AtMost, Not)):
            return ("none",)  # satisfied by writing less: no bound worth a leaf
        return self._leaf(node, compile_leaf)

    def _from_end(self, words: list[Constraint], k: int, compile_leaf: Callable) -> tuple:
        """The bound of "the k-th last word is one of `words`" past FROM_END_EXPLICIT: that of a language
        holding wherever it holds, one of the words occurs and the text has k words or more (a leaf per word,
        each small and quick to compile, and one for the count)."""
        occurs = ("any", 0, [self._leaf(w, compile_leaf) for w in words], [])
        count = self._leaf(WordCount(k, None), compile_leaf)
        return ("all", 2, [occurs, count], self._classes([count[1]] if count[0] == "leaf" else []))

    def _leaf(self, node: Constraint, compile_leaf: Callable) -> tuple:
        dfa = compile_leaf(node)
        if dfa is None:
            return ("none",)
        steps = dfa.steps_to_accept.astype(np.int64)
        self.dfas.append(dfa)
        self.dist.append(np.where(steps < 0, FAR, steps))
        return ("leaf", len(self.dfas) - 1)

    def _classes(self, leaves: list[int]) -> list[list[int]]:
        """The leaves split into classes no token can bring two of closer at once (greedy colouring of the
        co-progress graph, co_progress below): within a class the distances add up."""
        classes: list[list[int]] = []
        for i in leaves:
            for group in classes:
                if not any(
                    co_progress(self.dfas[i], self.dist[i], self.dfas[j], self.dist[j]) for j in group
                ):
                    group.append(i)
                    break
            else:
                classes.append([i])
        return classes

    def initial(self) -> np.ndarray:
        """(L,) the leaves' initial states."""
        return np.array([d.initial_state for d in self.dfas], np.int64)

    def advance(self, leaves: np.ndarray, token: int) -> np.ndarray:
        """(L,) the leaves' states after `token`."""
        return self.advance_many(leaves, np.array([token]))[0]

    def advance_many(self, leaves: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """(K, L) the leaves' states after each of `tokens` (K,)."""
        if self.by_token is not None:  # (sum of S_i, V): one gather
            return self.by_token[(self.offsets + leaves)[None, :], tokens[:, None]] - self.offsets[None, :]
        out = np.empty((len(tokens), len(self.dfas)), np.int64)
        for i, (d, s) in enumerate(zip(self.dfas, leaves.tolist())):
            out[:, i] = d.transitions[s, d.token_class[tokens]]
        return out

    def lower(self, states: np.ndarray) -> np.ndarray:
        """(K,) tokens still needed at least (exact lower bound), for leaf states (K, L)."""
        return self._eval(self.tree, self._distances(states), exact=True)

    def estimate(self, states: np.ndarray) -> np.ndarray:
        """(K,) the search's order: sums where `lower` takes maxima."""
        return self._eval(self.tree, self._distances(states, self.flat_committed), exact=False)

    def _distances(self, states: np.ndarray, flat: np.ndarray | None = None) -> np.ndarray:
        flat = self.flat_dist if flat is None else flat
        return flat[states + self.offsets[None, :]]  # (K, L)

    def _flatten(self) -> None:
        """All leaves' distances in one array (offsets per leaf), and their successors per token when that
        table is small (BY_TOKEN_BYTES): the search's per-node work is then a few gathers."""
        sizes = np.array([d.num_states for d in self.dfas], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)  # (L,)
        self.flat_dist = np.concatenate(self.dist) if self.dist else np.zeros(0, np.int64)
        self.flat_committed = self.flat_dist
        if self.separator is not None and self.dfas:  # each leaf's distance once the current word ends
            after = [d.transitions[:, d.token_class[self.separator]] for d in self.dfas]
            self.flat_committed = np.concatenate([dist[a] for dist, a in zip(self.dist, after)])
        self.by_token = None
        if self.dfas and int(sizes.sum()) * self.dfas[0].vocab_size * 4 <= BY_TOKEN_BYTES:
            rows = [d.transitions[:, d.token_class] + off for d, off in zip(self.dfas, self.offsets.tolist())]
            self.by_token = np.concatenate(rows).astype(np.int32)  # (sum S_i, V)

    def _eval(self, node: tuple, d: np.ndarray, exact: bool) -> np.ndarray:
        """(K,) the node's bound (exact) or estimate from leaf distances d (K, L)."""
        kind, rows = node[0], d.shape[0]
        if kind == "leaf":
            return d[:, node[1]]
        if kind == "none":
            return np.zeros(rows, np.int64)
        _, k, children, classes = node
        if kind == "any" and not exact:  # the estimate: over the children with a bound (unknown ones say 0)
            children = [c for c in children if c[0] != "none"] or children
        if children and all(c[0] == "leaf" for c in children):
            values = d[:, [c[1] for c in children]]  # (K, children)
        else:
            values = np.stack([self._eval(c, d, exact) for c in children], 1) if children else None
        if kind == "any":
            return values.min(1) if values is not None else np.full(rows, FAR, np.int64)
        if values is None or k == 0:
            return np.full(rows, FAR if k > 0 else 0, np.int64)
        if k > values.shape[1]:
            return np.full(rows, FAR, np.int64)
        if kind == "all":  # k is every child: the sum and the largest, no sort
            if not exact:
                return np.minimum(FAR, values.sum(1))
            out = values.max(1)
        else:
            ordered = np.sort(values, 1)
            if not exact:
                return np.minimum(FAR, ordered[:, :k].sum(1))
            out = ordered[:, k - 1]  # k-th smallest
        if kind == "at_least" and sum(map(len, classes)) == len(children):  # every child a leaf
            return np.minimum(np.maximum(out, self._k_of_classes(d, classes, k)), FAR)
        for group in classes:  # leaves of one class need their own tokens each
            if kind == "at_least":
                continue  # (only when every child is a leaf: above)
            out = np.maximum(out, self._additive(d[:, group]))
        return np.minimum(out, FAR)

    def _k_of_classes(self, d: np.ndarray, classes: list[list[int]], k: int) -> np.ndarray:
        """(K,) tokens needed at least for k of the leaves (columns of d (K, L) by class) to accept: a token
        brings at most one leaf of each class closer, so k leaves S need max over classes c of the sum of
        S's distances in c; the fewest is the least T such that the classes' smallest distances, taken while
        their sums stay <= T, number k or more. With a suffix or stop strings the one ending token may bring
        every leaf closer once (it ends the text): each distance counts one less (d - 1, at least 0) and the
        ending token one, unless k leaves accept already."""
        parts = []
        for group in classes:
            values = np.sort(d[:, group], 1)
            if self.affixed:
                values = np.maximum(values - 1, 0)
            parts.append(np.cumsum(np.minimum(values, FAR), 1))  # (K, |c|) the class's n smallest, summed
        sums = np.concatenate(parts, 1)  # (K, L): the leaves within T number the sums <= T, so the least T
        least = np.partition(sums, k - 1, 1)[:, k - 1]  # is the k-th smallest sum
        if not self.affixed:
            return least
        return np.where((d == 0).sum(1) >= k, 0, least + 1)

    def _additive(self, d: np.ndarray) -> np.ndarray:
        """(K,) tokens needed by leaves (K, m) no token brings closer two at a time: their sum; with a suffix
        or stop strings the one ending token may bring each of them one step closer at once."""
        total = d.sum(1)
        if not self.affixed:
            return total
        return np.where(total == 0, 0, total - (d >= 1).sum(1) + 1)


def co_progress(a: TokenDFA, dist_a: np.ndarray, b: TokenDFA, dist_b: np.ndarray) -> bool:
    """Can one token, not an ending one, bring both automata one step closer to acceptance, in some pair of
    states that one text reaches in both? Explores the reachable pairs of the two (small) automata over their
    joint token classes (tokens the guide's HMM can emit)."""
    ok = ~a.banned_tokens if a.banned_tokens is not None else np.ones(a.vocab_size, bool)
    present = np.zeros(a.num_classes * b.num_classes, bool)  # (Ca * Cb,) the joint classes some token has
    present[a.token_class[ok].astype(np.int64) * b.num_classes + b.token_class[ok]] = True
    joint = np.flatnonzero(present)
    ca, cb = joint // b.num_classes, joint % b.num_classes  # (J,)
    seen = np.zeros((a.num_states, b.num_states), bool)
    seen[a.initial_state, b.initial_state] = True
    frontier = np.array([[a.initial_state, b.initial_state]])
    while len(frontier):
        na = a.transitions[frontier[:, :1], ca[None, :]].reshape(-1)  # (F * J,)
        nb = b.transitions[frontier[:, 1:], cb[None, :]].reshape(-1)
        fresh = ~seen[na, nb]
        pairs = np.unique(np.stack([na[fresh], nb[fresh]], 1), axis=0)
        seen[pairs[:, 0], pairs[:, 1]] = True
        frontier = pairs
    sa, sb = np.nonzero(seen)  # (P,) reachable pairs
    return bool((_progress(a, dist_a, sa, ca) & _progress(b, dist_b, sb, cb)).any())


def _progress(dfa: TokenDFA, dist: np.ndarray, states: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(P, J) bool: class j takes states[p] one step closer to acceptance, without ending the text."""
    nxt = dfa.transitions[states[:, None], classes[None, :]]
    closer = (dist[states][:, None] < FAR) & (dist[nxt] == dist[states][:, None] - 1)
    return closer & ~dfa.ended[nxt] & ~dfa.ended[states][:, None]


def leaf_compiler(tokenizer: Any, compile_constraint: Callable, budget_s: float, max_states: int) -> Callable:
    """constraint -> its explicit TokenDFA, or None when it does not compile within the small budget."""

    def compile_leaf(constraint: Constraint) -> TokenDFA | None:
        try:
            return compile_constraint(constraint, tokenizer, max_states=max_states, time_budget_s=budget_s,
                                      blocklist_mask=False)  # fmt: skip
        except ConstraintTooComplex:
            return None

    return compile_leaf
