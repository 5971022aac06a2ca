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
from typing import Any

from pc_core.cache import LRUCache
from pc_core.constraints.nodes import (
    NODE_TYPES,
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
)
from pc_core.constraints.patterns import parse_choice, parse_json_schema, parse_regex_node
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


_KEYWORD_OPTIONS = {"inflections", "case", "case_sensitive", "variants", "pos"}


PARSED: LRUCache[tuple[Constraint, int]] = LRUCache("parsed", 16 * 2**20, lambda entry: entry[1])
"""Parsed constraints by their JSON text: a client repeating a large constraint (hundreds of keywords, which
the server then rejects from its cache) costs a JSON dump, not a parse."""


def parse_constraint(raw: Any, path: str = "constraint") -> Constraint:
    """Parse a constraint as JSON values (`raw`), or an already parsed node, into a `Constraint`."""
    if isinstance(raw, NODE_TYPES):
        return raw
    try:
        key = json.dumps(
            raw, ensure_ascii=False
        )  # key order kept: a JSON schema's property order is its layout
    except (TypeError, ValueError, RecursionError):  # not JSON, or too deep: parse; errors name the part
        return _parse(raw, path, depth=0)
    hit = PARSED.get(key)
    if hit is not None:
        return hit[0]
    node = _parse(raw, path, depth=0)
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


def _parse(raw: Any, path: str, depth: int) -> Constraint:
    if depth > MAX_DEPTH:
        raise ConstraintError(path, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(raw, str):
        return _parse_keyword(raw, {}, path)
    if not isinstance(raw, dict):
        raise ConstraintError(path, f"expected an object or a keyword string, got {_type_name(raw)}")
    if not raw:
        raise ConstraintError(path, "empty constraint object")
    kind = next((kind for kind in _KINDS if kind in raw), None)
    if kind is None:
        raise ConstraintError(
            path, f"unknown constraint kind {sorted(raw)}; expected one of: {', '.join(_KINDS)}"
        )
    return _KINDS[kind](raw, path, depth)


def _keyword_list(raw: dict, key: str, path: str, max_len: int = 256) -> tuple[Keyword, ...]:
    """`keywords`, `ordered`, `forbidden`: a list of keywords sharing the options given beside it."""
    _only(raw, {key} | _KEYWORD_OPTIONS, path)
    if "variants" in raw:
        raise ConstraintError(f"{path}.variants", 'variants apply to a single keyword; use {"keyword": ...}')
    items = _list(raw[key], f"{path}.{key}", min_len=1, max_len=max_len)
    options = {k: raw[k] for k in _KEYWORD_OPTIONS if k in raw}
    return tuple(_parse_keyword_item(x, f"{path}.{key}[{i}]", options) for i, x in enumerate(items))


def _parse_combination(raw: dict, path: str, depth: int) -> Constraint:
    key = "all" if "all" in raw else "any"
    _only(raw, {key}, path)
    items = _list(raw[key], f"{path}.{key}", min_len=0)  # all [] is true, any [] false (docs/method.md §3)
    children = tuple(_parse(x, f"{path}.{key}[{i}]", depth + 1) for i, x in enumerate(items))
    return All(children) if key == "all" else AnyOf(children)


def _parse_not(raw: dict, path: str, depth: int) -> Constraint:
    _only(raw, {"not"}, path)
    return Not(_parse(raw["not"], f"{path}.not", depth + 1))


def _parse_word_at(raw: dict, path: str, depth: int) -> Constraint:
    _only(raw, {"word_at", "word"} | _KEYWORD_OPTIONS, path)
    index = _int(raw["word_at"], f"{path}.word_at", lo=-MAX_WORD_INDEX, hi=MAX_WORD_INDEX)
    if index == 0:
        raise ConstraintError(
            f"{path}.word_at", "must be >= 1 (1 is the first word) or <= -1 (-1 is the last word)"
        )
    if "word" not in raw:
        raise ConstraintError(f"{path}.word", "required with word_at")
    word = _parse_keyword(raw["word"], {"inflections": False, **raw}, path, text_path=f"{path}.word")
    for variant in (word.text, *word.variants):
        if len(split_words(variant)) != 1:
            raise ConstraintError(f"{path}.word", f"must be a single word, got {variant!r}")
    return WordAt(index, word)


def _parse_word_count(raw: dict, path: str, depth: int) -> Constraint:
    _only(raw, {"word_count"}, path)
    body = raw["word_count"]
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


def _parse_count(raw: dict, path: str, depth: int) -> Constraint:
    _only(raw, {"count", "min", "max"} | _KEYWORD_OPTIONS, path)
    if "min" not in raw and "max" not in raw:
        raise ConstraintError(f"{path}.min", "required with count: give min, max or both")
    if not isinstance(raw["count"], (str, dict)):
        got = _type_name(raw["count"])
        raise ConstraintError(f"{path}.count", f'expected a keyword string or {{"keyword": ...}}, got {got}')
    options = {k: raw[k] for k in _KEYWORD_OPTIONS if k in raw}
    keyword = _parse_keyword_item(raw["count"], f"{path}.count", options)
    lo = _int(raw.get("min", 0), f"{path}.min", lo=0, hi=MAX_WORD_INDEX)
    hi = raw.get("max")
    if hi is not None:
        hi = _int(hi, f"{path}.max", lo=0, hi=MAX_WORD_INDEX)
        if hi < lo:
            raise ConstraintError(f"{path}.max", f"min ({lo}) must be <= max ({hi})")
    return Count(keyword, lo, hi)


def _parse_k_of(raw: dict, path: str, depth: int) -> Constraint:
    key = "at_least" if "at_least" in raw else "at_most"
    _only(raw, {key, "of"}, path)
    if "of" not in raw:
        raise ConstraintError(f"{path}.of", f"required with {key}: the list of constraints to count")
    items = _list(raw["of"], f"{path}.of", min_len=0)
    children = tuple(_parse(x, f"{path}.of[{i}]", depth + 1) for i, x in enumerate(items))
    k = _int(raw[key], f"{path}.{key}", lo=0, hi=256)
    if key == "at_least" and k > len(children):  # cannot hold: saying why here beats "unsatisfiable" later
        raise ConstraintError(
            f"{path}.at_least", f"must be <= {len(children)}, the number of constraints in `of`"
        )
    return AtLeast(k, children) if key == "at_least" else AtMost(k, children)


def _parse_tokens(raw: dict, path: str, depth: int) -> Constraint:
    _only(raw, {"tokens"}, path)
    ids = _list(raw["tokens"], f"{path}.tokens", min_len=1, max_len=MAX_TOKEN_PATTERN)
    return Tokens(tuple(_int(x, f"{path}.tokens[{i}]", lo=0) for i, x in enumerate(ids)))


def _parse_ends_with(raw: dict, path: str, depth: int) -> Constraint:
    _only(raw, {"ends_with"}, path)
    problem = affix_problem(raw["ends_with"])
    if problem:
        raise ConstraintError(f"{path}.ends_with", problem)
    return EndsWith(raw["ends_with"])


def _parse_single_keyword(raw: dict, path: str, depth: int) -> Constraint:
    _only(raw, {"keyword"} | _KEYWORD_OPTIONS, path)
    return _parse_keyword(raw["keyword"], raw, path, text_path=f"{path}.keyword")


_KINDS = {  # the first of these fields present in an object says what kind of constraint it is
    "keywords": lambda raw, path, depth: All(_keyword_list(raw, "keywords", path)),
    "keyword": _parse_single_keyword,
    "all": _parse_combination,
    "any": _parse_combination,
    "not": _parse_not,
    "ordered": lambda raw, path, depth: Ordered(_keyword_list(raw, "ordered", path)),
    "forbidden": lambda raw, path, depth: Not(AnyOf(_keyword_list(raw, "forbidden", path, MAX_FORBIDDEN))),
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


def _only(raw: dict, allowed: set[str], path: str) -> None:
    extra = sorted(set(raw) - allowed)
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
