"""The text-level checker: does a decoded text satisfy a constraint?

This is the definition the token DFA must agree with (docs/method.md §3). It is deliberately written
independently of the DFA compiler: it splits the whole text into words and gaps with a regex and tests each
node directly, so comparing the two catches mistakes in either. Both share only the keyword forms
(`Keyword.forms`, words.keyword_forms), the part of the semantics that is a dictionary lookup.

With a suffix or stop strings (decoding parameters, `spec.Affixed`), `judge_ids` finds where the generation
ended and what the constraint is judged on, from the decoded text of each prefix of the ids, by string search:
no automaton.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pc_core.constraints.continuation import cut_at_eos, decode_continuation
from pc_core.constraints.nodes import (
    Affixed,
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
    iter_keywords,
    leaves,
)
from pc_core.constraints.patterns import CHAR_NODES
from pc_core.constraints.patterns import holds as pattern_holds
from pc_core.constraints.spec import parse_constraint, split_affixes
from pc_core.constraints.words import WORD_RE, normalise_gap

__all__ = [
    "Judgement",
    "check_ids",
    "check_text",
    "cut_at_eos",
    "decode_continuation",
    "judge_ids",
    "judge_text",
    "keyword_matches",
    "keyword_spans",
]


class Words:
    """A text as words and the normalised gaps between consecutive words."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.spans = [m.span() for m in WORD_RE.finditer(text)]
        self.words = [text[a:b] for a, b in self.spans]
        self.gaps = [
            normalise_gap(text[self.spans[i][1] : self.spans[i + 1][0]]) for i in range(len(self) - 1)
        ]

    def __len__(self) -> int:
        return len(self.spans)


def check_text(
    constraint: Constraint | dict | str,
    text: str,
    token_ids: Sequence[int] | None = None,
    *,
    suffix: str | None = None,
    stop: Sequence[str] = (),
) -> bool:
    """True when `text` satisfies the constraint. `token_ids` (cut at EOS) are needed only for `tokens`.

    With a `suffix` or `stop` strings (or an `Affixed` constraint), `text` is everything generated up to where
    the generation ended, and the answer is `judge_text(...).satisfied`."""
    body, suffix, stop = _affixes(constraint, suffix, stop)
    if suffix is None and not stop:
        return _holds(body, Words(text), list(token_ids) if token_ids is not None else None)
    return judge_text(body, text, suffix=suffix, stop=stop).satisfied


def check_ids(
    constraint: Constraint | dict | str,
    tokenizer: Any,
    token_ids: Sequence[int],
    *,
    suffix: str | None = None,
    stop: Sequence[str] = (),
) -> bool:
    """Whether generating `token_ids` satisfies the constraint (cut at EOS; with a suffix or stop strings, at
    the token where the generation ended, see `judge_ids`)."""
    body, suffix, stop = _affixes(constraint, suffix, stop)
    if suffix is None and not stop:
        ids = cut_at_eos(tokenizer, token_ids)
        return check_text(body, decode_continuation(tokenizer, ids), ids)
    return judge_ids(body, tokenizer, token_ids, suffix=suffix, stop=stop).satisfied


def _affixes(
    constraint: Constraint | dict | str, suffix: str | None, stop: Sequence[str] | str
) -> tuple[Constraint, str | None, tuple[str, ...]]:
    body, own_suffix, own_stop = split_affixes(constraint)
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    return body, suffix if suffix is not None else own_suffix, tuple(stop) + own_stop


@dataclass(frozen=True)
class Judgement:
    """How a generation ended and what its constraint was judged on.

    reason: "eos" (the EOS token), "stop" (a stop string), "suffix" (the suffix was completed), "length" (no
    end within the ids given, e.g. the horizon); `end` is the index of the token that ended it (len(ids) for
    "length", and None from judge_text). `text` is the span: the text before the stop string, before the
    suffix, or all of it; `full_text` adds the suffix when it was completed."""

    satisfied: bool
    reason: str
    text: str
    full_text: str
    end: int | None = None


def judge_text(
    constraint: Constraint | dict | str, text: str, *, suffix: str | None = None, stop: Sequence[str] = ()
) -> Judgement:
    """Judge a generated text (everything up to where the generation ended, EOS excluded; docs/method.md §3):

    * the generation ended at the first point of the text where a stop string or the suffix is complete
      (stop strings first). Only occurrences of the suffix that follow a text satisfying the constraint count:
      the span is the text before the first such occurrence;
    * a stop string: the span is the text before it (the longest stop string ending there, when several
      do); satisfied iff there is no suffix and the constraint holds on the span;
    * the suffix: satisfied iff the text ends right after it (nothing was generated beyond);
    * neither (EOS or the horizon): satisfied iff there is no suffix and the constraint holds on the text."""
    body, suffix, stop = _affixes(constraint, suffix, stop)
    end, cut = first_stop(text, stop)
    if suffix is not None:
        start = text.find(suffix)
        while start >= 0 and start + len(suffix) < end:
            if _holds(body, Words(text[:start]), None):
                done = start + len(suffix)
                return Judgement(done == len(text), "suffix", text[:start], text[:done])
            start = text.find(suffix, start + 1)
    if cut is not None:
        return Judgement(
            suffix is None and _holds(body, Words(text[:cut]), None), "stop", text[:cut], text[:cut]
        )
    ok = suffix is None and _holds(body, Words(text), None)
    return Judgement(ok, "eos", text, text)


def first_stop(text: str, stop: Sequence[str]) -> tuple[float, int | None]:
    """(end, start) of the stop-string occurrence that ends first in `text` (the longest among those ending
    there), or (inf, None)."""
    best: tuple[float, int | None] = (float("inf"), None)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            candidate = (i + len(s), i)
            if candidate[0] < best[0] or (candidate[0] == best[0] and i < best[1]):
                best = candidate
    return best


def judge_ids(
    constraint: Constraint | dict | str,
    tokenizer: Any,
    token_ids: Sequence[int],
    *,
    suffix: str | None = None,
    stop: Sequence[str] = (),
) -> Judgement:
    """Judge generated ids: the generation ends at the first token after which the decoded text holds a
    complete stop string or a counted occurrence of the suffix (`judge_text`), or at EOS; the tokens after
    that are ignored. A suffix completed inside a token (the token writes past it) is not satisfied. The
    decoded text of each prefix of the ids is found with the tokenizer (decode_continuation)."""
    body, suffix, stop = _affixes(constraint, suffix, stop)
    ids = [int(t) for t in token_ids]
    eos = tokenizer.eos_token_id
    limit = ids.index(eos) if eos is not None and eos in ids else len(ids)
    text = decode_continuation(tokenizer, ids[:limit])
    found = judge_text(body, text, suffix=suffix, stop=stop)
    if found.reason in ("stop", "suffix"):
        # the first token whose text reaches the end of the stop string / suffix ended the generation
        done = len(found.full_text) if found.reason == "suffix" else first_stop(text, stop)[0]
        for k in range(limit):
            so_far = decode_continuation(tokenizer, ids[: k + 1])
            if len(so_far) >= done and so_far[:done] == text[:done]:
                if found.reason == "suffix":
                    found = judge_text(body, so_far, suffix=suffix, stop=stop)
                return Judgement(found.satisfied, found.reason, found.text, found.full_text, k)
    if found.reason == "eos" and limit == len(ids):
        return Judgement(found.satisfied, "length", found.text, found.full_text, len(ids))
    return Judgement(found.satisfied, found.reason, found.text, found.full_text, limit)


def keyword_spans(keyword: Keyword, text: Words) -> list[tuple[int, int]]:
    """(start, end) word-index spans where a form of `keyword` occurs, sorted by end then start: the words
    equal under the keyword's case mode and the gaps between them equal after whitespace normalisation."""
    words = [w.casefold() for w in text.words] if keyword.case == "any" else text.words
    spans = set()
    for form in keyword.forms():
        n = len(form.words)
        for start in range(len(words) - n + 1):
            if (
                tuple(words[start : start + n]) == form.words
                and tuple(text.gaps[start : start + n - 1]) == form.gaps
            ):
                spans.add((start, start + n))
    return sorted(spans, key=lambda s: (s[1], s[0]))


def word_index(index: int, n_words: int) -> int | None:
    """The 0-based position of `word_at`'s word (1-based, or from the end when negative) in a text of
    `n_words` words, or None when the text is too short."""
    position = index - 1 if index > 0 else n_words + index
    return position if 0 <= position < n_words else None


def disjoint_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The most pairwise non-overlapping spans, taken greedily by earliest end (spans sorted by end, as
    keyword_spans gives them): the classic interval-scheduling optimum."""
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if not out or start >= out[-1][1]:
            out.append((start, end))
    return out


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
        start = word_index(node.index, len(words))
        return start is not None and any(s[0] == start for s in keyword_spans(node.word, words))
    if isinstance(node, Count):
        found = len(disjoint_spans(keyword_spans(node.keyword, words)))
        return node.min <= found and (node.max is None or found <= node.max)
    if isinstance(node, AtLeast):
        return sum(_holds(c, words, ids) for c in node.children) >= node.k
    if isinstance(node, AtMost):
        return sum(_holds(c, words, ids) for c in node.children) <= node.k
    if isinstance(node, WordCount):
        return node.min <= len(words) and (node.max is None or len(words) <= node.max)
    if isinstance(node, CHAR_NODES):  # regex / pattern / choice / JSON: re, json and jsonschema
        return pattern_holds(node, words.text)
    if isinstance(node, EndsWith):
        return words.text.endswith(node.text)
    if isinstance(node, Affixed):
        raise ValueError("an Affixed constraint is judged by judge_text / judge_ids")
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
            start = word_index(node.index, len(words))
            if start is not None and any(s[0] == start for s in keyword_spans(node.word, words)):
                a, b = positions[start]
                out.append({"keyword": node.word.text, "start": a, "end": b})
            continue
        for keyword in iter_keywords(node):
            for start, end in keyword_spans(keyword, words):
                out.append(
                    {"keyword": keyword.text, "start": positions[start][0], "end": positions[end - 1][1]}
                )
    return sorted({(m["start"], m["end"], m["keyword"]): m for m in out}.values(), key=lambda m: m["start"])
