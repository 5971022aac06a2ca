"""Blocklists enforced beside the guide as an exact mask (docs/method.md §7).

A `forbidden` list of hundreds of words multiplied into the constraint's DFA would multiply its states by the
blocklist's prefix tree (thousands), and the guide's tables with them. Instead, inside a top-level `all`, the
single-word forbidden keywords are taken out: the DFA (and the guide's dynamic programme) covers the rest, and
this text-level automaton masks, at every step and for every beam, the tokens that would

  * finish a forbidden word (the word the token continues, or a word inside it), or
  * leave an open word that is a forbidden word (the next separator, or the end of the text, would finish it).

The state of a beam is its open word ("" between words). Because no open word is ever forbidden, finishing
the current word is always allowed, so masking never dead-ends a pure blocklist. With a required part, the
compiler checks that masking cannot dead-end it either: every token class the required part's DFA uses at a
state has a token that is allowed in every situation the state stands for (`safe_classes`), and the guide
compares its feasibility tables with and without the classes that have none (GuideTables). Where they differ
the constraint is compiled as one exact product instead. Every output therefore satisfies the whole
constraint, and the text checker re-checks it.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

import numpy as np

from pc_core.constraints import vocab
from pc_core.constraints.nodes import All, AnyOf, Constraint, Keyword, Not
from pc_core.constraints.vocab import KIND_SEP, KIND_WORD, VocabTables

MASK_MIN_WORDS = 4
MASKS_KEPT = 64  # masks cached per blocklist, by open word (each a (V,) bool array)
"""A blocklist with at least this many single-word keywords is enforced by the mask; smaller ones are
compiled into the DFA, where the guide also models their effect on the probability of the rest."""


def split_blocklist(
    constraint: Constraint, min_words: int = MASK_MIN_WORDS
) -> tuple[Constraint, tuple] | None:
    """(the rest, the blocked keywords) when `constraint` is an `all` (or a lone `forbidden`) holding at least
    `min_words` forbidden single-word keywords; None otherwise."""
    children = constraint.children if isinstance(constraint, All) else (constraint,)
    rest, blocked = [], []
    for child in children:
        words = _single_word_keywords(child)
        if words is None:
            rest.append(child)
        else:
            blocked.extend(words)
    if len(blocked) < min_words:
        return None
    return All(tuple(rest)), tuple(blocked)


def _single_word_keywords(node: Constraint) -> list[Keyword] | None:
    """The keywords of `not(keyword)` / `not(any(keyword, ...))` when every form is a single word."""
    if not isinstance(node, Not):
        return None
    inner = node.child
    keywords = [inner] if isinstance(inner, Keyword) else list(getattr(inner, "children", ()))
    if not isinstance(inner, (Keyword, AnyOf)) or not all(isinstance(k, Keyword) for k in keywords):
        return None
    if any(len(form.words) > 1 for k in keywords for form in k.forms()):
        return None
    return keywords


class Blocklist:
    """The mask for one blocklist over one tokenizer (see the module docstring). Pickled without the
    tokenizer's tables (a compiling worker process sends it back): they are found again by fingerprint in
    the receiving process's table cache."""

    def __init__(self, keywords: tuple[Keyword, ...], tables: VocabTables) -> None:
        self.keywords = keywords
        self._tables: VocabTables | None = tables
        self.fingerprint = tables.fingerprint
        exact, folded = set(), set()
        for keyword in self.keywords:
            for form in keyword.forms():
                (folded if keyword.case == "any" else exact).add(form.words[0])
        self.exact, self.folded = frozenset(exact), frozenset(folded)
        self._exact_sorted, self._folded_sorted = sorted(exact), sorted(folded)
        self._any_casing = frozenset({w.casefold() for w in exact} | folded)  # some casing is forbidden
        self._any_casing_sorted = sorted(self._any_casing)
        t = self.tables
        bad_string = np.array([self.is_forbidden(s) if s else False for s in t.strings], bool)
        is_sep = t.kind == KIND_SEP
        inner_bad = np.zeros(t.vocab_size, bool)
        for token, inner in t.inner.items():
            inner_bad[token] = any(self.is_forbidden(word) for word, _ in inner)
        trail_bad = bad_string[t.s_id] & is_sep
        self.base_ok = ~(inner_bad | trail_bad | t.banned)  # (V,) whatever the open word
        self.lead_bad = bad_string[t.p_id]  # (V,) the leading run, as a word of its own, is forbidden
        self.ok_between_words = self.base_ok & ~self.lead_bad
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def tables(self) -> VocabTables:
        if self._tables is None:
            self._tables = vocab.VOCAB_TABLES.get(self.fingerprint)
            if self._tables is None:
                raise RuntimeError("the blocklist's tokenizer tables are not loaded in this process")
        return self._tables

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tables": None, "_masks": OrderedDict()}

    @property
    def nbytes(self) -> int:
        """What it may hold: three (V,) arrays and up to MASKS_KEPT cached masks."""
        return (3 + MASKS_KEPT) * self.base_ok.shape[0]

    def is_forbidden(self, word: str) -> bool:
        return word in self.exact or word.casefold() in self.folded

    def allowed(self, open_word: str) -> np.ndarray:
        """(V,) bool: the tokens that keep the text free of forbidden words, with no forbidden word open, after
        a text whose open word is `open_word` ("" between words). Read-only; cached per open word."""
        if not open_word:
            return self.ok_between_words
        mask = self._masks.get(open_word)
        if mask is None:
            mask = self.base_ok.copy()
            mask[self._completing(open_word)] = False
            mask.flags.writeable = False
            self._masks[open_word] = mask
            if len(self._masks) > MASKS_KEPT:
                self._masks.popitem(last=False)
        else:
            self._masks.move_to_end(open_word)
        return mask

    def _completing(self, open_word: str) -> np.ndarray:
        """Tokens whose leading run turns `open_word` into a forbidden word."""
        t = self.tables
        found = [t.p_tokens_by_exact.get(rest) for rest in _remainders(self._exact_sorted, open_word)]
        folded = open_word.casefold()
        found += [t.p_tokens_by_casefold.get(rest) for rest in _remainders(self._folded_sorted, folded)]
        found = [f for f in found if f is not None]
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def text_ok(self, token_ids: list[int]) -> bool:
        """Whether the text of `token_ids` (up to the first EOS) has no forbidden word (the constraint itself,
        which a detour through an open forbidden word, " cat" + "egory", does not break; the mask is stricter)."""
        t = self.tables
        words, open_word = [], ""
        for token in token_ids:
            if token == t.eos_token_id:
                break
            if t.kind[token] == KIND_WORD:
                open_word += t.strings[t.p_id[token]]
            elif t.kind[token] == KIND_SEP:
                words += [open_word + t.strings[t.p_id[token]]] + [w for w, _ in t.inner.get(token, ())]
                open_word = t.strings[t.s_id[token]]
        return not any(self.is_forbidden(w) for w in [*words, open_word] if w)

    def advance(self, open_word: str, token: int) -> str:
        """The open word after `token`."""
        t = self.tables
        kind = t.kind[token]
        if kind == KIND_WORD:
            return open_word + t.strings[t.p_id[token]]
        if kind == KIND_SEP:
            return t.strings[t.s_id[token]]
        return open_word  # EOS, special tokens

    def prefix_signature(self, prefix: str, folded: bool) -> tuple:
        """What `safe_tokens` reads of a live prefix (exact, or casefolded when `folded`): prefixes with equal
        signatures have equal safe tokens, so a compiler may let one stand for the others."""
        if folded:
            rests = tuple(_remainders(self._any_casing_sorted, prefix))
            return (prefix in self.folded, prefix in self._any_casing, rests)
        exact = tuple(_remainders(self._exact_sorted, prefix))
        folded_rests = tuple(_remainders(self._folded_sorted, prefix.casefold()))
        return (self.is_forbidden(prefix), exact, folded_rests)

    def safe_tokens(
        self, context: str, word: tuple[str | None, str | None] | None = None
    ) -> np.ndarray | None:
        """(V,) the tokens allowed in *every* text the compiler's tracker context stands for, or None when no
        text that masking lets through is in that context. context: "gap" (between words), "dead" (inside a word
        the rest of the constraint does not mention: unknown, but not forbidden), "word" (a live prefix
        `word` = (casefolded, exact), either possibly None)."""
        if context == "gap":
            return self.ok_between_words
        if context == "dead":
            return self.base_ok & (self.tables.p_id == 0)  # only tokens that start by finishing the word
        folded, exact = word
        if exact is not None:
            return None if self.is_forbidden(exact) else self.allowed(exact)
        if folded in self.folded:
            return None  # forbidden in every casing: masking never leaves it open
        if folded in self._any_casing:
            return np.zeros(self.tables.vocab_size, bool)  # some casing of it is forbidden: nothing is sure
        mask = self.base_ok.copy()
        found = [
            self.tables.p_tokens_by_casefold.get(r) for r in _remainders(self._any_casing_sorted, folded)
        ]
        found = [f for f in found if f is not None]
        if found:
            mask[np.concatenate(found)] = False
        return mask


def _with_prefix(words: list[str], prefix: str) -> list[str]:
    start = bisect.bisect_left(words, prefix)
    end = bisect.bisect_left(words, prefix + "\U0010ffff")
    return words[start:end]


def _remainders(words: list[str], prefix: str) -> list[str]:
    """The non-empty rests of the (sorted) words that start with `prefix`."""
    return [w[len(prefix) :] for w in _with_prefix(words, prefix) if len(w) > len(prefix)]
