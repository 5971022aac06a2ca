"""Word-level automata for each constraint node.

The compiler (compiler.py) turns the text into a stream of *word symbols*: every finished word becomes the
id of its class among the words the constraint mentions (0 = any other word). A matcher consumes that
stream plus, for `tokens` constraints, the raw token ids. States are small hashable values (ints, tuples,
frozensets) so the compiler can intern them; absorbing outcomes collapse to `YES`/`NO` to keep the
explored product small.
"""

from __future__ import annotations

from collections.abc import Callable

from pc_core.constraints.spec import (
    All,
    AnyOf,
    Constraint,
    Keyword,
    Not,
    Ordered,
    Tokens,
    WordAt,
    WordCount,
)
from pc_core.constraints.words import keyword_variants

State = object
# Decided outcomes. Not True/False: 1 == True would make an int state collide with them in a tuple key.
YES = "yes"
NO = "no"
# A word pattern is the set of word-symbol ids that count as that word.
WordSyms = frozenset[int]


class Matcher:
    def init(self) -> State:
        raise NotImplementedError

    def word(self, state: State, sym: int) -> State:
        return state

    def token(self, state: State, token_id: int) -> State:
        return state

    def accept(self, state: State) -> bool:
        raise NotImplementedError


class KeywordMatcher(Matcher):
    """Any variant (a word list) occurs contiguously. State: frozenset of (variant, words matched) or YES."""

    def __init__(self, variants: list[list[WordSyms]]) -> None:
        self.variants = variants

    def init(self) -> State:
        return frozenset()

    def word(self, state: State, sym: int) -> State:
        if state is YES:
            return YES
        progress = set()
        for v, done in (*state, *((v, 0) for v in range(len(self.variants)))):
            words = self.variants[v]
            if sym in words[done]:
                if done + 1 == len(words):
                    return YES
                progress.add((v, done + 1))
        return frozenset(progress)

    def accept(self, state: State) -> bool:
        return state is YES


class OrderedMatcher(Matcher):
    """Greedy earliest-ending occurrences in order. State: (index of next keyword, its matcher state)."""

    def __init__(self, items: list[KeywordMatcher]) -> None:
        self.items = items

    def init(self) -> State:
        return (0, self.items[0].init())

    def word(self, state: State, sym: int) -> State:
        if state is YES:
            return YES
        index, sub = state
        sub = self.items[index].word(sub, sym)
        if sub is YES:
            index += 1
            if index == len(self.items):
                return YES
            sub = self.items[index].init()  # the next occurrence starts after this one ends
        return (index, sub)

    def accept(self, state: State) -> bool:
        return state is YES


class WordAtMatcher(Matcher):
    """The index-th word is in `syms`. State: words seen so far, then YES/NO once decided."""

    def __init__(self, index: int, syms: WordSyms) -> None:
        self.index = index
        self.syms = syms

    def init(self) -> State:
        return 0

    def word(self, state: State, sym: int) -> State:
        if state is YES or state is NO:
            return state
        if state + 1 == self.index:
            return YES if sym in self.syms else NO
        return state + 1

    def accept(self, state: State) -> bool:
        return state is YES


class WordCountMatcher(Matcher):
    def __init__(self, lo: int, hi: int | None) -> None:
        self.lo = lo
        self.hi = hi
        self.cap = (hi + 1) if hi is not None else lo  # counts beyond the cap are indistinguishable

    def init(self) -> State:
        return 0

    def word(self, state: State, sym: int) -> State:
        return min(state + 1, self.cap)

    def accept(self, state: State) -> bool:
        return self.lo <= state and (self.hi is None or state <= self.hi)


class TokensMatcher(Matcher):
    """KMP over token ids; the compiler reports ids outside every pattern as -1."""

    def __init__(self, ids: tuple[int, ...]) -> None:
        self.ids = ids
        fail = [0] * (len(ids) + 1)
        k = 0
        for i in range(1, len(ids)):
            while k and ids[i] != ids[k]:
                k = fail[k]
            if ids[i] == ids[k]:
                k += 1
            fail[i + 1] = k
        self.fail = fail

    def init(self) -> State:
        return 0

    def token(self, state: State, token_id: int) -> State:
        if state is YES:
            return YES
        k = state
        while k and self.ids[k] != token_id:
            k = self.fail[k]
        if self.ids[k] == token_id:
            k += 1
        return YES if k == len(self.ids) else k

    def accept(self, state: State) -> bool:
        return state is YES


class AllMatcher(Matcher):
    def __init__(self, children: list[Matcher]) -> None:
        self.children = children

    def init(self) -> State:
        return tuple(c.init() for c in self.children)

    def word(self, state: State, sym: int) -> State:
        return tuple(c.word(s, sym) for c, s in zip(self.children, state))

    def token(self, state: State, token_id: int) -> State:
        return tuple(c.token(s, token_id) for c, s in zip(self.children, state))

    def accept(self, state: State) -> bool:
        return all(c.accept(s) for c, s in zip(self.children, state))


class AnyMatcher(AllMatcher):
    def accept(self, state: State) -> bool:
        return any(c.accept(s) for c, s in zip(self.children, state))


class NotMatcher(Matcher):
    def __init__(self, child: Matcher) -> None:
        self.child = child

    def init(self) -> State:
        return self.child.init()

    def word(self, state: State, sym: int) -> State:
        return self.child.word(state, sym)

    def token(self, state: State, token_id: int) -> State:
        return self.child.token(state, token_id)

    def accept(self, state: State) -> bool:
        return not self.child.accept(state)


def build_matcher(node: Constraint, syms_for: Callable[[str, bool], WordSyms]) -> Matcher:
    """`syms_for(word, case_sensitive)` gives the symbol ids that count as `word`."""

    def keyword(kw: Keyword) -> KeywordMatcher:
        return KeywordMatcher(
            [[syms_for(w, kw.case_sensitive) for w in variant] for variant in keyword_variants(kw)]
        )

    if isinstance(node, Keyword):
        return keyword(node)
    if isinstance(node, All):
        return AllMatcher([build_matcher(c, syms_for) for c in node.children])
    if isinstance(node, AnyOf):
        return AnyMatcher([build_matcher(c, syms_for) for c in node.children])
    if isinstance(node, Not):
        return NotMatcher(build_matcher(node.child, syms_for))
    if isinstance(node, Ordered):
        return OrderedMatcher([keyword(k) for k in node.items])
    if isinstance(node, WordAt):
        syms: set[int] = set()
        for variant in keyword_variants(node.word):
            syms |= syms_for(variant[0], node.word.case_sensitive)
        return WordAtMatcher(node.index, frozenset(syms))
    if isinstance(node, WordCount):
        return WordCountMatcher(node.min, node.max)
    if isinstance(node, Tokens):
        return TokensMatcher(node.ids)
    raise TypeError(f"unknown constraint node {node!r}")
