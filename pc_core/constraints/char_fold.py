"""Word-level nodes folded into the character automaton (docs/method.md §4, patterns).

A constraint that mixes character nodes (`regex`, `pattern`, `choice`, `json_schema`) with keywords,
`word_count` or `ends_with` under all / any / not / at_least / at_most is compiled, when it is small enough,
as ONE character DFA: each word-level leaf becomes a character automaton of its own, with the semantics of
the checker (words.py: a word is a maximal run of `\\w`, gaps compare after collapsing whitespace runs):

  * a keyword: some form occurs as whole words: (start | a non-word character), the form's words (exact, or
    for case "any" any word characters whose casefolds spell the casefolded word) with each gap's spaces
    read as `\\s+`, then (a non-word character | end);
  * word_count {min, max}: the number of maximal `\\w` runs of the whole text;
  * ends_with: `.*text` over the whole text.

token_product.py compiles each child of the top-level all / any / at_least / at_most alone and combines
the token automata; below that level (and under a top-level `not`) children are combined here by `product`
(vectorised over the distinct column tuples of the components, not over the atoms: `\\w` alone has ~1,400
atoms) and compiled by char_tokens.compile_char_only, which runs every distinct token text through the DFA
once per reachable state. The same language as the word-level compiler on whole characters; tokens that
split a character follow the character path's rule (char_bytes.py: a character the pattern names, or one
whose tails act alike, may be split), where the word-level compiler lets only the keywords' characters be
split (pending_chars.py). Anything else (`count`, `ordered`, `word_at`, `tokens`, a
suffix or stop strings, more than MAX_FOLD_FORMS keyword forms, or a product past FOLD_MAX_STATES) is not
folded: the word-level compiler (compiler.py) as before.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cache, lru_cache

import numpy as np

from pc_core.constraints.char_dfa import CharDFA, build_char_dfa, minimise
from pc_core.constraints.nodes import All, AnyOf, AtLeast, AtMost, EndsWith, Keyword, Not, WordCount, walk
from pc_core.constraints.patterns import CHAR_NODES, char_automaton, full
from pc_core.constraints.regex import (
    ANY,
    BOS,
    EMPTY,
    EOS,
    Node,
    alt,
    category,
    char_set,
    literal,
    negate,
    rep,
    seq,
)
from pc_core.errors import ConstraintError

FOLD_MAX_STATES = 60_000
"""Cap on a product while it is built (before minimisation): past it the word-level compiler runs."""
MAX_FOLD_FORMS = 512
"""Keyword forms over the whole tree: a long forbidden list stays a blocklist beside a word-level DFA."""
MAX_FOLD_WORD_COUNT = 256  # word_count bounds past this: the word-level counter
MAX_CASEFOLD_BRANCHES = 64  # alternative spellings of one casefolded word (ß -> ss, ...)

FOLDABLE = (Keyword, WordCount, EndsWith)
STRUCTURE = (All, AnyOf, Not, AtLeast, AtMost)


class _NoFold(Exception):
    """The tree cannot be folded (too large); the caller falls back to the word-level compiler."""


def foldable(constraint: object) -> bool:
    """A tree of character nodes and foldable word-level leaves under all / any / not / at_least / at_most,
    with at least one of each kind and at most MAX_FOLD_FORMS keyword forms."""
    nodes = list(walk(constraint))
    if not any(isinstance(n, CHAR_NODES) for n in nodes) or not any(isinstance(n, FOLDABLE) for n in nodes):
        return False
    if not all(isinstance(n, (*CHAR_NODES, *FOLDABLE, *STRUCTURE)) for n in nodes):
        return False
    keywords = [n for n in nodes if isinstance(n, Keyword)]
    return len(keywords) <= MAX_FOLD_FORMS and sum(len(n.forms()) for n in keywords) <= MAX_FOLD_FORMS


def folded_char_dfa(constraint: object) -> CharDFA | None:
    """One character DFA for a foldable tree; None otherwise (or when too large)."""
    if not foldable(constraint):
        return None
    try:
        return _fold_cached(constraint)
    except (_NoFold, ConstraintError):  # too large: the word-level compiler
        return None


def part_dfas(constraint: object, children: tuple) -> list[tuple[object, CharDFA]] | None:
    """(child, its character DFA) for `children` of a foldable `constraint`; None otherwise (or too large)."""
    if not foldable(constraint):
        return None
    try:
        return [(child, _fold_cached(child)) for child in children]
    except (_NoFold, ConstraintError):
        return None


@lru_cache(maxsize=64)
def _fold_cached(constraint: object) -> CharDFA:
    return _fold(constraint)


def _fold(node: object) -> CharDFA:
    if isinstance(node, CHAR_NODES):
        return char_automaton(node)
    if isinstance(node, FOLDABLE):
        return leaf_automaton(node)
    if isinstance(node, Not):
        inner = _fold(node.child)
        return minimise(inner.starts, inner.column, inner.trans, ~inner.accept, inner.initial)
    if not node.children:  # all [] / any [] / at_least k of []: the word-level compiler
        raise _NoFold
    parts = [_fold(c) for c in node.children]
    if isinstance(node, All):
        return product(parts, len(parts))
    if isinstance(node, AnyOf):
        return product(parts, 1)
    if isinstance(node, AtLeast):
        return product(parts, node.k)
    return complement(product(parts, node.k + 1))  # at_most k: not (at least k + 1)


def complement(dfa: CharDFA) -> CharDFA:
    return minimise(dfa.starts, dfa.column, dfa.trans, ~dfa.accept, dfa.initial)


# ------------------------------------------------------------------------------------------- leaves


def leaf_automaton(node: object) -> CharDFA:
    """The character DFA of a keyword, word_count or ends_with node (cached per node)."""
    return _leaf(node)


@lru_cache(maxsize=256)
def _leaf(node: object) -> CharDFA:
    if isinstance(node, Keyword):
        return build_char_dfa(keyword_ir(node), "constraint")
    if isinstance(node, WordCount):
        if max(node.min, node.max or 0) > MAX_FOLD_WORD_COUNT:
            raise _NoFold
        return build_char_dfa(full(word_count_ir(node.min, node.max)), "constraint")
    anything = rep(("set", ANY), 0, None)
    return build_char_dfa(full(seq([anything, literal(node.text)])), "constraint")


def _word() -> Node:
    return ("set", category("word"))


def _non_word() -> Node:
    return ("set", negate(category("word")))


def keyword_ir(keyword: Keyword) -> Node:
    """Search IR (read between BOS and EOS, like a `pattern`) of "some form of the keyword occurs"."""
    forms = [_form_ir(form, keyword.case == "any") for form in keyword.forms()]
    around = rep(("set", (*ANY, (BOS, EOS))), 0, None)
    before = alt([("set", ((BOS, BOS),)), _non_word()])
    after = alt([("set", ((EOS, EOS),)), _non_word()])
    return seq([around, before, alt(forms), after, around])


def _form_ir(form: object, casefolded: bool) -> Node:
    items = [_word_ir(form.words[0], casefolded)]
    for gap, word in zip(form.gaps, form.words[1:]):
        items += [_gap_ir(gap), _word_ir(word, casefolded)]
    return seq(items)


def _gap_ir(gap: str) -> Node:
    """A normalised gap: each space stands for a run of whitespace, other characters for themselves."""
    space = ("set", category("space"))
    return seq([rep(space, 1, None) if ch == " " else literal(ch) for ch in gap])


def _word_ir(word: str, casefolded: bool) -> Node:
    """`word` as written, or (casefolded) any run of word characters whose casefolds concatenate to it."""
    if not casefolded:
        return literal(word)
    spelled_by = casefold_sources()
    lengths = sorted({len(k) for k in spelled_by})
    memo: dict[int, Node | None] = {len(word): EMPTY}
    branches = [0]

    def rest(i: int) -> Node | None:  # IR of word[i:], None where nothing spells it
        if i not in memo:
            options = []
            for n in lengths:
                chars = spelled_by.get(word[i : i + n]) if i + n <= len(word) else None
                tail = rest(i + n) if chars else None
                if chars and tail is not None:
                    options.append(seq([char_set([(c, c) for c in chars]), tail]))
            branches[0] += max(0, len(options) - 1)
            if branches[0] > MAX_CASEFOLD_BRANCHES:
                raise _NoFold
            memo[i] = alt(options) if options else None
        return memo[i]

    found = rest(0)
    return found if found is not None else ("set", ())  # no word spells it: the form never occurs


@cache
def casefold_sources() -> dict[str, tuple[int, ...]]:
    """casefold text -> the word characters whose casefold it is (computed once, ~0.3 s)."""
    out: dict[str, list[int]] = defaultdict(list)
    for cp in range(0x110000):
        ch = chr(cp)
        if ch.isalnum() or ch == "_":
            out[ch.casefold()].append(cp)
    return {k: tuple(v) for k, v in out.items()}


def word_count_ir(lo: int, hi: int | None) -> Node:
    """The whole text has lo..hi (None: no upper bound) maximal runs of word characters."""
    gaps = rep(_non_word(), 0, None)
    if hi == 0:
        return gaps
    word, sep = rep(_word(), 1, None), rep(_non_word(), 1, None)
    some = seq([gaps, word, rep(seq([sep, word]), max(lo, 1) - 1, None if hi is None else hi - 1), gaps])
    return alt([gaps, some]) if lo == 0 else some


# ------------------------------------------------------------------------------------------- product


def product(dfas: list[CharDFA], k: int) -> CharDFA:
    """The minimal DFA of "at least k of `dfas` accept" (k = len: all; k = 1: any), explored breadth-first over
    the distinct column tuples of the components. States where the outcome is settled (too many components
    dead / enough universal) collapse into one sink / one universal state."""
    if len(dfas) == 1 and k == 1:
        return dfas[0]
    starts = np.unique(np.concatenate([d.starts for d in dfas]))
    cols = np.stack([d.columns(starts) for d in dfas], axis=1)  # (atoms, parts)
    letters, letter_of = np.unique(cols, axis=0, return_inverse=True)  # (U, parts)
    sizes = np.array([d.num_states for d in dfas], np.int64)
    if float(np.prod(sizes.astype(np.float64))) >= 2.0**62:
        raise _NoFold
    mult = np.concatenate([[1], np.cumprod(sizes)[:-1]]).astype(np.int64)
    dead = np.zeros((len(dfas), int(sizes.max())), bool)
    universal = np.zeros_like(dead)
    accept = np.zeros_like(dead)
    for i, d in enumerate(dfas):
        dead[i, list(d.dead)] = True
        universal[i, list(d.universal)] = True
        accept[i, : d.num_states] = d.accept
    sink, top = -1, -2
    parts = np.arange(len(dfas))

    def settle(states: np.ndarray) -> np.ndarray:  # (..., parts) -> codes, settled ones -> sink / top
        codes = (states * mult).sum(axis=-1)
        n_dead = dead[parts, states].sum(axis=-1)
        n_top = universal[parts, states].sum(axis=-1)
        return np.where(len(dfas) - n_dead < k, sink, np.where(n_top >= k, top, codes))

    init = np.array([[d.initial for d in dfas]], np.int64)
    ids = {sink: 0, top: 1}  # explored states from 2 on, in breadth-first order
    code = int(settle(init)[0])
    frontier = init if code >= 0 else np.zeros((0, len(dfas)), np.int64)
    ids.setdefault(code, len(ids))
    tuples, rows = [init[0]] if code >= 0 else [], []
    while len(frontier):
        succ = np.stack([d.trans[frontier[:, i]][:, letters[:, i]] for i, d in enumerate(dfas)], axis=2)
        codes = settle(succ.astype(np.int64))  # (n, U)
        uniq, inverse = np.unique(codes, return_inverse=True)
        new = [c for c in uniq.tolist() if c not in ids]
        for c in new:
            ids[c] = len(ids)
        if len(ids) > FOLD_MAX_STATES:
            raise _NoFold
        rows.append(np.array([ids[c] for c in uniq.tolist()], np.int64)[inverse.reshape(codes.shape)])
        frontier = (np.array(new, np.int64)[:, None] // mult) % sizes if new else frontier[:0]
        tuples.extend(frontier)
    return _assemble(starts, letter_of.reshape(-1), rows, ids[code], tuples, accept, parts, k)


def _assemble(starts, letter_of, rows, initial, tuples, accept, parts, k) -> CharDFA:  # noqa: ANN001
    """The product's table: the sink (0) and the universal state (1), then the explored rows in id order."""
    width = int(letter_of.max()) + 1
    explored = np.concatenate(rows) if rows else np.zeros((0, width), np.int64)
    trans = np.concatenate([np.zeros((1, width), np.int64), np.ones((1, width), np.int64), explored])
    states = np.array(tuples, np.int64).reshape(-1, len(parts))
    acc = np.concatenate([[False, True], accept[parts, states].sum(axis=1) >= k])
    return minimise(starts, letter_of.astype(np.int32), trans, acc, initial)
