"""Character-level constraint nodes: `regex`, `pattern`, `choice`, `json_schema` and `json` (docs/method.md §3).

    {"regex": "[A-Z][a-z]+ \\d{4}"}          the whole text matches (Python `re` syntax, `re.fullmatch`)
    {"pattern": "order #\\d+"}               some part of the text matches (`re.search`)
    {"choice": ["yes", "no", "maybe"]}       the whole text is one of the strings
    {"json_schema": {...}, "whitespace": "compact" | "flexible", "max_depth": 3}
    {"json": true}                            any JSON object (the same options)

Each node has a character automaton (`char_automaton`, char_dfa.CharDFA), built once per node and cached;
the token compiler reads token texts through it (char_tokens.py). `holds` is the independent check the
checker uses: `re.fullmatch` / `re.search`, string equality, and for JSON `json.loads` + the `jsonschema`
library + the layout rule (no whitespace outside strings in compact mode). It never runs the automaton.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from pc_core.constraints.char_dfa import CharDFA, build_char_dfa
from pc_core.constraints.regex import alt, literal, parse_regex, seq
from pc_core.errors import ConstraintError

MAX_PATTERN_CHARS = 2000
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 500
MAX_SCHEMA_CHARS = 200_000
WHITESPACE_MODES = ("compact", "flexible")


@dataclass(frozen=True)
class Regex:
    """`text` matches the whole generated text (search=False) or some part of it (search=True)."""

    text: str
    search: bool = False

    def to_json(self) -> dict:
        return {"pattern" if self.search else "regex": self.text}


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    def to_json(self) -> dict:
        return {"choice": list(self.options)}


@dataclass(frozen=True)
class JsonSchema:
    """One JSON document valid under `schema` (its JSON text, key order kept). whitespace "compact": no
    whitespace outside strings; "flexible": an optional space after `:` and `,`."""

    schema: str
    whitespace: str = "compact"
    max_depth: int = 3
    any_object: bool = False  # {"json": true}: its free values by json_schema.ANY_OBJECT_STATES
    # undeclared properties' values past max_depth as a skeleton, with json_syntax.py beside the automaton
    # (only where the compiler can enforce the syntax: a json_schema alone; not part of the spec)
    deep_tails: bool = False

    def to_json(self) -> dict:  # the schema as text: canonical_json sorts keys, and property order is layout
        if self.any_object:
            return {"json": True, "whitespace": self.whitespace, "max_depth": self.max_depth}
        return {
            "json_schema": self.schema,
            "whitespace": self.whitespace,
            "max_depth": self.max_depth,
        }


CHAR_NODES = (Regex, Choice, JsonSchema)


def parse_regex_node(spec: dict, path: str, depth: int) -> Regex:
    key = "regex" if "regex" in spec else "pattern"
    _only(spec, {key}, path)
    text = spec[key]
    if not isinstance(text, str) or not text:
        raise ConstraintError(f"{path}.{key}", "expected a non-empty string")
    if len(text) > MAX_PATTERN_CHARS:
        raise ConstraintError(f"{path}.{key}", f"longer than {MAX_PATTERN_CHARS} characters")
    node = Regex(text, search=key == "pattern")
    _automaton(node, f"{path}.{key}")  # errors now, with the path; cached for the compiler
    return node


def parse_choice(spec: dict, path: str, depth: int) -> Choice:
    _only(spec, {"choice"}, path)
    items = spec["choice"]
    if not isinstance(items, list) or not items:
        raise ConstraintError(f"{path}.choice", "expected a non-empty list of strings")
    if len(items) > MAX_CHOICES:
        raise ConstraintError(f"{path}.choice", f"must have at most {MAX_CHOICES} items")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConstraintError(f"{path}.choice[{i}]", f"expected a string, got {type(item).__name__}")
        if len(item) > MAX_CHOICE_CHARS:
            raise ConstraintError(f"{path}.choice[{i}]", f"longer than {MAX_CHOICE_CHARS} characters")
    return Choice(tuple(sorted(set(items))))


def parse_json_schema(spec: dict, path: str, depth: int) -> JsonSchema:
    key = "json_schema" if "json_schema" in spec else "json"
    _only(spec, {key, "whitespace", "max_depth"}, path)
    schema = spec[key]
    if isinstance(schema, str):  # the schema as JSON text (what to_json writes)
        try:
            schema = json.loads(schema)
        except ValueError:
            raise ConstraintError(
                f"{path}.{key}", "a string here must be a JSON Schema as JSON text"
            ) from None
    if key == "json":
        if schema is not True:
            raise ConstraintError(f"{path}.json", "expected true (any JSON object)")
        schema = {"type": "object"}
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        raise ConstraintError(f"{path}.{key}", "expected a JSON Schema object")
    text = json.dumps(schema, sort_keys=False, ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_SCHEMA_CHARS:
        raise ConstraintError(f"{path}.{key}", f"longer than {MAX_SCHEMA_CHARS} characters of JSON")
    whitespace = spec.get("whitespace", "compact")
    if whitespace not in WHITESPACE_MODES:
        raise ConstraintError(f"{path}.whitespace", f"expected one of {', '.join(WHITESPACE_MODES)}")
    max_depth = spec.get("max_depth", 3)
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 0 <= max_depth <= 8:
        raise ConstraintError(f"{path}.max_depth", "expected an integer from 0 to 8")
    node = JsonSchema(text, whitespace, max_depth, any_object=key == "json")
    _automaton(node, f"{path}.{key}")
    return node


def _only(spec: dict, allowed: set[str], path: str) -> None:
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConstraintError(
            f"{path}.{extra[0]}", f"unexpected field (allowed here: {', '.join(sorted(allowed))})"
        )


def char_automaton(node: Regex | Choice | JsonSchema) -> CharDFA:
    """The minimal character automaton of a node (cached by node)."""
    return _automaton(node, "constraint")


@lru_cache(maxsize=256)
def _cached(node: Regex | Choice | JsonSchema) -> CharDFA:
    return _build(node, "constraint")


def _automaton(node: Regex | Choice | JsonSchema, path: str) -> CharDFA:
    try:
        return _cached(node)
    except ConstraintError as err:
        if err.path == "constraint" or err.path.startswith("constraint."):  # re-root at the caller's path
            suffix = err.path[len("constraint") :]
            raise ConstraintError(path + suffix, err.message) from None
        raise


def _build(node: Regex | Choice | JsonSchema, path: str) -> CharDFA:
    if isinstance(node, Regex):
        return build_char_dfa(parse_regex(node.text, path, node.search), path)
    if isinstance(node, Choice):
        return build_char_dfa(full(alt([literal(o) for o in node.options])), path)
    from pc_core.constraints.json_nesting import ANY_OBJECT_STATES, FREE_STATES
    from pc_core.constraints.json_schema import schema_ir

    budget = ANY_OBJECT_STATES if node.any_object else FREE_STATES
    body = schema_ir(json.loads(node.schema), path, node.whitespace, node.max_depth, budget, node.deep_tails)
    dfa = build_char_dfa(full(body), path)
    if not dfa.accept.any():
        raise ConstraintError(
            path, f"no JSON document satisfies the schema within max_depth={node.max_depth}"
        )
    if node.deep_tails:  # the skeleton's states loop on the mark (json_values._Skeleton), its own atom
        from pc_core.constraints.regex import DEEP_MARK

        dfa.deep = np.zeros(dfa.num_states, bool)
        if DEEP_MARK in dfa.starts_list:
            column = dfa.column_list[dfa.starts_list.index(DEEP_MARK)]
            dead = np.isin(np.arange(dfa.num_states), list(dfa.dead))
            dfa.deep = (dfa.trans[:, column] == np.arange(dfa.num_states)) & ~dead  # (S,) bool
            # a column shared with characters: no live state may loop on it (then no skeleton is reachable)
            if dfa.deep.any() and column in dfa.column_list[: dfa.starts_list.index(DEEP_MARK)]:
                raise AssertionError("the deep values' mark shares a column with text characters")
        dfa.deep_whitespace = node.whitespace
    return dfa


class JsonDocuments:
    """The documents a json_schema compiled alone accepts (compile_constraint's language for it): the
    character automaton with undeclared values past max_depth as a skeleton, and the JSON syntax beside it
    (json_syntax.py). `accepts(text)` like a CharDFA's."""

    def __init__(self, node: JsonSchema) -> None:
        from dataclasses import replace

        from pc_core.constraints.json_syntax import JsonSyntax

        self.dfa = char_automaton(replace(node, deep_tails=True))
        self.syntax = JsonSyntax(node.whitespace) if self.dfa.deep.any() else None

    @property
    def num_states(self) -> int:
        return self.dfa.num_states

    def accepts(self, text: str) -> bool:
        return self.dfa.accepts(text) and (self.syntax is None or self.syntax.accepts(text))


def full(body: tuple) -> tuple:
    """Whole-text match of an IR node: BOS and EOS around it (regex.py)."""
    from pc_core.constraints.regex import BOS, EOS

    return seq([("set", ((BOS, BOS),)), body, ("set", ((EOS, EOS),))])


def holds(node: Regex | Choice | JsonSchema, text: str) -> bool:
    """The independent check: Python's `re`, string equality, json + jsonschema (no automaton)."""
    if isinstance(node, Regex):
        return bool((re.search if node.search else re.fullmatch)(node.text, text))
    if isinstance(node, Choice):
        return text in node.options
    return json_holds(json.loads(node.schema), text, node.whitespace)


def json_holds(schema: Any, text: str, whitespace: str = "compact") -> bool:
    import jsonschema

    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if whitespace == "compact" and not _compact(text):
        return False
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(value)


def _compact(text: str) -> bool:
    """No whitespace outside strings (scanning string literals by their quotes and escapes)."""
    outside = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    return not any(ch in outside for ch in " \t\r\n")
