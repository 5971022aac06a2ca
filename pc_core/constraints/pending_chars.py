"""Tracker states inside a character, for the word-level compiler (explicit.py, docs/method.md §3).

After a token that ends inside a UTF-8 character, the compiler's tracker state is ("p", base, k): the text
before the incomplete character leaves the tracker in `base`, and the character's bytes so far are a tail
of class k (byte_chars.TailClasses). Such a state has its own context: only tokens whose leading
continuation bytes complete (or extend) the character are valid; the completed character and the rest of
the token's text then run from `base` like any text. EOS there ends the text rejected (it is never
accepting), and so does every other token (to the sink).

Tail classes use the characters' *signature* for this constraint: a character that appears in none of the
constraint's words, gaps and `ends_with` texts (nor casefolds into them) acts only through whether it is a
word character or whitespace and its column in each character automaton; every other character is itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pc_core.constraints.byte_chars import (
    TailClasses,
    char_categories,
    continuation_text,
    nontrivial_casefolds,
)
from pc_core.constraints.vocab import KIND_EOS, KIND_SPECIAL, VocabTables, split_runs

NONE, DEAD = 0, 1  # as tracker.py: the tracker states that are not in the tracker's table


def mentioned_chars(words: object, text_effects: object) -> set[str]:
    """The characters of the constraint's words, gaps and `ends_with` texts."""
    texts = [*words.cf_words, *words.ex_words, *words.gap_prefixes, *text_effects.patterns]
    return {c for text in texts for c in text}


def word_signature(words: object, text_effects: object) -> Callable[[np.ndarray], np.ndarray]:
    """(n,) code points -> (n,) int64: equal values act alike on the tracker and the text effects."""
    cf_words = words.cf_words
    relevant = {ord(c) for c in mentioned_chars(words, text_effects)}
    folded = {c for w in cf_words for c in w}
    if folded:
        relevant |= {cp for cp, f in nontrivial_casefolds().items() if folded.intersection(f)}
    special = np.array(sorted(relevant), np.int64)
    dfas = list(text_effects.dfas)

    def signature(codes: np.ndarray) -> np.ndarray:
        out = char_categories()[codes].astype(np.int64)  # word / space / other
        for dfa in dfas:
            out = out * (int(dfa.column.max()) + 1) + dfa.columns(codes)
        hit = np.isin(codes, special)
        out[hit] = -1 - codes[hit]  # a character the constraint mentions stands for itself
        return out

    return signature


class PendingChars:
    """Incomplete characters in the word-level compiler's tracker states (see the module docstring).

    Only a character that starts like one the constraint mentions may be split: every tail that a token
    ends with, or a continuation extends, must be the start of one of those characters' UTF-8 (other
    splitting tokens stay banned, as they lead to the sink). Splitting every character would be exact too,
    but on a byte-level BPE the tracker then tells ~300 classes of partial characters apart (word character
    or not, for every completion), multiplying every keyword automaton; with this rule an all-ASCII
    constraint compiles exactly as without byte-level characters, and "café" or "中文" can be written."""

    def __init__(self, tables: VocabTables, words: object, text_effects: object, texts: list[str],
                 prefixes: set[bytes]) -> None:  # fmt: skip
        self.tables, self.words, self.texts = tables, words, texts
        self.classes = TailClasses(word_signature(words, text_effects), lambda tail, _: tail in prefixes)
        self.tail_class = np.zeros(tables.vocab_size, np.int64)  # (V,) class of the tail a token ends with
        # tokens that cannot follow a complete character: invalid bytes, continuation bytes first, or a tail
        # that may not be pending
        self.boundary_banned = np.asarray(tables.banned, bool).copy()
        for t in np.flatnonzero(tables.tail_id).tolist():
            k = self.classes.klass(tables.tails[tables.tail_id[t]])
            if k is not None:
                self.tail_class[t], self.boundary_banned[t] = k, False
        # (V,) tokens no state allows: invalid after any bytes, or ending with a tail that may not be pending
        self.unusable = np.asarray(tables.never, bool) | (self.boundary_banned & (tables.tail_id > 0))
        self.effects: dict[tuple[int, int], tuple[str, int] | None] = {}

    @classmethod
    def build(
        cls, tables: VocabTables, words: object, text_effects: object, texts: list[str]
    ) -> PendingChars | None:
        """None where no token splits a character, or the constraint mentions no non-ASCII character."""
        chars = [c for c in mentioned_chars(words, text_effects) if not c.isascii()]
        if not chars or not np.asarray(tables.tail_id).any():
            return None
        prefixes = {c.encode()[:i] for c in chars for i in range(1, len(c.encode()))}
        return cls(tables, words, text_effects, texts, prefixes)

    def is_pending(self, cur: int) -> bool:
        return cur > DEAD and self.words.curs[cur][0] == "p"

    def context_name(self, cur: int) -> tuple:
        return ("p", self.words.curs[cur][2])

    def _wrap(self, cur: int, k: int) -> int:
        return cur if not k else self.words._intern(("p", cur, k))

    def _continue(self, k: int, tok: int) -> tuple[str, int] | None:
        """(text, tail class) token `tok` adds after a tail of class k; None if that is invalid UTF-8."""
        key = (k, tok)
        if key not in self.effects:
            parts = self.tables.continuations.get(tok)
            self.effects[key] = None if parts is None else continuation_text(self.classes, k, *parts)
        return self.effects[key]

    def event(self, cur: int, tok: int) -> tuple[int, tuple[int, ...]] | None:
        """(tracker, events) after `tok`, as token_contexts.TokenContexts.token_event; None for EOS and invalid bytes."""
        t = self.tables
        kind = t.kind[tok]
        if kind == KIND_EOS:
            return None
        if kind == KIND_SPECIAL:  # no text: a pending character stays pending
            return cur, ()
        if self.is_pending(cur):
            _, base, k = self.words.curs[cur]
            found = self._continue(k, tok)
            if found is None:
                return None
            text, tail = found
            new, events = self.words.run(base, split_runs(text))
            return self._wrap(new, tail), events
        if self.boundary_banned[tok]:
            return None
        new, events = self.words.run(cur, t.runs(tok))
        return self._wrap(new, int(self.tail_class[tok])), events

    def text(self, cur: int, tok: int) -> str:
        """The complete characters `tok` adds in tracker state `cur` (for the character automata)."""
        if self.is_pending(cur):
            found = self._continue(self.words.curs[cur][2], tok)
            return found[0] if found is not None else ""
        return self.texts[tok] if self.texts else ""

    def context_keys(self, name: tuple) -> np.ndarray:
        """(V,) int64 partition keys for the pending context `name` = ("p", k): 0 invalid, 1 no text, 2 EOS,
        then one key per (completed character's signature or longer tail, rest of the text, its tail)."""
        k = name[1]
        t = self.tables
        keys = np.zeros(t.vocab_size, np.int64)
        keys[t.kind == KIND_SPECIAL] = 1
        keys[t.eos_token_id] = 2
        index: dict[tuple, int] = {}
        for tok, (lead, _rest) in t.continuations.items():
            found = self._continue(k, tok)
            if found is None or t.kind[tok] in (KIND_EOS, KIND_SPECIAL):
                continue
            outcome = self.classes.step(k, lead)
            if outcome[0] == "char":
                outcome = ("char", int(self.classes.signature(np.array([ord(outcome[1])], np.int64))[0]))
            keys[tok] = 3 + index.setdefault((outcome, *found[1:], found[0][1:]), len(index))
        return keys
