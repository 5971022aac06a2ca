"""Word-level automata of the counting operators (docs/method.md §3, §4): `count`, `at_least` / `at_most`
and `word_at` counted from the end. They consume the same event stream as the matchers in matchers.py (which
builds them in `matcher_tree.build_matcher`) and follow the same rules: small hashable states, YES / NO once decided.

Sizes, before the compiler's minimisation: `count` keeps the occurrences so far (up to max + 1, or up to min
without a max) beside its keyword's partial match; `at_least` / `at_most` the tuple of their children's
states; `word_at -k` the match bits of the last k words, 2^k states, which is inherent: the minimal DFA of
"the k-th last word is w" needs them all (the textbook exponential NFA-to-DFA case).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pc_core.constraints.matchers import (
    DECIDED,
    NO,
    YES,
    AllMatcher,
    KeywordMatcher,
    Matcher,
    State,
    WordAtMatcher,
    WordSyms,
)
from pc_core.constraints.nodes import Constraint, Keyword, WordAt


class CountMatcher(Matcher):
    """The keyword occurs between `lo` and `hi` (None: no bound) times, counting the most non-overlapping
    occurrences: greedily by earliest end, as the checker's `disjoint_spans`. After an occurrence the keyword's
    matcher restarts, so the next one starts after it ends (as in OrderedMatcher). State: (occurrences,
    keyword state); NO once over `hi` (for good), YES once `lo` is reached when there is no `hi`."""

    def __init__(self, keyword: KeywordMatcher, lo: int, hi: int | None) -> None:
        self.keyword = keyword
        self.lo = lo
        self.hi = hi

    def _decide(self, count: int, sub: State) -> State:
        if self.hi is not None and count > self.hi:
            return NO
        if self.hi is None and count >= self.lo:
            return YES
        return (count, sub)

    def init(self) -> State:
        return self._decide(0, self.keyword.init())

    def word(self, state: State, sym: int) -> State:
        if state in DECIDED:
            return state
        count, sub = state
        sub = self.keyword.word(sub, sym)
        if sub is YES:
            count, sub = count + 1, self.keyword.init()
        return self._decide(count, sub)

    def gap(self, state: State, sym: int) -> State:
        if state in DECIDED:
            return state
        count, sub = state
        return (count, self.keyword.gap(sub, sym))

    def accept(self, state: State) -> bool:
        if state in DECIDED:
            return state is YES
        return state[0] >= self.lo  # not NO, so within hi


class KOfMatcher(AllMatcher):
    """At least (or at most) k of the children hold. State: the children's states, decided as soon as the
    decided children settle it: at_least is YES with k children YES and NO when too few can still hold;
    at_most is NO with k + 1 children YES and YES when at most k can still hold."""

    def __init__(self, children: list[Matcher], k: int, at_least: bool) -> None:
        super().__init__(children)
        self.k = k
        self.at_least = at_least

    def _combine(self, states: tuple) -> State:
        yes = sum(s is YES for s in states)
        possible = yes + sum(s not in DECIDED for s in states)  # children that may still hold
        if self.at_least:
            return YES if yes >= self.k else NO if possible < self.k else states
        return NO if yes > self.k else YES if possible <= self.k else states

    def accept(self, state: State) -> bool:
        if state in DECIDED:
            return state is YES
        held = sum(bool(c.accept(s)) for c, s in zip(self.children, state))
        return held >= self.k if self.at_least else held <= self.k


class WordFromEndMatcher(Matcher):
    """The `distance`-th last word is in `syms` (`word_at -distance`). State: whether each of the last
    `distance` words (fewer at the start) is one of them, oldest first; never decided, since more words can
    always follow."""

    def __init__(self, distance: int, syms: WordSyms) -> None:
        self.distance = distance
        self.syms = syms

    def init(self) -> State:
        return ()

    def word(self, state: State, sym: int) -> State:
        return (*state, sym in self.syms)[-self.distance :]

    def accept(self, state: State) -> bool:
        return len(state) == self.distance and state[0]


def word_at_matcher(index: int, syms: WordSyms) -> Matcher:
    """`word_at index`: from the start (1-based) or, negative, from the end."""
    return WordFromEndMatcher(-index, syms) if index < 0 else WordAtMatcher(index, syms)


def any_children(
    children: Sequence[Constraint],
    build: Callable[[Constraint], Matcher],
    word_syms: Callable[[Keyword], WordSyms],
) -> list[Matcher]:
    """The matchers of an `any`'s children, the `word_at`s of one index merged into one ("the i-th word is
    w1, or it is w2" is "the i-th word is in w1 | w2"). The product of separate ones is not minimal and much
    bigger: "one of n keywords is the k-th last word" keeps which keyword each of the last k words was,
    (n + 1)^k states, where one merged history of k bits (2^k) is all it needs."""
    merged: dict[int, WordSyms] = {}
    out = []
    for child in children:
        if isinstance(child, WordAt):
            merged[child.index] = merged.get(child.index, frozenset()) | word_syms(child.word)
        else:
            out.append(build(child))
    return [word_at_matcher(index, syms) for index, syms in merged.items()] + out
