"""A lower bound on the states of a constraint's minimal automaton, read off its tree (docs/method.md §5.10):
compile_constraint(lazy=True) skips the explicit attempt, and goes lazy at once, when the bound is above the
attempt's cap (the attempt would fail; it would have explored up to 4 x the cap first).

Counting parts over pairwise disjoint single words (whole words, every inflected form compared casefolded):

  keyword k              found or not                                          2 classes
  count(k, lo, hi)       k seen 0 .. hi times (hi None: 0 .. lo)               hi + 1
  any of counts of one k seen 0 .. the largest max times                      max + 1
  at_least(m, keywords)  the sets of j keywords found, for j <= min(m - 1, n - m + 1)   C(n, j)

Two prefixes that leave a part in different classes are told apart by a suffix that completes the others and
writes the part's word d more times (d in one class's remaining counts and not the other's; for at_least: a
keyword one set has and the other lacks, then fresh keywords up to m), so the classes of disjoint parts
multiply: a conjunction of such parts has at least the product of its parts' classes. A word_count(lo, hi)
beside them keeps the bound when hi is None or at least the words every such suffix needs (the parts' largest
counts, summed; fillers reach lo). "The k-th last word is one of these words" (an `any` of `word_at -k`, alone):
2^k, which of the last k words are among them (two texts that differ at the i-th last word are told apart by
k - i further words that are not). Any other node, a part sharing a word with another, a phrase, or a suffix
/ stop strings: no bound (1). As compile_constraint's own 2^k check (explicit.py), it assumes every keyword
can be written in tokens; where one cannot, the language is empty and the lazy search refuses the request as
unsatisfiable (that keyword's leaf never accepts: lazy_feasibility.py), where the explicit automaton would
have named the keyword.
"""

from __future__ import annotations

import math

from pc_core.constraints.nodes import All, AnyOf, AtLeast, Constraint, Count, Keyword, WordAt, WordCount

NO_BOUND = 1


def minimal_states_at_least(constraint: Constraint) -> int:
    """A lower bound on the minimal token automaton's states (module docstring); 1 when none is known."""
    from_end = _kth_last(constraint)
    if from_end is not None:
        return from_end
    parts = list(_conjuncts(constraint))
    counts = [p for p in parts if not isinstance(p, WordCount)]
    ranges = [p for p in parts if isinstance(p, WordCount)]
    if not counts or len(ranges) > 1:
        return NO_BOUND
    seen: set[str] = set()
    bound, words_needed = 1, 0
    for part in counts:
        found = _part(part, seen)
        if found is None:
            return NO_BOUND
        classes, needed = found
        bound, words_needed = bound * classes, words_needed + needed
    if ranges and ranges[0].max is not None and ranges[0].max < words_needed:
        return NO_BOUND
    return bound


def _kth_last(node: Constraint) -> int | None:
    """2^k for an `any` of `word_at -k` (one k) over single words; None for anything else."""
    if (
        not isinstance(node, AnyOf)
        or not node.children
        or not all(isinstance(c, WordAt) for c in node.children)
    ):
        return None
    indices = {c.index for c in node.children}
    if (
        len(indices) != 1
        or min(indices) >= 0
        or not _claim([c.word for c in node.children], set(), shared=True)
    ):
        return None
    return 2 ** min(-min(indices), 62)


def _conjuncts(node: Constraint) -> list[Constraint]:
    if isinstance(node, All):
        return [part for child in node.children for part in _conjuncts(child)]
    return [node]


def _part(node: Constraint, seen: set[str]) -> tuple[int, int] | None:
    """(classes, words its distinguishing suffixes need at most) of one counting part, its words added to
    `seen`; None when it is not one or shares a word with an earlier part."""
    if isinstance(node, Keyword):
        return (2, 1) if _claim([node], seen) else None
    if isinstance(node, Count):
        top = node.max if node.max is not None else node.min
        return (top + 1, top) if _claim([node.keyword], seen) else None
    if isinstance(node, AnyOf) and node.children and all(isinstance(c, Count) for c in node.children):
        keyword = node.children[0].keyword
        if any(c.keyword != keyword or c.max is None for c in node.children):
            return None
        top = max(c.max for c in node.children)
        return (top + 1, top) if _claim([keyword], seen) else None
    if isinstance(node, AtLeast) and node.children and all(isinstance(c, Keyword) for c in node.children):
        n, m = len(node.children), node.k
        if not 1 <= m <= n or not _claim(list(node.children), seen):
            return None
        j = min(m - 1, n - m + 1)
        return math.comb(n, j), m
    return None


def _claim(keywords: list[Keyword], seen: set[str], shared: bool = False) -> bool:
    """Are the keywords single words, disjoint from each other (unless `shared`) and from `seen`? (Then they
    join `seen`.)"""
    mine: set[str] = set()
    for keyword in keywords:
        words = set()
        for form in keyword.forms():
            if len(form.words) != 1:
                return False
            words.add(form.words[0].casefold())
        if not shared and not words.isdisjoint(mine):
            return False
        mine |= words
    if not mine.isdisjoint(seen):
        return False
    seen |= mine
    return True
