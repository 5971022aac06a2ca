"""What every lazily explored token automaton answers the same way (the word-level LazyDFA of
pc_core/lazy_dfa.py and the LazyProductDFA of constraints/lazy_product.py): running token ids from a state,
judging a whole sequence, and its summary. Subclasses give `initial_state`, `_successor` (of a live state), `is_ended`,
`is_accepting`, `num_states` and `vocab_size`."""

from __future__ import annotations

from collections.abc import Iterable


class LazyAutomaton:
    initial_state: int
    num_states: int
    vocab_size: int

    def step(self, state: int, token_id: int) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
        if self.is_ended(state):
            return state
        return self._successor(state, token_id)

    def _successor(self, state: int, token_id: int) -> int:
        raise NotImplementedError

    def is_ended(self, state: int) -> bool:
        raise NotImplementedError

    def is_accepting(self, state: int) -> bool:
        raise NotImplementedError

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
