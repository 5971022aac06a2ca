"""The text-level checker: does a decoded text satisfy a constraint?

This is the definition the token DFA must agree with (docs/method.md §3). It is deliberately written
independently of the DFA compiler: it splits the whole text into words and gaps with a regex and tests each
node directly, so comparing the two catches mistakes in either. Both share only the keyword forms
(words.keyword_forms), the part of the semantics that is a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pc_core.constraints.continuation import cut_at_eos, decode_continuation
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
    iter_keywords,
    leaves,
    parse_constraint,
)
from pc_core.constraints.words import WORD_RE, keyword_forms, normalise_gap

__all__ = ["check_ids", "check_text", "cut_at_eos", "decode_continuation", "keyword_matches", "keyword_spans"]


class Words:
    """A text as words and the normalised gaps between consecutive words."""

    def __init__(self, text: str) -> None:
        self.spans = [m.span() for m in WORD_RE.finditer(text)]
        self.words = [text[a:b] for a, b in self.spans]
        self.gaps = [
            normalise_gap(text[self.spans[i][1] : self.spans[i + 1][0]]) for i in range(len(self) - 1)
        ]

    def __len__(self) -> int:
        return len(self.spans)


def check_text(
    constraint: Constraint | dict | str, text: str, token_ids: Sequence[int] | None = None
) -> bool:
    """True when `text` satisfies the constraint. `token_ids` (cut at EOS) are needed only for `tokens`."""
    node = parse_constraint(constraint)
    return _holds(node, Words(text), list(token_ids) if token_ids is not None else None)


def check_ids(constraint: Constraint | dict | str, tokenizer: Any, token_ids: Sequence[int]) -> bool:
    ids = cut_at_eos(tokenizer, token_ids)
    return check_text(constraint, decode_continuation(tokenizer, ids), ids)


def keyword_spans(keyword: Keyword, text: Words) -> list[tuple[int, int]]:
    """(start, end) word-index spans where a form of `keyword` occurs, sorted by end then start: the words
    equal under the keyword's case mode and the gaps between them equal after whitespace normalisation."""
    words = [w.casefold() for w in text.words] if keyword.case == "any" else text.words
    spans = set()
    for form in keyword_forms(keyword):
        n = len(form.words)
        for start in range(len(words) - n + 1):
            if (
                tuple(words[start : start + n]) == form.words
                and tuple(text.gaps[start : start + n - 1]) == form.gaps
            ):
                spans.add((start, start + n))
    return sorted(spans, key=lambda s: (s[1], s[0]))


def _holds(node: Constraint, words: Words, ids: list[int] | None) -> bool:
    if isinstance(node, Keyword):
        return bool(keyword_spans(node, words))
    if isinstance(node, All):
        return all(_holds(c, words, ids) for c in node.children)
    if isinstance(node, AnyOf):
        return any(_holds(c, words, ids) for c in node.children)
    if isinstance(node, Not):
        return not _holds(node.child, words, ids)
    if isinstance(node, Ordered):
        position = 0  # greedy: the earliest-ending occurrence after the previous one leaves the most room
        for keyword in node.items:
            ends = [end for start, end in keyword_spans(keyword, words) if start >= position]
            if not ends:
                return False
            position = min(ends)
        return True
    if isinstance(node, WordAt):
        if len(words) < node.index:
            return False
        return bool([s for s in keyword_spans(node.word, words) if s[0] == node.index - 1])
    if isinstance(node, WordCount):
        return node.min <= len(words) and (node.max is None or len(words) <= node.max)
    if isinstance(node, Tokens):
        if ids is None:
            raise ValueError("a `tokens` constraint needs the token ids")
        n = len(node.ids)
        return any(tuple(ids[i : i + n]) == node.ids for i in range(len(ids) - n + 1))
    raise TypeError(f"unknown constraint node {node!r}")


def keyword_matches(constraint: Constraint | dict | str, text: str) -> list[dict]:
    """Character spans of the keywords that occur in `text`: [{"keyword", "start", "end"}], for showing users
    why a constraint holds. Keywords under `not` are skipped (they are what must *not* appear)."""
    words = Words(text)
    positions = words.spans
    out = []
    for node, negated in leaves(parse_constraint(constraint)):
        if negated:
            continue
        if isinstance(node, WordAt):
            if len(words) >= node.index and any(
                s[0] == node.index - 1 for s in keyword_spans(node.word, words)
            ):
                a, b = positions[node.index - 1]
                out.append({"keyword": node.word.text, "start": a, "end": b})
            continue
        for keyword in iter_keywords(node):
            for start, end in keyword_spans(keyword, words):
                out.append(
                    {"keyword": keyword.text, "start": positions[start][0], "end": positions[end - 1][1]}
                )
    return sorted({(m["start"], m["end"], m["keyword"]): m for m in out}.values(), key=lambda m: m["start"])
