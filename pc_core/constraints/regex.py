"""Regular expressions as a small IR of character sets (docs/method.md §4, patterns).

Python's own parser (`re._parser`, the well-kept sre_parse) reads the pattern; `to_ir` turns its parse tree
into four node kinds, plain tuples so they hash and compare cheaply:

    ("set", ((lo, hi), ...))     one character whose code point lies in one of the inclusive ranges
    ("seq", (node, ...))         concatenation ("seq", ()) is the empty string
    ("alt", (node, ...))         alternation
    ("rep", node, lo, hi)        lo..hi repetitions (hi None: unbounded)

Anchors become two marker characters outside Unicode, BOS and EOS: the automaton reads BOS + text + EOS, so
`^` / `\\A` consume BOS and `$` / `\\Z` consume EOS (for `$`, after an optional final newline in search mode,
as Python's `$` allows). Backreferences, lookaround, conditionals, word boundaries, atomic groups, possessive
repeats and the flags i / m / a / L change the language beyond this IR: a ConstraintError names them.
The JSON Schema translator (json_schema.py) builds the same IR directly.
"""

from __future__ import annotations

import re
import re._constants as C  # noqa: N812
import re._parser as sre_parse
from functools import cache

from pc_core.errors import ConstraintError

MAX_CODE = 0x10FFFF
BOS, EOS = 0x110000, 0x110001  # marker "characters" around the text
DEEP_MARK = 0x110004  # a marker no text holds: json_values' skeleton states loop on it (json_syntax.py)
Ranges = tuple[tuple[int, int], ...]
Node = tuple

ANY: Ranges = ((0, MAX_CODE),)
EMPTY: Node = ("seq", ())
MAX_REPEAT_COPIES = 5000  # {m,n} is expanded into copies; more than this many is refused


def char_set(ranges: list[tuple[int, int]] | Ranges) -> Node:
    return ("set", normalise(ranges))


def literal(text: str) -> Node:
    return seq([("set", ((ord(c), ord(c)),)) for c in text])


def seq(items: list[Node]) -> Node:
    flat: list[Node] = []
    for item in items:
        flat.extend(item[1] if item[0] == "seq" else (item,))
    return flat[0] if len(flat) == 1 else ("seq", tuple(flat))


def alt(items: list[Node]) -> Node:
    unique = list(dict.fromkeys(items))
    return unique[0] if len(unique) == 1 else ("alt", tuple(unique))


def rep(node: Node, lo: int, hi: int | None) -> Node:
    return ("rep", node, lo, hi)


def opt(node: Node) -> Node:
    return rep(node, 0, 1)


def normalise(ranges: list[tuple[int, int]] | Ranges) -> Ranges:
    """Sorted, merged, disjoint ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def negate(ranges: Ranges) -> Ranges:
    """The complement within Unicode (the markers are never in a negated class)."""
    out, start = [], 0
    for lo, hi in normalise(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE:
        out.append((start, MAX_CODE))
    return tuple(out)


def subtract(ranges: Ranges, minus: Ranges) -> Ranges:
    """ranges \\ minus (both within Unicode)."""
    return intersect(ranges, negate(minus))


def intersect(a: Ranges, b: Ranges) -> Ranges:
    out = []
    for lo, hi in a:
        for lo2, hi2 in b:
            if lo2 <= hi and lo <= hi2:
                out.append((max(lo, lo2), min(hi, hi2)))
    return normalise(out)


@cache
def category(name: str) -> Ranges:
    """Unicode ranges of Python's \\d (str.isdecimal), \\s (str.isspace) and \\w (str.isalnum or _), the
    definitions `re` uses for str patterns; computed once by scanning the code points."""
    test = {"digit": str.isdecimal, "space": str.isspace, "word": lambda c: c.isalnum() or c == "_"}[name]
    out, start = [], None
    for cp in range(MAX_CODE + 2):
        inside = cp <= MAX_CODE and test(chr(cp))
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            out.append((start, cp - 1))
            start = None
    return tuple(out)


_CATEGORIES = {
    C.CATEGORY_DIGIT: ("digit", False),
    C.CATEGORY_NOT_DIGIT: ("digit", True),
    C.CATEGORY_SPACE: ("space", False),
    C.CATEGORY_NOT_SPACE: ("space", True),
    C.CATEGORY_WORD: ("word", False),
    C.CATEGORY_NOT_WORD: ("word", True),
}
_BAD_FLAGS = {
    re.IGNORECASE: "the flag i (ignore case)",
    re.MULTILINE: "the flag m (multiline)",
    re.ASCII: "the flag a (ASCII)",
    re.LOCALE: "the flag L (locale)",
}
_UNSUPPORTED = {
    C.GROUPREF: "backreferences",
    C.GROUPREF_EXISTS: "conditional groups (?(...)...)",
    C.ASSERT: "lookahead / lookbehind",
    C.ASSERT_NOT: "negative lookahead / lookbehind",
    C.ATOMIC_GROUP: "atomic groups (?>...)",
    C.POSSESSIVE_REPEAT: "possessive repeats",
}


def parse_regex(pattern: str, path: str, search: bool = False) -> Node:
    """The IR of `pattern`, read as Python's `re` reads it; ConstraintError (naming `path`) for what the IR
    cannot express. search=False: the whole text must match; True: some part of it."""
    if not isinstance(pattern, str):
        raise ConstraintError(path, f"expected a string, got {type(pattern).__name__}")
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as err:
        raise ConstraintError(path, f"invalid regular expression: {err}") from None
    _check_flags(parsed.state.flags, path)
    body = _Converter(path, dotall=bool(parsed.state.flags & re.DOTALL), search=search).convert(parsed)
    if search:
        around = rep(char_set(ANY + ((BOS, EOS),)), 0, None)
        return seq([around, body, around])
    return seq([opt(char_set([(BOS, BOS)])), body, opt(char_set([(EOS, EOS)]))])


def _check_flags(flags: int, path: str) -> None:
    for flag, name in _BAD_FLAGS.items():
        if flags & flag:
            raise ConstraintError(path, f"{name} is not supported")


class _Converter:
    def __init__(self, path: str, dotall: bool, search: bool) -> None:
        self.path, self.dotall, self.search = path, dotall, search
        self.copies = 0

    def fail(self, what: str) -> None:
        raise ConstraintError(self.path, f"{what} not supported in patterns (the language must stay regular)")

    def convert(self, sub: sre_parse.SubPattern) -> Node:
        return seq([self.item(op, av) for op, av in sub.data])

    def item(self, op: object, av: object) -> Node:
        if op in _UNSUPPORTED:
            self.fail(_UNSUPPORTED[op])
        if op is C.LITERAL:
            return ("set", ((av, av),))
        if op is C.NOT_LITERAL:
            return ("set", negate(((av, av),)))
        if op is C.ANY:
            return ("set", ANY if self.dotall else negate(((10, 10),)))
        if op is C.IN:
            return ("set", self.char_class(av))
        if op is C.BRANCH:
            return alt([self.convert(branch) for branch in av[1]])
        if op is C.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            _check_flags(add_flags, self.path)
            if (add_flags | del_flags) & re.DOTALL:
                saved, self.dotall = self.dotall, bool(add_flags & re.DOTALL)
                try:
                    return self.convert(sub)
                finally:
                    self.dotall = saved
            return self.convert(sub)
        if op in (C.MAX_REPEAT, C.MIN_REPEAT):  # lazy and greedy repeats accept the same texts
            lo, hi, sub = av
            hi = None if hi == C.MAXREPEAT else hi
            self.copies += max(lo, hi or 0)
            if self.copies > MAX_REPEAT_COPIES:
                raise ConstraintError(self.path, f"repeat counts add up to more than {MAX_REPEAT_COPIES}")
            return rep(self.convert(sub), lo, hi)
        if op is C.AT:
            return self.anchor(av)
        self.fail(f"the construct {str(op).lower()}")
        raise AssertionError  # unreachable

    def anchor(self, where: object) -> Node:
        if where in (C.AT_BEGINNING, C.AT_BEGINNING_STRING):
            return ("set", ((BOS, BOS),))
        if where is C.AT_END_STRING:
            return ("set", ((EOS, EOS),))
        if where is C.AT_END:  # `$`: the end, or before a final newline (which search mode may leave out)
            end = ("set", ((EOS, EOS),))
            return seq([opt(literal("\n")), end]) if self.search else end
        self.fail("word boundaries (\\b, \\B) are")
        raise AssertionError

    def char_class(self, items: list) -> Ranges:
        ranges: list[tuple[int, int]] = []
        negated = False
        for op, av in items:
            if op is C.NEGATE:
                negated = True
            elif op is C.LITERAL:
                ranges.append((av, av))
            elif op is C.RANGE:
                ranges.append(av)
            elif op is C.CATEGORY:
                name, inverted = _CATEGORIES[av]
                found = category(name)
                ranges.extend(negate(found) if inverted else found)
            else:
                self.fail(f"the class item {str(op).lower()}")
        out = normalise(ranges)
        return negate(out) if negated else out
