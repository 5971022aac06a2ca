"""The matcher tree of a constraint: one matcher per node, built from the word and counting matchers
(matchers.py, counting.py) and the character automata's matcher (char_tokens.py), which all build on
matchers.py's classes; this module sits above them so that none of them imports another's dispatch."""

from __future__ import annotations

from collections.abc import Callable

from pc_core.constraints import counting
from pc_core.constraints.char_tokens import CharMatcher
from pc_core.constraints.matchers import (
    AllMatcher,
    AnyMatcher,
    EndsWithMatcher,
    KeywordMatcher,
    Matcher,
    NotMatcher,
    OrderedMatcher,
    TokensMatcher,
    WordCountMatcher,
    WordSyms,
)
from pc_core.constraints.nodes import (
    All,
    AnyOf,
    AtLeast,
    AtMost,
    Constraint,
    Count,
    EndsWith,
    Keyword,
    Not,
    Ordered,
    Tokens,
    WordAt,
    WordCount,
)
from pc_core.constraints.patterns import CHAR_NODES, char_automaton
from pc_core.constraints.words import Form


def build_matcher(
    node: Constraint, syms_for: Callable[[str, bool], WordSyms], gap_sym: Callable[[str], int]
) -> Matcher:
    """`syms_for(word, casefolded)` gives the symbol ids that count as `word`; `gap_sym(gap)` the id of a
    normalised gap the constraint's phrases mention. The counting operators' matchers are in counting.py."""

    def items(form: Form, casefolded: bool) -> list[WordSyms | int]:
        out: list[WordSyms | int] = [syms_for(form.words[0], casefolded)]
        for gap, word in zip(form.gaps, form.words[1:]):
            out += [gap_sym(gap), syms_for(word, casefolded)]
        return out

    def keyword(kw: Keyword) -> KeywordMatcher:
        casefolded = kw.case == "any"
        forms = kw.forms()
        single = frozenset().union(*(syms_for(f.words[0], casefolded) for f in forms if len(f.words) == 1))
        phrases = [items(f, casefolded) for f in forms if len(f.words) > 1]
        return KeywordMatcher(([[single]] if single else []) + phrases)

    def word_syms(word: Keyword) -> WordSyms:
        casefolded = word.case == "any"
        return frozenset().union(*(syms_for(f.words[0], casefolded) for f in word.forms()))

    def build(node: Constraint) -> Matcher:
        if isinstance(node, Keyword):
            return keyword(node)
        if isinstance(node, All):
            return AllMatcher([build(c) for c in node.children])
        if isinstance(node, AnyOf):
            return AnyMatcher(counting.any_children(node.children, build, word_syms))
        if isinstance(node, Not):
            return NotMatcher(build(node.child))
        if isinstance(node, Ordered):
            return OrderedMatcher([keyword(k) for k in node.items])
        if isinstance(node, WordAt):
            return counting.word_at_matcher(node.index, word_syms(node.word))
        if isinstance(node, Count):
            return counting.CountMatcher(keyword(node.keyword), node.min, node.max)
        if isinstance(node, (AtLeast, AtMost)):
            return counting.KOfMatcher([build(c) for c in node.children], node.k, isinstance(node, AtLeast))
        if isinstance(node, WordCount):
            return WordCountMatcher(node.min, node.max)
        if isinstance(node, Tokens):
            return TokensMatcher(node.ids)
        if isinstance(node, EndsWith):
            return EndsWithMatcher(node.text)
        if isinstance(node, CHAR_NODES):  # fed each token's text (char_tokens.py)
            return CharMatcher(char_automaton(node))
        raise TypeError(f"unknown constraint node {node!r}")

    return build(node)
