"""Word-level automata for each constraint node (docs/method.md §4).

The tracker (tracker.py) turns the text into a stream of events: every finished word becomes the id of its
class among the words the constraint mentions (0 = any other word), and, when the constraint has phrases,
every word is preceded by the id of the gap before it among the gaps those phrases mention (0 = any other
gap). A matcher consumes that stream plus, for `tokens` constraints, the raw token ids, and, for `ends_with`,
the text itself (`text`: each token's text, in order).

States are small hashable values (ints, tuples, frozensets) so the compiler can intern them. A sub-constraint
whose outcome can no longer change collapses to `YES` / `NO` at every level (a seen forbidden word is false
forever, one matched `any` branch is true forever), so `forbidden` and `any` grow linearly in their words
and only `all` of independent keywords keeps its inherent 2^k growth.
"""

from __future__ import annotations

State = object
# Decided outcomes. Not True/False: 1 == True would make an int state collide with them in a tuple key.
YES = "yes"
NO = "no"
DECIDED = (YES, NO)
# A word pattern is the set of word-symbol ids that count as that word.
WordSyms = frozenset[int]


class Matcher:
    def init(self) -> State:
        raise NotImplementedError

    def word(self, state: State, sym: int) -> State:
        return state

    def gap(self, state: State, sym: int) -> State:
        return state

    def token(self, state: State, token_id: int) -> State:
        return state

    def text(self, state: State, text: str) -> State:
        return state

    def accept(self, state: State) -> bool:
        raise NotImplementedError


class KeywordMatcher(Matcher):
    """Any form occurs: its words in order with its gaps between them. A form is a list of items, word
    patterns at even positions and gap symbols at odd ones. State: frozenset of (form, items matched), or
    YES."""

    def __init__(self, forms: list[list[WordSyms | int]]) -> None:
        self.forms = forms
        self.any_word: WordSyms = frozenset().union(*(w for items in forms for w in items[::2]))

    def init(self) -> State:
        return frozenset()

    def word(self, state: State, sym: int) -> State:
        if state is YES:
            return YES
        if sym not in self.any_word:  # a word of none of the forms: no form progresses (most words)
            return frozenset()
        progress = set()
        for f, done in (*state, *((f, 0) for f in range(len(self.forms)))):
            items = self.forms[f]
            if done % 2 == 0 and sym in items[done]:
                if done + 1 == len(items):
                    return YES
                progress.add((f, done + 1))
        return frozenset(progress)

    def gap(self, state: State, sym: int) -> State:
        if state is YES or not state:
            return state
        return frozenset((f, done + 1) for f, done in state if self.forms[f][done] == sym)

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

    def gap(self, state: State, sym: int) -> State:
        if state is YES:
            return YES
        index, sub = state
        return (index, self.items[index].gap(sub, sym))

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
        if state in DECIDED:
            return state
        if state + 1 == self.index:
            return YES if sym in self.syms else NO
        return state + 1

    def accept(self, state: State) -> bool:
        return state is YES


class WordCountMatcher(Matcher):
    """Words counted up to min (no max: then YES for good) or up to max + 1 (then NO for good)."""

    def __init__(self, lo: int, hi: int | None) -> None:
        self.lo = lo
        self.hi = hi

    def init(self) -> State:
        return self._decide(0)

    def _decide(self, count: int) -> State:
        if self.hi is None and count >= self.lo:
            return YES
        if self.hi is not None and count > self.hi:
            return NO
        return count

    def word(self, state: State, sym: int) -> State:
        return state if state in DECIDED else self._decide(state + 1)

    def accept(self, state: State) -> bool:
        if state in DECIDED:
            return state is YES
        return self.lo <= state


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


class EndsWithMatcher(Matcher):
    """The text ends with `pattern`. State: the length of the longest suffix of the text that is a prefix of
    the pattern (KMP); never decided (more text can always follow)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.fail = kmp_failure(pattern)

    def init(self) -> State:
        return 0

    def text(self, state: State, text: str) -> State:
        return kmp_run(self.pattern, self.fail, state, text)

    def accept(self, state: State) -> bool:
        return state == len(self.pattern)


def kmp_failure(pattern: str) -> list[int]:
    """fail[k]: the length of the longest proper border of pattern[:k] (k = 0..len)."""
    fail = [0] * (len(pattern) + 1)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i + 1] = k
    return fail


def kmp_run(pattern: str, fail: list[int], state: int, text: str) -> int:
    """The longest suffix of (pattern[:state] + text) that is a prefix of `pattern` (a full match included)."""
    k = state
    for ch in text:
        if k == len(pattern):
            k = fail[k]
        while k and pattern[k] != ch:
            k = fail[k]
        if pattern[k] == ch:
            k += 1
    return k


class AllMatcher(Matcher):
    """Conjunction; NO as soon as a child is NO, YES once every child is YES."""

    decisive, neutral = NO, YES  # the child outcome that decides the node, and the one that drops out

    def __init__(self, children: list[Matcher]) -> None:
        self.children = children

    def _combine(self, states: tuple) -> State:
        if self.decisive in states:
            return self.decisive
        if all(s is self.neutral for s in states):
            return self.neutral
        return states

    def init(self) -> State:
        return self._combine(tuple(c.init() for c in self.children))

    def word(self, state: State, sym: int) -> State:
        if state in DECIDED:
            return state
        return self._combine(tuple(c.word(s, sym) for c, s in zip(self.children, state)))

    def gap(self, state: State, sym: int) -> State:
        if state in DECIDED:
            return state
        return self._combine(tuple(c.gap(s, sym) for c, s in zip(self.children, state)))

    def token(self, state: State, token_id: int) -> State:
        if state in DECIDED:
            return state
        return self._combine(tuple(c.token(s, token_id) for c, s in zip(self.children, state)))

    def text(self, state: State, text: str) -> State:
        if state in DECIDED:
            return state
        return self._combine(tuple(c.text(s, text) for c, s in zip(self.children, state)))

    def accept(self, state: State) -> bool:
        if state in DECIDED:
            return state is YES
        return all(c.accept(s) for c, s in zip(self.children, state))


class AnyMatcher(AllMatcher):
    """Disjunction; YES as soon as a child is YES, NO once every child is NO."""

    decisive, neutral = YES, NO

    def accept(self, state: State) -> bool:
        if state in DECIDED:
            return state is YES
        return any(c.accept(s) for c, s in zip(self.children, state))


class NotMatcher(Matcher):
    """Negation: the child's state with YES and NO exchanged (so a decided child stays decided)."""

    def __init__(self, child: Matcher) -> None:
        self.child = child

    @staticmethod
    def _flip(state: State) -> State:
        return NO if state is YES else YES if state is NO else state

    def init(self) -> State:
        return self._flip(self.child.init())

    def word(self, state: State, sym: int) -> State:
        return state if state in DECIDED else self._flip(self.child.word(state, sym))

    def gap(self, state: State, sym: int) -> State:
        return state if state in DECIDED else self._flip(self.child.gap(state, sym))

    def token(self, state: State, token_id: int) -> State:
        return state if state in DECIDED else self._flip(self.child.token(state, token_id))

    def text(self, state: State, text: str) -> State:
        return state if state in DECIDED else self._flip(self.child.text(state, text))

    def accept(self, state: State) -> bool:
        if state in DECIDED:
            return state is YES
        return not self.child.accept(state)
