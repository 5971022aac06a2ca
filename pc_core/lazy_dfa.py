"""The constraint's token automaton explored lazily: only the states decoding and its feasibility search reach
(docs/method.md §5.10).

The explicit compiler (constraints/explicit.py) explores every state of the character-level product at token
boundaries, then minimises. Counting constraints over many keywords have exponentially many such states
(`once` over 10 keywords: 114,946 minimal states in 42 s), although a decoding of 40 tokens visits a few
hundred. LazyDFA keeps the compiler's product (tracker x word-level matcher x partial suffix / stop matches,
the same states and the same token groups) and expands a state only when it is asked for its successors:
`step`, `run` and `accepts` give exactly the explicit automaton's answers (same language; the states are
the unminimised ones, so ids differ).

States: ints in the order they were met; the initial state is 0. Ended states (EOS, a completed suffix or
stop string) are absorbing, as in TokenDFA.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pc_core.constraints.explicit import _Compiler
from pc_core.constraints.exploration import _Exploration
from pc_core.constraints.spec import Constraint
from pc_core.constraints.vocab import VocabTables

LAZY_MAX_STATES = 2_000_000
"""Explored states one lazy automaton may hold (memory: a few hundred bytes each plus its successor row)."""


class LazyDFA:
    """A token automaton explored on demand; the TokenDFA methods decoding and checking use (see module)."""

    lazy = True
    blocklist = None  # the blocked words stay inside the product (no mask beside it)
    safe_classes = None

    def __init__(
        self, constraint: Constraint, tables: VocabTables, max_states: int = LAZY_MAX_STATES
    ) -> None:
        compiler = _Compiler(constraint, tables, max_states // 4, float("inf"))  # explore cap: 4 x max_states
        self.tables, self.compiler = tables, compiler
        self.explored = _Exploration(compiler)
        self.explored.queue.clear()  # nothing is explored ahead of a request for it
        self.initial_state = self.explored.initial
        self.end_accept, self.end_reject, self.sink = (
            self.explored.end_accept,
            self.explored.end_reject,
            self.explored.sink,
        )  # the only ended states, and the rejecting sink
        self.eos_token_id = tables.eos_token_id
        self.vocab_size = tables.vocab_size
        self.tokenizer_fingerprint = tables.fingerprint
        relevant = compiler.affixes.relevant if compiler.affixes is not None else np.zeros(0, np.int64)
        self.relevant = relevant  # tokens with a suffix / stop role: their successor is per affix key
        self.relevant_index = np.full(tables.vocab_size, -1, np.int64)
        self.relevant_index[relevant] = np.arange(len(relevant))
        self._accepting: dict[int, bool] = {}
        self._children: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.compile_seconds = 0.0

    # ------------------------------------------------------------------ states

    @property
    def num_states(self) -> int:
        """States explored so far (successors of expanded states included)."""
        return len(self.explored.keys)

    def is_ended(self, state: int) -> bool:
        return state == self.end_accept or state == self.end_reject

    def is_accepting(self, state: int) -> bool:
        found = self._accepting.get(state)
        if found is None:
            found = self._accepting[state] = bool(self.explored.accepting_key(self.explored.keys[state]))
        return found

    def _row(self, state: int) -> tuple:
        """(context name, successor per group, affix part or None) of a live state, expanding it once."""
        row = self.explored.rows.get(state)
        if row is None:
            self.explored.expand(state)
            self.explored.queue.clear()
            row = self.explored.rows[state]
        return row

    # ------------------------------------------------------------------ successors

    def step(self, state: int, token_id: int) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
        if self.is_ended(state):
            return state
        name, succ, affix = self._row(state)
        j = self.relevant_index[token_id]
        if affix is not None and j >= 0:
            keymap = self.explored.affix_memo[affix[0]][0]
            return int(affix[1][keymap[j]])
        return int(succ[self.compiler.contexts[name].group_of_token[token_id]])

    def successors(self, state: int) -> np.ndarray:
        """(V,) int64: the state after each token."""
        if self.is_ended(state):
            return np.full(self.vocab_size, state, np.int64)
        name, succ, affix = self._row(state)
        out = succ[self.compiler.contexts[name].group_of_token].astype(np.int64)
        if affix is not None:
            keymap = self.explored.affix_memo[affix[0]][0]
            out[self.relevant] = affix[1][keymap]
        return out

    def children(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(distinct successor states (K,), a token leading to each (K,)), cached per state."""
        found = self._children.get(state)
        if found is None:
            if self.is_ended(state):
                found = (np.array([state]), np.array([self.eos_token_id]))
            elif self._row(state)[2] is None:  # per group of the context: one representative each
                name, succ, _ = self._row(state)
                children, first = np.unique(succ, return_index=True)
                found = (children.astype(np.int64), self.compiler.contexts[name].representatives[first])
            else:
                children, first = np.unique(self.successors(state), return_index=True)
                found = (children, first)
            self._children[state] = found
        return found

    def run(self, token_ids: Iterable[int], state: int | None = None) -> int:
        state = self.initial_state if state is None else state
        for token in token_ids:
            state = self.step(state, int(token))
            if self.is_ended(state):
                break
        return state

    def accepts(self, token_ids: Iterable[int]) -> bool:
        """Whether the text of `token_ids` (up to the first EOS) satisfies the constraint."""
        return self.is_accepting(self.run([int(t) for t in token_ids]))

    def summary(self) -> dict:
        return {"lazy": True, "explored_states": self.num_states, "vocab": self.vocab_size}
