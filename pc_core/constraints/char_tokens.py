"""Character automata (patterns.py) at the token level (docs/method.md §4, patterns).

Two ways in:
* `compile_char_only`: a constraint made only of `regex` / `pattern` / `choice` / `json_schema` nodes under
  all / any / not is one character DFA (their product). Its token DFA is computed with numpy: each token's
  text becomes a sequence of the DFA's columns, equal sequences are merged, and every reachable state runs all
  distinct sequences at once, position by position. EOS ends the text, banned tokens (vocab.py) lead to a
  sink, tokens without text change nothing; then the compiler's minimisation.
* `CharMatcher` + `TextEffects`: inside any other constraint (keywords, word_count, suffix, stop, ...) the
  word-level compiler feeds each token's text to a CharMatcher, grouping tokens whose texts act alike on
  every character automaton (and every `ends_with`) by `TextEffects`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pc_core.constraints.affixes import _effect, token_texts
from pc_core.constraints.char_dfa import CharDFA, combine
from pc_core.constraints.matchers import NO, YES, Matcher
from pc_core.constraints.patterns import CHAR_NODES, char_automaton
from pc_core.constraints.spec import All, AnyOf, Not, walk
from pc_core.errors import ConstraintTooComplex

EXPLORE_FACTOR = 8


class CharMatcher(Matcher):
    """A character DFA fed each token's text: its state, NO once dead, YES once it accepts whatever follows."""

    def __init__(self, dfa: CharDFA) -> None:
        self.dfa = dfa
        self.memo: dict[tuple[int, str], object] = {}

    def _decide(self, state: int) -> object:
        return NO if self.dfa.is_dead(state) else YES if self.dfa.is_universal(state) else state

    def init(self) -> object:
        return self._decide(self.dfa.initial)

    def text(self, state: object, text: str) -> object:
        if state in (YES, NO):
            return state
        found = self.memo.get((state, text))
        if found is None:
            found = self.memo[(state, text)] = self._decide(self.dfa.run(state, text))
        return found

    def accept(self, state: object) -> bool:
        return state is YES if state in (YES, NO) else bool(self.dfa.accept[state])


def has_char_nodes(constraint: object) -> bool:
    return any(isinstance(node, CHAR_NODES) for node in walk(constraint))


def char_only_dfa(constraint: object) -> CharDFA | None:
    """The product character DFA of a tree of character nodes under all / any / not; None otherwise."""
    if isinstance(constraint, CHAR_NODES):
        return char_automaton(constraint)
    if isinstance(constraint, Not):
        inner = char_only_dfa(constraint.child)
        return None if inner is None else combine("not", [inner])
    if isinstance(constraint, (All, AnyOf)):
        parts = [char_only_dfa(c) for c in constraint.children]
        if any(p is None for p in parts):
            return None
        return combine("all" if isinstance(constraint, All) else "any", parts)
    return None


def token_sequences(dfa: CharDFA, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seq of each token (V,), column matrix (max length, U) of the distinct sequences sorted by length,
    longest first, their lengths (U,)). Tokens without text get the empty sequence."""
    lengths = np.fromiter((len(t) for t in texts), np.int64, len(texts))
    codes = np.fromiter((ord(c) for t in texts for c in t), np.int64, int(lengths.sum()))
    cols = dfa.columns(codes).astype(np.int32)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    ids: dict[bytes, int] = {}
    seq_of = np.empty(len(texts), np.int64)
    firsts = []
    for t in range(len(texts)):
        key = cols[bounds[t] : bounds[t + 1]].tobytes()
        if key not in ids:
            ids[key] = len(ids)
            firsts.append(t)
        seq_of[t] = ids[key]
    seq_len = lengths[firsts]
    order = np.argsort(-seq_len, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    width = int(seq_len.max()) if len(seq_len) else 0
    matrix = np.zeros((width, len(firsts)), np.int32)
    for j, u in enumerate(order.tolist()):
        t = firsts[u]
        matrix[: lengths[t], j] = cols[bounds[t] : bounds[t + 1]]
    return rank[seq_of], matrix, seq_len[order]


def run_all(dfa: CharDFA, states: np.ndarray, matrix: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(B, U) the state after each distinct sequence from each of `states` (B,)."""
    cur = np.repeat(states[:, None].astype(np.int32), matrix.shape[1], axis=1)
    active = np.searchsorted(-lengths, -np.arange(1, matrix.shape[0] + 1), side="right")  # len > pos
    for pos in range(matrix.shape[0]):
        n = int(active[pos])
        cur[:, :n] = dfa.trans[cur[:, :n], matrix[pos, :n]]
    return cur


def compile_char_only(dfa: CharDFA, tables: object, max_states: int, check_deadline: Callable) -> object:
    """The minimal TokenDFA of a character DFA over `tables` (vocab.VocabTables)."""
    from pc_core.constraints.compiler import _minimise

    texts = token_texts(tables)
    seq_of, matrix, lengths = token_sequences(dfa, texts)
    order, index, rows = [dfa.initial], {dfa.initial: 0}, []
    cap = max_states * EXPLORE_FACTOR
    done = 0
    while done < len(order):
        check_deadline()
        batch = np.array(order[done:], np.int64)
        done = len(order)
        result = run_all(dfa, batch, matrix, lengths)
        for s in np.unique(result).tolist():
            if s not in index:
                index[s] = len(order)
                order.append(s)
        if len(order) > cap:
            raise ConstraintTooComplex("constraint", f"more than {cap} automaton states before minimisation (cap "
                                       f"{max_states} after); simplify the constraint", states=len(order),
                                       limit=max_states)  # fmt: skip
        rows.append(result)
    n = len(order)
    remap = np.full(dfa.num_states, -1, np.int64)
    remap[order] = np.arange(n)
    sink, end_yes, end_no = n, n + 1, n + 2
    eos_col, banned_col, empty_col = (matrix.shape[1] + k for k in range(3))
    delta = np.empty((n + 3, matrix.shape[1] + 3), np.int32)
    delta[:n, : matrix.shape[1]] = remap[np.concatenate(rows)]
    accept = dfa.accept[order]
    delta[:n, eos_col] = np.where(accept, end_yes, end_no)
    delta[:n, banned_col] = sink
    delta[:n, empty_col] = np.arange(n)
    delta[sink] = sink
    delta[sink, eos_col] = end_no
    delta[end_yes], delta[end_no] = end_yes, end_no
    token_class = seq_of.copy()
    token_class[[len(t) == 0 for t in texts]] = empty_col
    token_class[np.asarray(tables.banned, bool)] = banned_col
    token_class[tables.eos_token_id] = eos_col
    accepting = np.concatenate([accept, [False, True, False]])
    ended = np.concatenate([np.zeros(n + 1, bool), [True, True]])
    return _minimise(delta, token_class.astype(np.int32), 0, accepting, ended, tables, max_states, check_deadline)


class TextEffects:
    """Token texts grouped by what they do to every `ends_with` pattern and character automaton of a
    constraint: `signatures(texts)` (V,) int64 for the compiler's partition, and `__call__(text)` one
    representative text per group (texts of a group act alike, so memo keys can use the representative)."""

    def __init__(self, patterns: Sequence[str], constraint: object) -> None:
        self.patterns = list(patterns)
        self.dfas = [char_automaton(node) for node in walk(constraint) if isinstance(node, CHAR_NODES)]
        self.active = bool(self.patterns or self.dfas)
        self.reps: dict[tuple, str] = {}

    def key(self, text: str) -> tuple:
        if not text:
            return ("identity",)
        effects = tuple(_effect(p, text) for p in self.patterns)
        return effects + tuple(tuple(d.column_of(c) for c in text) for d in self.dfas)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        ids: dict[tuple, int] = {}
        return np.fromiter((ids.setdefault(self.key(t), len(ids)) for t in texts), np.int64, len(texts))

    def __call__(self, text: str) -> str | None:
        if not self.active:
            return None
        return self.reps.setdefault(self.key(text), text)
