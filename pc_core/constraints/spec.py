"""The constraint language: JSON-compatible specs parsed into typed, immutable nodes.

    {"keywords": ["dog", "frisbee", "catch"]}                 shorthand for all(keyword ...)
    {"keyword": "New York", "inflections": false, "case": "sensitive", "variants": ["NYC"]}
    {"keyword": "fish", "pos": "noun"}
    {"all": [...]}  {"any": [...]}  {"not": {...}}  {"ordered": ["wake", "coffee"]}
    {"word_at": 3, "word": "pan"}     {"word_at": -1, "word": "pan"}     {"word_count": {"min": 5, "max": 15}}
    {"count": "dog", "min": 2, "max": 2}     {"at_least": 2, "of": [...]}     {"at_most": 1, "of": [...]}
    {"forbidden": ["cat", "dog"]}     {"tokens": [1532, 287]}     {"ends_with": "."}

A bare string where a constraint is expected is a keyword. Keyword options (`inflections`, `case`: natural |
sensitive | any, `case_sensitive` as its alias, `pos`: noun | verb | adj) apply wherever words are compared,
shorthands included. Keyword texts are normalised to NFC. Parsing normalises the shorthands (`keywords` ->
all, `forbidden` -> not(any)), so two specs that mean the same thing in those ways share a canonical form
(`canonical_json`) and a compiled DFA. Errors name the offending path. Semantics: docs/method.md §3.

`Affixed` is not part of the language: it wraps a parsed constraint with the decoding parameters `suffix` and
`stop` (`with_affixes`), so that the compiler, its cache and the checker see one object for "the constraint
on the span, followed by this suffix, ended by these stop strings".
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pc_core.cache import LRUCache
from pc_core.constraints.patterns import CHAR_NODES, parse_choice, parse_json_schema, parse_regex_node
from pc_core.constraints.words import CASE_MODES, PARTS_OF_SPEECH, bad_keyword_char, split_words
from pc_core.errors import ConstraintError

MAX_KEYWORD_CHARS = 100
MAX_WORDS_PER_KEYWORD = 8
MAX_VARIANTS = 32
MAX_DEPTH = 12
MAX_WORD_INDEX = 512
MAX_TOKEN_PATTERN = 64
MAX_FORBIDDEN = 10_000  # blocklists are enforced beside the guide (blocklist.py), not multiplied into it
MAX_AFFIX_CHARS = 200
MAX_SUFFIX_CHARS = 32_000  # infilling: the LM writes the suffix's first word, the HMM reads all of it
"""Longest `ends_with` string, `suffix` and stop string: the automaton tracks partial matches of these texts
character by character, so its size grows with their length."""
MAX_STOP_STRINGS = 16


@dataclass(frozen=True)
class Keyword:
    """A word or phrase; satisfied when any of its forms (words.keyword_forms) occurs in the text."""

    text: str
    inflections: bool = True
    case: str = "natural"  # natural | sensitive | any
    variants: tuple[str, ...] = ()
    pos: str | None = None  # restricts inflections to a part of speech: noun | verb | adj

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

_KEYWORD_OPTIONS = {"inflections", "case", "case_sensitive", "variants", "pos"}


PARSED: LRUCache[tuple[Constraint, int]] = LRUCache("parsed", 16 * 2**20, lambda entry: entry[1])
"""Parsed constraints by their JSON text: a client repeating a large constraint (hundreds of keywords, which
the server then rejects from its cache) costs a JSON dump, not a parse."""


def parse_constraint(spec: Any, path: str = "constraint") -> Constraint:
    """Parse a JSON-compatible spec (or an already parsed node) into a `Constraint`."""
    if isinstance(spec, NODE_TYPES):
        return spec
    try:
        key = json.dumps(
            spec, ensure_ascii=False
        )  # key order kept: a JSON schema's property order is its layout
    except (TypeError, ValueError, RecursionError):  # not JSON, or too deep: parse; errors name the part
        return _parse(spec, path, depth=0)
    hit = PARSED.get(key)
    if hit is not None:
        return hit[0]
    node = _parse(spec, path, depth=0)
    PARSED.put(key, (node, 8 * len(key)))  # the node's objects: a few times its text
    return node


def with_affixes(
    constraint: Any, suffix: str | None = None, stop: tuple[str, ...] = ()
) -> Constraint | Affixed:
    """The constraint (parsed) with a suffix and stop strings, or the constraint itself when there are none.
    The texts are checked here too (`affix_problem`); errors name `suffix` / `stop`."""
    node = parse_constraint(constraint)
    if isinstance(node, Affixed):
        node = node.body
    stop = tuple(stop)
    for name, text in [("suffix", suffix)] * (suffix is not None) + [("stop", s) for s in stop]:
        problem = affix_problem(text)
        if problem:
            raise ConstraintError(name, problem)
    if suffix is None and not stop:
        return node
    return Affixed(node, suffix, tuple(sorted(set(stop))))


def split_affixes(constraint: Any) -> tuple[Constraint, str | None, tuple[str, ...]]:
    """(the constraint on the span, suffix, stop strings) of a constraint that may be `Affixed`."""
    node = parse_constraint(constraint)
    if isinstance(node, Affixed):
        return node.body, node.suffix, node.stop
    return node, None, ()


def affix_problem(text: Any, limit: int = MAX_AFFIX_CHARS) -> str | None:
    """Why `text` cannot be an `ends_with` string, a suffix or a stop string, or None. No text can contain
    U+FFFD: pcgen never generates a token whose text has one (docs/method.md §3)."""
    if not isinstance(text, str):
        return f"expected a string, got {_type_name(text)}"
    if not text:
        return "must not be empty"
    if len(text) > limit:
        return f"longer than {limit} characters"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return "contains a lone surrogate, which is not text (it has no UTF-8 encoding)"
    if "\ufffd" in text:
        return (
            "contains U+FFFD (REPLACEMENT CHARACTER), which pcgen never generates: every token that decodes to "
            "it is banned (docs/method.md §3)"
        )
    return None


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
    from pc_core.constraints.words import keyword_forms

    required, forbidden = keywords_by_polarity(constraint)
    out, seen = [], set()
    for polarity, keywords in (("required", required), ("forbidden", forbidden)):
        for keyword in keywords:
            if (polarity, keyword) in seen:
                continue
            if limit is not None and len(out) >= limit:
                return out
            seen.add((polarity, keyword))
            forms = sorted({form.text for form in keyword_forms(keyword)})
            out.append({"keyword": keyword.text, "case": keyword.case, "polarity": polarity, "forms": forms})
    return out


# ---------------------------------------------------------------------------------------------- parsing


def _type_name(value: Any) -> str:
    return {
        str: "string",
        int: "integer",
        bool: "boolean",
        float: "number",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _parse(spec: Any, path: str, depth: int) -> Constraint:
    if depth > MAX_DEPTH:
        raise ConstraintError(path, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(spec, str):
        return _parse_keyword(spec, {}, path)
    if not isinstance(spec, dict):
        raise ConstraintError(path, f"expected an object or a keyword string, got {_type_name(spec)}")
    if not spec:
        raise ConstraintError(path, "empty constraint object")
    kind = next((kind for kind in _KINDS if kind in spec), None)
    if kind is None:
        raise ConstraintError(
            path, f"unknown constraint kind {sorted(spec)}; expected one of: {', '.join(_KINDS)}"
        )
    return _KINDS[kind](spec, path, depth)


def _keyword_list(spec: dict, key: str, path: str, max_len: int = 256) -> tuple[Keyword, ...]:
    """`keywords`, `ordered`, `forbidden`: a list of keywords sharing the options given beside it."""
    _only(spec, {key} | _KEYWORD_OPTIONS, path)
    if "variants" in spec:
        raise ConstraintError(f"{path}.variants", 'variants apply to a single keyword; use {"keyword": ...}')
    items = _list(spec[key], f"{path}.{key}", min_len=1, max_len=max_len)
    options = {k: spec[k] for k in _KEYWORD_OPTIONS if k in spec}
    return tuple(_parse_keyword_item(x, f"{path}.{key}[{i}]", options) for i, x in enumerate(items))


def _parse_combination(spec: dict, path: str, depth: int) -> Constraint:
    key = "all" if "all" in spec else "any"
    _only(spec, {key}, path)
    items = _list(spec[key], f"{path}.{key}", min_len=0)  # all [] is true, any [] false (docs/method.md §3)
    children = tuple(_parse(x, f"{path}.{key}[{i}]", depth + 1) for i, x in enumerate(items))
    return All(children) if key == "all" else AnyOf(children)


def _parse_not(spec: dict, path: str, depth: int) -> Constraint:
    _only(spec, {"not"}, path)
    return Not(_parse(spec["not"], f"{path}.not", depth + 1))


def _parse_word_at(spec: dict, path: str, depth: int) -> Constraint:
    _only(spec, {"word_at", "word"} | _KEYWORD_OPTIONS, path)
    index = _int(spec["word_at"], f"{path}.word_at", lo=-MAX_WORD_INDEX, hi=MAX_WORD_INDEX)
    if index == 0:
        raise ConstraintError(
            f"{path}.word_at", "must be >= 1 (1 is the first word) or <= -1 (-1 is the last word)"
        )
    if "word" not in spec:
        raise ConstraintError(f"{path}.word", "required with word_at")
    word = _parse_keyword(spec["word"], {"inflections": False, **spec}, path, text_path=f"{path}.word")
    for variant in (word.text, *word.variants):
        if len(split_words(variant)) != 1:
            raise ConstraintError(f"{path}.word", f"must be a single word, got {variant!r}")
    return WordAt(index, word)


def _parse_word_count(spec: dict, path: str, depth: int) -> Constraint:
    _only(spec, {"word_count"}, path)
    body = spec["word_count"]
    if not isinstance(body, dict):
        raise ConstraintError(
            f"{path}.word_count", f"expected an object {{min, max}}, got {_type_name(body)}"
        )
    _only(body, {"min", "max"}, f"{path}.word_count")
    lo = _int(body.get("min", 0), f"{path}.word_count.min", lo=0, hi=MAX_WORD_INDEX)
    hi = body.get("max")
    if hi is not None:
        hi = _int(hi, f"{path}.word_count.max", lo=0, hi=MAX_WORD_INDEX)
        if hi < lo:
            raise ConstraintError(f"{path}.word_count", f"min ({lo}) must be <= max ({hi})")
    return WordCount(lo, hi)


def _parse_count(spec: dict, path: str, depth: int) -> Constraint:
    _only(spec, {"count", "min", "max"} | _KEYWORD_OPTIONS, path)
    if "min" not in spec and "max" not in spec:
        raise ConstraintError(f"{path}.min", "required with count: give min, max or both")
    if not isinstance(spec["count"], (str, dict)):
        got = _type_name(spec["count"])
        raise ConstraintError(f"{path}.count", f'expected a keyword string or {{"keyword": ...}}, got {got}')
    options = {k: spec[k] for k in _KEYWORD_OPTIONS if k in spec}
    keyword = _parse_keyword_item(spec["count"], f"{path}.count", options)
    lo = _int(spec.get("min", 0), f"{path}.min", lo=0, hi=MAX_WORD_INDEX)
    hi = spec.get("max")
    if hi is not None:
        hi = _int(hi, f"{path}.max", lo=0, hi=MAX_WORD_INDEX)
        if hi < lo:
            raise ConstraintError(f"{path}.max", f"min ({lo}) must be <= max ({hi})")
    return Count(keyword, lo, hi)


def _parse_k_of(spec: dict, path: str, depth: int) -> Constraint:
    key = "at_least" if "at_least" in spec else "at_most"
    _only(spec, {key, "of"}, path)
    if "of" not in spec:
        raise ConstraintError(f"{path}.of", f"required with {key}: the list of constraints to count")
    items = _list(spec["of"], f"{path}.of", min_len=0)
    children = tuple(_parse(x, f"{path}.of[{i}]", depth + 1) for i, x in enumerate(items))
    k = _int(spec[key], f"{path}.{key}", lo=0, hi=256)
    if key == "at_least" and k > len(children):  # cannot hold: saying why here beats "unsatisfiable" later
        raise ConstraintError(
            f"{path}.at_least", f"must be <= {len(children)}, the number of constraints in `of`"
        )
    return AtLeast(k, children) if key == "at_least" else AtMost(k, children)


def _parse_tokens(spec: dict, path: str, depth: int) -> Constraint:
    _only(spec, {"tokens"}, path)
    ids = _list(spec["tokens"], f"{path}.tokens", min_len=1, max_len=MAX_TOKEN_PATTERN)
    return Tokens(tuple(_int(x, f"{path}.tokens[{i}]", lo=0) for i, x in enumerate(ids)))


def _parse_ends_with(spec: dict, path: str, depth: int) -> Constraint:
    _only(spec, {"ends_with"}, path)
    problem = affix_problem(spec["ends_with"])
    if problem:
        raise ConstraintError(f"{path}.ends_with", problem)
    return EndsWith(spec["ends_with"])


def _parse_single_keyword(spec: dict, path: str, depth: int) -> Constraint:
    _only(spec, {"keyword"} | _KEYWORD_OPTIONS, path)
    return _parse_keyword(spec["keyword"], spec, path, text_path=f"{path}.keyword")


_KINDS = {  # the first of these fields present in an object says what kind of constraint it is
    "keywords": lambda spec, path, depth: All(_keyword_list(spec, "keywords", path)),
    "keyword": _parse_single_keyword,
    "all": _parse_combination,
    "any": _parse_combination,
    "not": _parse_not,
    "ordered": lambda spec, path, depth: Ordered(_keyword_list(spec, "ordered", path)),
    "forbidden": lambda spec, path, depth: Not(AnyOf(_keyword_list(spec, "forbidden", path, MAX_FORBIDDEN))),
    "word_at": _parse_word_at,
    "word_count": _parse_word_count,
    "count": _parse_count,
    "at_least": _parse_k_of,
    "at_most": _parse_k_of,
    "tokens": _parse_tokens,
    "ends_with": _parse_ends_with,
    "regex": parse_regex_node,  # character-level kinds: patterns.py
    "pattern": parse_regex_node,
    "choice": parse_choice,
    "json_schema": parse_json_schema,
    "json": parse_json_schema,
}


def _parse_keyword_item(item: Any, path: str, options: dict) -> Keyword:
    if isinstance(item, dict):
        if "keyword" not in item:
            raise ConstraintError(path, 'expected a keyword string or {"keyword": ...}')
        _only(item, {"keyword"} | _KEYWORD_OPTIONS, path)
        if {"case", "case_sensitive"} & set(item):  # the item's own case setting replaces the list's
            options = {k: v for k, v in options.items() if k not in ("case", "case_sensitive")}
        return _parse_keyword(item["keyword"], {**options, **item}, path, text_path=f"{path}.keyword")
    return _parse_keyword(item, options, path)


def _parse_keyword(text: Any, options: dict, path: str, text_path: str | None = None) -> Keyword:
    text_path = text_path or path
    text = _keyword_text(text, text_path)
    inflections = _bool(options.get("inflections", True), f"{path}.inflections")
    raw_variants = options.get("variants", [])
    variants = _list(raw_variants, f"{path}.variants", min_len=0, max_len=MAX_VARIANTS)
    variants = tuple(_keyword_text(v, f"{path}.variants[{i}]") for i, v in enumerate(variants))
    return Keyword(text, inflections, _case(options, path), variants, _pos(options, path))


def _case(options: dict, path: str) -> str:
    """`case`, or its alias `case_sensitive` (true = sensitive, false = natural); both must agree."""
    case = options.get("case")
    if case is not None and case not in CASE_MODES:
        raise ConstraintError(f"{path}.case", f"expected one of {', '.join(CASE_MODES)}, got {case!r}")
    if "case_sensitive" in options:
        alias = "sensitive" if _bool(options["case_sensitive"], f"{path}.case_sensitive") else "natural"
        if case is not None and case != alias:
            raise ConstraintError(
                f"{path}.case_sensitive", f"contradicts case={case!r} (case_sensitive is an alias of case)"
            )
        case = alias
    return case or "natural"


def _pos(options: dict, path: str) -> str | None:
    pos = options.get("pos")
    if pos is not None and pos not in PARTS_OF_SPEECH:
        raise ConstraintError(f"{path}.pos", f"expected one of {', '.join(PARTS_OF_SPEECH)}, got {pos!r}")
    return pos


def _keyword_text(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConstraintError(path, f"expected a string, got {_type_name(value)}")
    value = unicodedata.normalize("NFC", value)
    if not value.strip():
        raise ConstraintError(path, "must not be empty")
    if len(value) > MAX_KEYWORD_CHARS:
        raise ConstraintError(path, f"longer than {MAX_KEYWORD_CHARS} characters")
    bad = bad_keyword_char(value)
    if bad is not None:
        name = unicodedata.name(bad, "unnamed")
        raise ConstraintError(
            path,
            f"{value!r} contains U+{ord(bad):04X} ({name}), which cannot appear inside a word or phrase "
            "(control and format characters and combining marks without a base are not part of words)",
        )
    words = split_words(value)
    if not words:
        raise ConstraintError(path, f"contains no word characters: {value!r}")
    if len(words) > MAX_WORDS_PER_KEYWORD:
        raise ConstraintError(path, f"a phrase may have at most {MAX_WORDS_PER_KEYWORD} words")
    return value


def _only(spec: dict, allowed: set[str], path: str) -> None:
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConstraintError(
            f"{path}.{extra[0]}", f"unexpected field (allowed here: {', '.join(sorted(allowed))})"
        )


def _list(value: Any, path: str, min_len: int, max_len: int = 256) -> list:
    if not isinstance(value, list):
        raise ConstraintError(path, f"expected a list, got {_type_name(value)}")
    if len(value) < min_len:
        raise ConstraintError(path, f"must have at least {min_len} item(s)")
    if len(value) > max_len:
        raise ConstraintError(path, f"must have at most {max_len} items")
    return value


def _int(value: Any, path: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConstraintError(path, f"expected an integer, got {_type_name(value)}")
    if lo is not None and value < lo:
        raise ConstraintError(path, f"must be >= {lo}")
    if hi is not None and value > hi:
        raise ConstraintError(path, f"must be <= {hi}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConstraintError(path, f"expected true or false, got {_type_name(value)}")
    return value
