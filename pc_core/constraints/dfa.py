"""TokenDFA: a minimal deterministic automaton over a tokenizer's vocabulary.

Representation (what the guide consumes):
  * `token_class` (V,) int32: tokens are partitioned into classes that every state treats alike (the
    coarsest such partition of the minimal DFA: two classes differ in at least one state's successor);
  * `transitions` (S, C) int32: successor of each state for each class.
A state's successor for token x is `transitions[s, token_class[x]]`. Most of the vocabulary falls into a
few large classes ("any other word", "punctuation", ...), while tokens that start, extend or finish a
relevant word sit in small ones. The per-state "default successor + exception tokens" view is derived from
this (`default_successor`, `exceptions`); the class view is what lets the guide sum
emission masses once per class instead of once per token.

EOS leads from every live state to one of two absorbing *ended* states (accepted / rejected).
`banned_tokens` marks tokens that no state allows (they split a character this automaton does not let tokens
split, or are invalid UTF-8 whatever precedes them; byte_chars.py): they lead every live state to the
rejecting sink (see exploration.py), and the guide models generation without them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from pc_core.cache import buffer_bytes

if TYPE_CHECKING:
    from pc_core.constraints.blocklist import Blocklist
    from pc_core.constraints.json_syntax import DeepValues


@dataclass(eq=False)
class TokenDFA:
    transitions: np.ndarray  # (S, C) int32
    token_class: np.ndarray  # (V,) int32
    accepting: np.ndarray  # (S,) bool: the text so far (ended or not) satisfies the constraint
    ended: np.ndarray  # (S,) bool: EOS has been generated (absorbing)
    initial_state: int
    eos_token_id: int
    tokenizer_fingerprint: str
    banned_tokens: np.ndarray | None = None  # (V,) bool
    # (V,) int8, 0 = the token's text starts with a word character (continues a word), 1 = it does not.
    # The large classes of word-based constraints fall on one side each; the guide splits its product there.
    token_block: np.ndarray | None = None
    compile_seconds: float = 0.0
    # a blocklist enforced beside this DFA (blocklist.py), and per (state, class) whether the class holds a token
    # the blocklist allows in every text the state stands for (the guide's no-dead-end check)
    blocklist: Blocklist | None = None
    safe_classes: np.ndarray | None = None  # (S, C) bool
    # a json_schema's undeclared values past max_depth: the JSON syntax checked beside the DFA (json_syntax.py)
    deep_values: DeepValues | None = None

    # ------------------------------------------------------------------ basic queries

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.transitions.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.token_class.shape[0])

    @cached_property
    def content_key(self) -> str:
        """SHA-256 over everything a guide's tables depend on: equal keys, equal tables."""
        h = hashlib.sha256(f"{self.initial_state},{self.eos_token_id},{self.tokenizer_fingerprint}".encode())
        for array in (self.transitions, self.token_class, self.accepting, self.ended, self.banned_tokens,
                      self.token_block, self.safe_classes):  # fmt: skip
            h.update(
                b"-" if array is None else np.ascontiguousarray(array).tobytes() + str(array.shape).encode()
            )
        return h.hexdigest()

    @property
    def nbytes(self) -> int:
        arrays = (self.transitions, self.token_class, self.accepting, self.ended, self.banned_tokens,
                  self.token_block, self.safe_classes)  # fmt: skip
        side = self.deep_values.nbytes if self.deep_values is not None else 0
        return buffer_bytes(arrays) + (self.blocklist.nbytes if self.blocklist is not None else 0) + side

    def is_accepting(self, state: int) -> bool:
        return bool(self.accepting[state])

    def is_ended(self, state: int) -> bool:
        return bool(self.ended[state])

    def step(self, state: int, token_id: int) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
        return int(self.transitions[state, self.token_class[token_id]])

    def run(self, token_ids: Iterable[int], state: int | None = None) -> int:
        state = self.initial_state if state is None else state
        for token in token_ids:
            state = self.step(state, int(token))
            if self.ended[state]:
                break
        return state

    def accepts(self, token_ids: Iterable[int]) -> bool:
        """Whether the text of `token_ids` (up to the first EOS) satisfies the constraint (with the blocklist or
        the JSON syntax beside the DFA, if any)."""
        token_ids = [int(t) for t in token_ids]
        if not self.is_accepting(self.run(token_ids)):
            return False
        if self.deep_values is not None and not self.deep_values.text_ok(token_ids, self.eos_token_id):
            return False
        return self.blocklist is None or self.blocklist.text_ok(token_ids)

    # ------------------------------------------------------------------ derived views

    @cached_property
    def class_sizes(self) -> np.ndarray:
        return np.bincount(self.token_class, minlength=self.num_classes)

    @cached_property
    def default_successor(self) -> np.ndarray:
        """(S,) the successor reached by the most tokens from each state."""
        out = np.empty(self.num_states, np.int32)
        for s in range(self.num_states):
            counts = np.bincount(self.transitions[s], weights=self.class_sizes, minlength=self.num_states)
            out[s] = int(np.argmax(counts))
        return out

    def exceptions(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, successors) of the tokens that do not go to `default_successor[state]`."""
        succ = self.transitions[state][self.token_class]
        tokens = np.flatnonzero(succ != self.default_successor[state])
        return tokens, succ[tokens]

    @cached_property
    def steps_to_accept(self) -> np.ndarray:
        """(S,) fewest tokens that reach an accepting state (0 if accepting); -1 where impossible."""
        big = np.iinfo(np.int64).max // 2
        dist = np.where(self.accepting, 0, big).astype(np.int64)
        while True:
            best = dist[self.transitions].min(axis=1) + 1
            new = np.minimum(dist, best)
            if np.array_equal(new, dist):
                break
            dist = new
        return np.where(dist >= big, -1, dist)

    def can_accept_within(self, max_tokens: int, state: int | None = None) -> bool:
        d = int(self.steps_to_accept[self.initial_state if state is None else state])
        return 0 <= d <= max_tokens

    def summary(self) -> dict:
        sizes = np.sort(self.class_sizes)[::-1]
        return {
            "states": self.num_states,
            "token_classes": self.num_classes,
            "vocab_size": self.vocab_size,
            "largest_classes": sizes[:5].tolist(),
            "accepting_states": int(self.accepting.sum()),
            "min_tokens_to_accept": int(self.steps_to_accept[self.initial_state]),
            "compile_ms": round(self.compile_seconds * 1000, 2),
            "blocklist_words": 0 if self.blocklist is None else len(self.blocklist.keywords),
        }
