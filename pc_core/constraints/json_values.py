"""Regex IR pieces for JSON values (used by json_schema.py): strings with their escapes, numbers and their
regular bounds, literals, arbitrary values to a depth, keys outside a set, string formats.

A string's content is written as JSON writes it: raw characters except `"`, `\\` and U+0000-U+001F, which
appear escaped. Where the content has its own constraint (pattern, format, length together with them), that
constraint is a character DFA over the decoded string, embedded in the IR as ("dfa", CharDFA): char_dfa.py
expands it, writing each character that needs an escape the way `json.dumps` does.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

from pc_core.constraints.char_dfa import CharDFA, build_char_dfa, combine
from pc_core.constraints.char_nfa import RAW
from pc_core.constraints.json_syntax import TAIL_LEVELS
from pc_core.constraints.regex import (
    ANY,
    BOS,
    DEEP_MARK,
    EOS,
    Node,
    alt,
    char_set,
    literal,
    normalise,
    opt,
    parse_regex,
    rep,
    seq,
    subtract,
)

DIGIT = char_set([(48, 57)])
DIGIT19 = char_set([(49, 57)])
HEX = char_set([(48, 57), (65, 70), (97, 102)])
ESCAPE = seq(
    [literal("\\"), alt([char_set([(ord(c), ord(c)) for c in '"\\/bfnrt']), seq([literal("u")] + [HEX] * 4)])]
)
UNIT = alt([("set", RAW), ESCAPE])  # one character of string content
UINT = alt([literal("0"), seq([DIGIT19, rep(DIGIT, 0, None)])])
FRACTION = seq([literal("."), rep(DIGIT, 1, None)])
EXPONENT = seq([char_set([(69, 69), (101, 101)]), opt(char_set([(43, 43), (45, 45)])), rep(DIGIT, 1, None)])
NUMBER = seq([opt(literal("-")), UINT, opt(FRACTION), opt(EXPONENT)])

_YEAR = r"(?:[1-9]\d{3}|0[1-9]\d{2}|00[1-9]\d|000[1-9])"
_LEAP = r"(?:\d\d(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = (
    rf"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
    rf"|02-(?:0[1-9]|1\d|2[0-8]))|{_LEAP}-02-29)"
)
_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
FORMATS = {  # conservative: every text they accept passes the usual validators
    "date": _DATE,
    "time": _TIME,
    "date-time": rf"{_DATE}T{_TIME}",
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "uri": r"[A-Za-z][A-Za-z0-9+.-]*:[!#$&-;=?-\[\]_a-z~]+",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}


def json_string(body: Node) -> Node:
    return seq([literal('"'), body, literal('"')])


def string_body(lo: int, hi: int | None, pattern: str | None, fmt: str | None, path: str) -> Node:
    """The content of a string (between its quotes) with these length bounds, pattern and format."""
    if pattern is None and fmt is None:
        return rep(UNIT, lo, hi)
    parts: list[CharDFA] = []
    if pattern is not None:
        if not isinstance(pattern, str):
            from pc_core.errors import ConstraintError

            raise ConstraintError(path, "expected a string")
        parts.append(build_char_dfa(parse_regex(pattern, path, search=True), path))
    if fmt is not None:
        parts.append(build_char_dfa(parse_regex(FORMATS[fmt], path), path))
    if lo or hi is not None:
        whole = seq([char_set([(BOS, BOS)]), rep(("set", ANY), lo, hi), char_set([(EOS, EOS)])])
        parts.append(build_char_dfa(whole, path))
    return ("dfa", parts[0] if len(parts) == 1 else combine("all", parts))


def literal_value(value: Any) -> Node:
    """A value as compact JSON; an integral number also in its other spelling (1 and 1.0 are equal)."""
    forms = [json.dumps(value, separators=(",", ":"), ensure_ascii=False)]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        forms.append(str(int(value)))
    elif isinstance(value, int) and not isinstance(value, bool):
        forms.append(f"{value}.0")
    return alt([literal(f) for f in forms])


def sep_list(item: Node, separator: Node) -> Node:
    """`item (separator item)*` with one copy of item in the automaton (char_nfa builds it as a loop), where
    seq([item, rep(seq([separator, item]), 0, None)]) copies it twice: the subset construction explores each
    copy in full, and minimising merges them again."""
    return ("list", item, separator)


def any_value(depth: int, space: Node) -> Node:
    """Any JSON value nested at most `depth` levels, as one shared automaton embedded where it is used."""
    return ("sub", _any_value_dfa(depth, space))


@lru_cache(maxsize=32)
def _any_value_dfa(depth: int, space: Node) -> CharDFA:
    body = _any_value(depth, space)
    return build_char_dfa(seq([char_set([(BOS, BOS)]), body, char_set([(EOS, EOS)])]), "constraint")


def _any_value(depth: int, space: Node) -> Node:
    """Any JSON value nested at most `depth` levels (arrays and objects count one each)."""
    scalars = [json_string(rep(UNIT, 0, None)), NUMBER, literal("true"), literal("false"), literal("null")]
    if depth <= 0:
        return alt(scalars)
    inner = any_value(depth - 1, space)  # embedded once per use: the DFA is built a level at a time
    comma = seq([literal(","), space])
    array = seq([literal("["), opt(sep_list(inner, comma)), literal("]")])
    pair = seq([json_string(rep(UNIT, 0, None)), literal(":"), space, inner])
    obj = seq([literal("{"), opt(sep_list(pair, comma)), literal("}")])
    return alt([*scalars, array, obj])


def deep_tail(depth: int, space: Node) -> Node:
    """An undeclared property's value (json_syntax.py): exact to `depth` levels; an opening bracket at level
    depth + 1 enters a skeleton (strings respected, brackets counted to TAIL_LEVELS levels, their kinds and
    what lies between them left to the JSON syntax checked beside the automaton) until the value ends."""
    return ("sub", _deep_tail_dfa(depth, space))


@lru_cache(maxsize=32)
def _deep_tail_dfa(depth: int, space: Node) -> CharDFA:
    plain = [(43, 58), (65, 90), (97, 122)]  # + , - . / digits : and letters: numbers, literals, separators
    plain += [(32, 32)] if space != seq([]) else []
    skeleton = _Skeleton(char_set(plain))
    closing = []
    for level in range(depth + 1, 0, -1):  # the innermost open level first
        closing += [skeleton.content(TAIL_LEVELS - level), skeleton.close]
    deep = seq([_opened(depth, space), *closing])
    body = alt([_any_value(depth, space), deep])
    return build_char_dfa(seq([char_set([(BOS, BOS)]), body, char_set([(EOS, EOS)])]), "constraint")


def _opened(depth: int, space: Node) -> Node:
    """The texts of a value exact to `depth` levels cut just after an opening bracket at level depth + 1."""
    if depth == 0:
        return char_set([(91, 91), (123, 123)])
    inner = any_value(depth - 1, space)
    comma = seq([literal(","), space])
    key = seq([json_string(rep(UNIT, 0, None)), literal(":"), space])
    deeper = _opened(depth - 1, space)
    array = seq([literal("["), rep(seq([inner, comma]), 0, None), deeper])
    obj = seq([literal("{"), rep(seq([key, inner, comma]), 0, None), key, deeper])
    return alt([array, obj])


class _Skeleton:
    """Skeleton text: plain characters, strings and bracketed content in any order, with the mark
    (regex.DEEP_MARK) allowed anywhere, so that every skeleton state loops on it."""

    def __init__(self, plain: Node) -> None:
        self.mark = char_set([(DEEP_MARK, DEEP_MARK)])
        self.close = char_set([(93, 93), (125, 125)])
        escaped = seq([literal("\\"), rep(self.mark, 0, None), ("set", subtract(ANY, ((0xD800, 0xDFFF),)))])
        body = rep(alt([self.mark, ("set", RAW), escaped]), 0, None)
        self.parts = [self.mark, plain, seq([literal('"'), body, literal('"')])]
        self.open = char_set([(91, 91), (123, 123)])

    def content(self, levels: int) -> Node:
        """Skeleton text with at most `levels` more bracket levels inside it."""
        parts = list(self.parts)
        if levels > 0:
            parts.append(seq([self.open, self.content(levels - 1), self.close]))
        return rep(alt(parts), 0, None)


def key_not_in(names: list[str]) -> Node:
    """A quoted key that is none of `names` once decoded: a DFA over the decoded name (any characters, a
    trie complemented), embedded as string content so that it is written as `json.dumps` writes it."""
    return json_string(("dfa", _key_dfa(tuple(sorted(set(names))))))


@lru_cache(maxsize=256)
def _key_dfa(names: tuple[str, ...]) -> CharDFA:
    body = _not_in(set(names))
    return build_char_dfa(seq([char_set([(BOS, BOS)]), body, char_set([(EOS, EOS)])]), "constraint")


def _not_in(words: set[str]) -> Node:
    """Any text that is none of `words`."""
    if not words:
        return rep(("set", ANY), 0, None)
    firsts = sorted({w[0] for w in words if w})
    out = [] if "" in words else [seq([])]
    others = subtract(ANY, normalise([(ord(c), ord(c)) for c in firsts]))
    if others:
        out.append(seq([("set", others), rep(("set", ANY), 0, None)]))
    for c in firsts:
        out.append(seq([literal(c), _not_in({w[1:] for w in words if w and w[0] == c})]))
    return alt(out)


def integer_range(lo: float | None, lo_x: bool, hi: float | None, hi_x: bool) -> Node:
    """Canonical integers (no leading zeros) within the bounds."""
    a = None if lo is None else (math.floor(lo) + 1 if lo_x else math.ceil(lo))
    b = None if hi is None else (math.ceil(hi) - 1 if hi_x else math.floor(hi))
    parts = []
    if b is None or b >= 0:  # non-negative part
        parts.append(uint_range(max(a, 0) if a is not None else 0, b))
    if a is None or a < 0:  # negative part: -y with y in [max(1, -b), -a]
        low = 1 if b is None or b >= 0 else -b
        parts.append(seq([literal("-"), uint_range(low, None if a is None else -a)]))
    return alt(parts) if parts else ("alt", ())


def uint_range(a: int, b: int | None) -> Node:
    """Non-negative integers in [a, b] (b None: unbounded), canonically written."""
    if b is not None and a > b:
        return ("alt", ())
    la = len(str(a))
    parts = []
    top = len(str(b)) if b is not None else la
    for length in range(la, top + 1):
        lo = max(a, 10 ** (length - 1) if length > 1 else 0)
        hi = min(b, 10**length - 1) if b is not None else 10**length - 1
        if lo <= hi:
            parts.append(_same_length(str(lo), str(hi)))
    if b is None:  # more digits than a
        parts.append(seq([DIGIT19, rep(DIGIT, la, None)]))
    return alt(parts)


def _same_length(a: str, b: str) -> Node:
    if not a:
        return seq([])
    if a == b:
        return literal(a)
    if a[0] == b[0]:
        return seq([literal(a[0]), _same_length(a[1:], b[1:])])
    n = len(a) - 1
    out = [seq([literal(a[0]), _same_length(a[1:], "9" * n)])]
    if int(b[0]) - int(a[0]) > 1:
        out.append(seq([char_set([(ord(a[0]) + 1, ord(b[0]) - 1)]), rep(DIGIT, n, n)]))
    out.append(seq([literal(b[0]), _same_length("0" * n, b[1:])]))
    return alt(out)


def number_range(lo: float | None, lo_x: bool, hi: float | None, hi_x: bool) -> Node | None:
    """Numbers within integer bounds, in decimal notation; None when a bound is not an integer."""
    if lo is None and hi is None:
        return NUMBER
    if any(x is not None and x != math.floor(x) for x in (lo, hi)):
        return None
    lo = None if lo is None else int(lo)
    hi = None if hi is None else int(hi)
    parts = []
    if hi is None or hi > 0 or (hi == 0 and not hi_x):  # x >= 0, written without a sign
        parts.append(
            _unsigned(lo if lo is not None and lo > 0 else 0, lo_x and lo is not None and lo >= 0, hi, hi_x)
        )
    if lo is None or lo < 0:  # x < 0: -y with 0 < y, y <= -lo (or <), y >= -hi (or >)
        y_lo, y_lo_x = (-hi, hi_x) if hi is not None and hi < 0 else (0, True)
        body = _unsigned(y_lo, y_lo_x, None if lo is None else -lo, lo_x)
        parts.append(seq([literal("-"), body]))
    return alt(parts) if parts else ("alt", ())


def _unsigned(lo: int, lo_x: bool, hi: int | None, hi_x: bool) -> Node:
    """Non-negative decimals I(.F)? with lo <(=) x <(=) hi: I decides, except at the two edges."""
    zero = opt(seq([literal("."), rep(literal("0"), 1, None)]))
    nonzero = seq([literal("."), rep(DIGIT, 0, None), DIGIT19, rep(DIGIT, 0, None)])
    parts = [seq([uint_range(lo + 1 if lo_x else lo, None if hi is None else hi - 1), opt(FRACTION)])]
    if lo_x and (hi is None or lo < hi):
        parts.append(seq([uint_range(lo, lo), nonzero]))
    if hi is not None and not hi_x and hi >= lo and not (lo_x and hi == lo):
        parts.append(seq([uint_range(hi, hi), zero]))
    return alt(parts)


def disjoint(nodes: list[Node]) -> bool:
    """No JSON value is valid under two of the nodes (oneOf = anyOf then). Texts are not values: an object's
    properties may come in another order, a number in another spelling. So two branches count as disjoint
    when their values start with different characters (different JSON types, mostly), or when neither can
    contain an object or an exponent and no text matches both."""
    wrap = lambda n: seq([char_set([(BOS, BOS)]), n, char_set([(EOS, EOS)])])  # noqa: E731
    dfas = [build_char_dfa(wrap(n), "constraint") for n in nodes]
    starts = '{["-0123456789tfn'
    firsts = [{c for c in starts if not d.is_dead(d.run(d.initial, c))} for d in dfas]
    for i in range(len(dfas)):
        for j in range(i + 1, len(dfas)):
            if not firsts[i] & firsts[j]:
                continue
            if any(_may_contain(d, "{eE") for d in (dfas[i], dfas[j])):
                return False
            if combine("all", [dfas[i], dfas[j]]).accept.any():
                return False
    return True


def _may_contain(dfa: CharDFA, chars: str) -> bool:
    """Some live state reads one of `chars` into a live state (anywhere, strings included: conservative)."""
    for ch in chars:
        c = dfa.column_of(ch)
        for s in range(dfa.num_states):
            if not dfa.is_dead(s) and not dfa.is_dead(dfa.rows[s][c]):
                return True
    return False
