"""The constraint tree: one immutable node type per kind of the constraint language, each with its JSON
(`to_json`, which parses back), and the walks over a tree that the compiler, the checker and the service
share. Parsing JSON into these nodes: spec.py (the nodes are imported from here). Semantics: docs/method.md §3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from pc_core.constraints.patterns import CHAR_NODES
from pc_core.constraints.words import Form, keyword_forms


@dataclass(frozen=True)
class Keyword:
    """A word or phrase; satisfied when any of its forms (`forms()`) occurs in the text."""

    text: str
    inflections: bool = True
    case: str = "natural"  # natural | sensitive | any
    variants: tuple[str, ...] = ()
    pos: str | None = None  # restricts inflections to a part of speech: noun | verb | adj

    def forms(self) -> tuple[Form, ...]:
        """Every phrase that satisfies the keyword (words.keyword_forms)."""
        return keyword_forms(self.text, self.variants, self.inflections, self.case, self.pos)

    def to_json(self) -> dict:
        out = {"keyword": self.text, "inflections": self.inflections, "case": self.case}
        out["variants"] = list(self.variants)
        if self.pos is not None:
            out["pos"] = self.pos
        return out


@dataclass(frozen=True)
class All:
    children: tuple[Constraint, ...]

    def to_json(self) -> dict:
        return {"all": [c.to_json() for c in self.children]}


@dataclass(frozen=True)
class AnyOf:
    children: tuple[Constraint, ...]

    def to_json(self) -> dict:
        return {"any": [c.to_json() for c in self.children]}


@dataclass(frozen=True)
class Not:
    child: Constraint

    def to_json(self) -> dict:
        return {"not": self.child.to_json()}


@dataclass(frozen=True)
class Ordered:
    """Occurrences of the keywords exist in this order, each starting after the previous one ends."""

    items: tuple[Keyword, ...]

    def to_json(self) -> dict:
        return {"ordered": [k.to_json() for k in self.items]}


@dataclass(frozen=True)
class WordAt:
    """The index-th word (1-based; negative counts from the end, -1 is the last word) of the text is `word`
    (a single word, with its variants)."""

    index: int
    word: Keyword

    def to_json(self) -> dict:  # parses back: the word under "word", its options beside it
        word = self.word.to_json()
        return {"word_at": self.index, "word": word.pop("keyword"), **word}


@dataclass(frozen=True)
class WordCount:
    min: int = 0
    max: int | None = None

    def to_json(self) -> dict:
        return {"word_count": {"min": self.min, "max": self.max}}


@dataclass(frozen=True)
class Count:
    """The keyword occurs at least `min` and at most `max` (None: no upper bound) times: whole words, the most
    non-overlapping occurrences (taken greedily, earliest end first)."""

    keyword: Keyword
    min: int = 0
    max: int | None = None

    def to_json(self) -> dict:
        return {"count": self.keyword.to_json(), "min": self.min, "max": self.max}


@dataclass(frozen=True)
class AtLeast:
    """At least k of the children hold."""

    k: int
    children: tuple[Constraint, ...]

    def to_json(self) -> dict:
        return {"at_least": self.k, "of": [c.to_json() for c in self.children]}


@dataclass(frozen=True)
class AtMost:
    """At most k of the children hold."""

    k: int
    children: tuple[Constraint, ...]

    def to_json(self) -> dict:
        return {"at_most": self.k, "of": [c.to_json() for c in self.children]}


@dataclass(frozen=True)
class Tokens:
    """A raw token-id sequence that must appear contiguously in the generated ids (power users)."""

    ids: tuple[int, ...]

    def to_json(self) -> dict:
        return {"tokens": list(self.ids)}


@dataclass(frozen=True)
class EndsWith:
    """The text ends with this string (compared as written, character by character)."""

    text: str

    def to_json(self) -> dict:
        return {"ends_with": self.text}


@dataclass(frozen=True)
class Affixed:
    """Not part of the constraint language: `body` judged on the generated span, where the generation must
    continue into `suffix` (if any) and ends at the first occurrence of a `stop` string (docs/method.md §3).
    Built by `with_affixes` from the decoding parameters; only ever at the top of a tree."""

    body: Constraint
    suffix: str | None = None
    stop: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "affixed": {"constraint": self.body.to_json(), "suffix": self.suffix, "stop": list(self.stop)}
        }


Constraint = (
    Keyword | All | AnyOf | Not | Ordered | WordAt | WordCount | Count | AtLeast | AtMost | Tokens | EndsWith
)
NODE_TYPES = (*Constraint.__args__, *CHAR_NODES, Affixed)  # regex / choice / JSON: patterns.py


def canonical_json(constraint: Constraint) -> str:
    return json.dumps(constraint.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def walk(node: Constraint) -> Iterator[Constraint]:
    """Every node of the tree, parents before children."""
    yield node
    for child in getattr(node, "children", ()):
        yield from walk(child)
    if isinstance(node, Not):
        yield from walk(node.child)
    if isinstance(node, Affixed):
        yield from walk(node.body)


def iter_keywords(constraint: Constraint) -> list[Keyword]:
    """Every keyword in the tree (including `word_at` words), in order."""
    if isinstance(constraint, Keyword):
        return [constraint]
    if isinstance(constraint, (All, AnyOf, AtLeast, AtMost)):
        return [k for c in constraint.children for k in iter_keywords(c)]
    if isinstance(constraint, Not):
        return iter_keywords(constraint.child)
    if isinstance(constraint, Ordered):
        return list(constraint.items)
    if isinstance(constraint, WordAt):
        return [constraint.word]
    if isinstance(constraint, Count):
        return [constraint.keyword]
    if isinstance(constraint, Affixed):
        return iter_keywords(constraint.body)
    return []


def leaves(constraint: Constraint, negated: bool = False) -> Iterator[tuple[Constraint, bool]]:
    """Every node below the all / any / not / at_least / at_most structure, with whether it counts against
    the constraint: under an odd number of `not`s, where `at_most 0` and `count ... max 0` count as a `not`."""
    if isinstance(constraint, Not):
        yield from leaves(constraint.child, not negated)
    elif isinstance(constraint, Affixed):
        yield from leaves(constraint.body, negated)
    elif isinstance(constraint, (All, AnyOf, AtLeast, AtMost)):
        flip = isinstance(constraint, AtMost) and constraint.k == 0
        for child in constraint.children:
            yield from leaves(child, negated != flip)
    elif isinstance(constraint, Count):
        yield constraint, negated != (constraint.max == 0)
    else:
        yield constraint, negated


def keywords_by_polarity(constraint: Constraint) -> tuple[list[Keyword], list[Keyword]]:
    """(keywords that must occur somewhere for the constraint to hold, keywords under an odd number of `not`s:
    those that must not), each in order."""
    required: list[Keyword] = []
    forbidden: list[Keyword] = []
    for node, negated in leaves(constraint):
        (forbidden if negated else required).extend(iter_keywords(node))
    return required, forbidden


def expanded_forms(constraint: Constraint, limit: int | None = None) -> list[dict]:
    """What each keyword accepts, for people: [{"keyword", "case", "polarity", "forms"}] (forms as text, "any"
    forms casefolded), one entry per distinct keyword setting, required ones first; at most `limit` entries
    (a 10,000-word blocklist is not worth echoing back)."""
    required, forbidden = keywords_by_polarity(constraint)
    out, seen = [], set()
    for polarity, keywords in (("required", required), ("forbidden", forbidden)):
        for keyword in keywords:
            if (polarity, keyword) in seen:
                continue
            if limit is not None and len(out) >= limit:
                return out
            seen.add((polarity, keyword))
            forms = sorted({form.text for form in keyword.forms()})
            out.append({"keyword": keyword.text, "case": keyword.case, "polarity": polarity, "forms": forms})
    return out
