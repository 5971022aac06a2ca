"""The lazy form of a folded constraint (token_product.py): its product of small explicit token automata,
explored as decoding asks, for `compile_constraint(lazy=True)` past the explicit automaton's cap.

`{"all": [{"json_schema": S}, {"keywords": [...]}]}` has a minimal automaton of about |S| x the keywords'
progress states: past LAZY_AFTER_STATES the explicit one is not built. Its components (the schema's token
automaton, each keyword's) are small and explicit; a product state is a tuple of their states, and its
successors are one table lookup per component and per tuple of token classes (a few hundred), so a state
costs microseconds to expand, where the word-level LazyDFA (pc_core/lazy_dfa.py) steps the vocabulary's
groups through the word-level product. The interface is LazyDFA's (step, peek, successors, children,
options, expand, run, accepts, is_ended, is_accepting; ended states end_accept / end_reject, the rejecting
sink), so the lazy guide and its feasibility search (pc_core/lazy_feasibility.py) run on it unchanged. Same
language as the explicit product (token_product.at_least); states are the unminimised tuples. Character
nodes alone past that cap (a JSON schema: refused under lazy=True before) are one explicit component.
"""

from __future__ import annotations

import numpy as np

from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.lazy_automaton import LazyAutomaton
from pc_core.errors import ConstraintTooComplex

LAZY_MAX_STATES = 2_000_000
"""Product states one lazy automaton may hold (a row of a few hundred ints each once expanded)."""


class LazyProductDFA(LazyAutomaton):
    """At least k of `dfas` accept, explored on demand (see the module)."""

    lazy = True
    blocklist = None
    safe_classes = None

    def __init__(
        self, dfas: list[TokenDFA], k: int, tables: object, max_states: int = LAZY_MAX_STATES
    ) -> None:
        self.dfas, self.k, self.max_states = dfas, k, max_states
        stacked = np.stack([d.token_class for d in dfas], axis=1)
        self.letters, self.token_letter, self.letter_token = _letters(stacked)
        self.eos_token_id, self.vocab_size = tables.eos_token_id, tables.vocab_size
        self.tokenizer_fingerprint = tables.fingerprint
        self.live = [d.steps_to_accept >= 0 for d in dfas]
        self.sink, self.end_accept, self.end_reject = 0, 1, 2
        self.ids: dict[tuple, int] = {}
        self.tuples: list[tuple | None] = [None, None, None]  # the three special states
        self.rows: dict[int, np.ndarray] = {}  # state -> successor per letter
        self.initial_state = self._id(tuple(d.initial_state for d in dfas))
        self.compile_seconds, self.note = 0.0, ""

    # ------------------------------------------------------------------ states

    def _id(self, key: tuple) -> int:
        """The state of a tuple of component states: settled ones are the sink or an ended state."""
        found = self.ids.get(key)
        if found is None:
            alive = sum(bool(live[s]) for live, s in zip(self.live, key))
            if all(d.ended[s] for d, s in zip(self.dfas, key)):
                found = self.end_accept if self._count(key) >= self.k else self.end_reject
            elif alive < self.k:
                found = self.sink
            else:
                if len(self.tuples) >= self.max_states:
                    raise ConstraintTooComplex("constraint", f"the lazy automaton passed {self.max_states} states",
                                               states=len(self.tuples), limit=self.max_states)  # fmt: skip
                found = len(self.tuples)
                self.tuples.append(key)
            self.ids[key] = found
        return found

    def _count(self, key: tuple) -> int:
        return sum(bool(d.accepting[s]) for d, s in zip(self.dfas, key))

    @property
    def num_states(self) -> int:
        return len(self.tuples)

    def is_ended(self, state: int) -> bool:
        return state == self.end_accept or state == self.end_reject

    def is_accepting(self, state: int) -> bool:
        if state < 3:
            return state == self.end_accept
        return self._count(self.tuples[state]) >= self.k

    def _row(self, state: int) -> np.ndarray:
        """(letters,) successor of a live state per tuple of token classes, computed once."""
        row = self.rows.get(state)
        if row is None:
            if state == self.sink:
                row = np.full(len(self.letters), self.sink, np.int64)
                row[self.token_letter[self.eos_token_id]] = self.end_reject
            else:
                key = self.tuples[state]
                succ = np.stack([d.transitions[s, self.letters[:, i]] for i, (d, s) in
                                 enumerate(zip(self.dfas, key))], axis=1)  # fmt: skip
                row = np.fromiter((self._id(t) for t in map(tuple, succ.tolist())), np.int64, len(succ))
            self.rows[state] = row
        return row

    # ------------------------------------------------------------------ successors

    def _successor(self, state: int, token_id: int) -> int:
        """The successor of a live state (LazyAutomaton.step has checked the token and the state)."""
        return int(self._row(state)[self.token_letter[token_id]])

    def peek(self, state: int, token_id: int) -> int:
        """`step` (expanding a state costs a few hundred lookups)."""
        return self.step(state, token_id)

    def successors(self, state: int) -> np.ndarray:
        """(V,) int64: the state after each token."""
        if self.is_ended(state):
            return np.full(self.vocab_size, state, np.int64)
        return self._row(state)[self.token_letter]

    def children(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(distinct successor states (K,), a token leading to each (K,))."""
        if self.is_ended(state):
            return np.array([state]), np.array([self.eos_token_id])
        children, first = np.unique(self._row(state), return_index=True)
        return children, self.letter_token[first]

    def options(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """LazyDFA.options (successors the search computes when tried): here `children`, every one computed."""
        return self.children(state)

    def expand(self, state: int) -> None:
        """Compute every successor of a live state now."""
        if not self.is_ended(state):
            self._row(state)


def _letters(stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct rows of component classes (U, parts), each token's row (V,), a token of each row (U,))."""
    letters, first, token_letter = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
    return letters, token_letter.reshape(-1), first
