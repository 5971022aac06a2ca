"""Compile a constraint into a minimal token-level DFA (docs/method.md §4).

The character-level automaton is the product of
  * a *tracker*: the text is inside a word or inside a gap (the separator text between words). A word is
    DEAD when it cannot become a word the constraint mentions, else a live prefix (casefolded and/or exact);
    a gap is NONE when it cannot become a gap the constraint's phrases mention, else a live gap prefix;
  * the word-level matcher of the constraint (matchers.py), fed one symbol per finished word and, when the
    constraint has phrases, one gap symbol before each word.
Its states at token boundaries are explored breadth-first. Tokens are never run one by one per state: for
each tracker context (NONE, DEAD, a live gap, any live word) the vocabulary is partitioned, with numpy, into
groups of tokens that provably have the same effect (same tracker successor, same events), so a state costs
one matcher step per group. Afterwards the groups of all contexts are refined into global token classes, the
DFA is minimised (Moore) and classes with identical columns merge.

Characters at the byte level: a byte-level token may end inside a multi-byte UTF-8 character. Where the
constraint mentions non-ASCII characters, the tracker has states inside a character (pending_chars.py): a
token may end inside a character that starts like one the constraint mentions, and only tokens completing
it follow. Elsewhere (all-ASCII constraints, a suffix, stop strings, a blocklist mask) tracking every
partial character would multiply the automaton by ~300 classes (measured on the 50,257-token BPE: 17,683
reachable partial sequences, 313 behaviourally distinct), so tokens that split a character lead to the
sink, as do tokens with invalid bytes: every accepted token sequence is valid text with complete characters
and is judged exactly (vocab.py, byte_chars.py).

With a suffix or stop strings (`spec.Affixed`) the product gets a third part, the partial matches of those
texts with a flag each (affixes.py): a state is (tracker, matcher state, partial matches). Completing a stop
string or the suffix leads to an ended state, like EOS. `ends_with` nodes read each token's text
(matchers.EndsWithMatcher); tokens are grouped by what they do to it.

TokenDFA stores a (states x classes) successor table plus the class of every token; see dfa.py.

This module holds the entry points (compile_constraint, compile_key), the cache and the lazy switch; the
pieces: tracker.py (words and gaps), token_contexts.py (the vocabulary partition), exploration.py (the
breadth-first product), explicit.py (_Compiler: token classes and the successor table), minimise.py.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from pc_core.cache import LRUCache
from pc_core.constraints.blocklist import Blocklist, split_blocklist
from pc_core.constraints.char_tokens import char_only_dfa, compile_char_only
from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.explicit import _Compiler, stalls
from pc_core.constraints.json_syntax import token_bytes_for
from pc_core.constraints.nodes import Affixed, All, Constraint, canonical_json, keywords_by_polarity, walk
from pc_core.constraints.patterns import JsonSchema, char_automaton
from pc_core.constraints.spec import parse_constraint, split_affixes
from pc_core.constraints.state_bound import minimal_states_at_least
from pc_core.constraints.token_product import compile_folded, lazy_folded
from pc_core.constraints.vocab import vocab_tables
from pc_core.errors import ConstraintTooComplex
from pc_core.lazy_dfa import LazyDFA

DEFAULT_MAX_STATES = 250_000
"""Cap on the minimised DFA: what the compiler and the exact feasibility tables hold in memory, not what the
guide costs. The guide's cost depends on the model and device (H, bytes per value, live (step, state) pairs)
and is budgeted where the guide is built (pc_core.guide_budget); past that budget the factored guide runs
(pc_core.factored_guide). Exploration before minimisation may use 4x."""
DEFAULT_TIME_BUDGET_S = 10.0
LAZY_AFTER_STATES = 5_000
"""compile_constraint(lazy=True): the explicit automaton's state cap (so exploration.EXPLORE_FACTOR x that explored) before
the lazy one is used: a count, not a time, so the choice does not depend on the machine's speed."""
CACHE_BYTES = 256 * 2**20


def _deadline_check(deadline: float, budget_s: float) -> Any:
    def check() -> None:
        if time.perf_counter() > deadline:
            raise ConstraintTooComplex(
                "constraint", f"compilation exceeded its time budget of {budget_s:g}s", out_of_time=True
            )

    return check


def explain_unsatisfiable(constraint: Any, tokenizer: Any) -> str:
    """Why no text satisfies a constraint whose DFA cannot accept: a keyword it requires that this tokenizer
    cannot write (no token sequence spells it), else the logic itself."""
    body = split_affixes(constraint)[0]
    for keyword in keywords_by_polarity(body)[0]:
        dfa = compile_constraint(keyword, tokenizer)
        if dfa.steps_to_accept[dfa.initial_state] < 0:
            return (
                f"the keyword {keyword.text!r} cannot be written with this tokenizer: no sequence of its tokens "
                "spells it as valid UTF-8 (docs/method.md §3)"
            )
    return "no text satisfies it"


# ---------------------------------------------------------------------------------------------- cache

COMPILED: LRUCache[TokenDFA | ConstraintTooComplex] = LRUCache(
    "dfa", CACHE_BYTES, lambda v: v.nbytes if isinstance(v, TokenDFA) else 1024
)
"""Compiled DFAs and rejections, by (canonical constraint, tokenizer, cap, budget): a rejected constraint
costs a dictionary lookup the second time."""


def compile_key(
    spec: Any,
    tokenizer: Any,
    max_states: int,
    time_budget_s: float,
    blocklist_mask: bool = True,
    deep_values: bool = True,
) -> tuple:
    """The cache key of compile_constraint's result: equal keys, equal DFAs (or equal rejections)."""
    fingerprint = vocab_tables(tokenizer).fingerprint
    key = (canonical_json(parse_constraint(spec)), fingerprint, max_states, time_budget_s, blocklist_mask)
    return key if deep_values else (*key, "no deep values")


def compile_constraint(
    spec: Any,
    tokenizer: Any,
    max_states: int = DEFAULT_MAX_STATES,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    blocklist_mask: bool = True,
    lazy: bool = False,
    deep_values: bool = True,
) -> TokenDFA:
    """Compile a constraint spec (JSON-compatible or parsed) for `tokenizer` into a minimal TokenDFA.

    With `lazy`, the explicit automaton gets at most LAZY_AFTER_STATES states; past them (or the budget) a
    word-level constraint comes back as a LazyDFA (pc_core.lazy_dfa: explored as decoding goes, the same
    language, `accepts` and `step` alike; a fresh one per call, never cached); one with character nodes as a
    LazyProductDFA (constraints/lazy_product.py: explicit parts up to max_states, their product lazy).

    With `blocklist_mask`, a long list of forbidden single words inside a top-level `all` is left out of the
    DFA and enforced beside it (`dfa.blocklist`, see blocklist.py); the guide falls back to
    `blocklist_mask=False` (one exact product) where the two interact. Results (and ConstraintTooComplex
    rejections) are cached per (canonical constraint, tokenizer fingerprint, max_states, time budget, mode),
    LRU-bounded in bytes. Raises ConstraintError for malformed specs and ConstraintTooComplex beyond
    `max_states` / the budget.

    With `deep_values`, a json_schema alone lets its undeclared properties' values nest past max_depth: the
    DFA holds a skeleton of the deeper levels and `dfa.deep_values` the JSON syntax decoding enforces beside
    it (json_syntax.py); guides that cannot enforce it compile with `deep_values=False`.
    """
    constraint = parse_constraint(spec)
    if lazy:
        return _explicit_or_lazy(constraint, tokenizer, max_states, time_budget_s, blocklist_mask)
    tables = vocab_tables(tokenizer)
    key = compile_key(constraint, tokenizer, max_states, time_budget_s, blocklist_mask, deep_values)
    cached = COMPILED.get(key)
    if isinstance(cached, ConstraintTooComplex):
        raise cached.fresh()
    if cached is not None:
        return cached
    started = time.perf_counter()
    # with a suffix or stop strings the blocklist stays in the product (the mask would judge the suffix too)
    split = split_blocklist(constraint) if blocklist_mask and not isinstance(constraint, Affixed) else None
    try:
        char_dfa = char_only_dfa(constraint)  # regex / choice / JSON nodes alone: vectorised (char_tokens.py)
        has_schema = deep_values and any(isinstance(node, JsonSchema) for node in walk(constraint))
        tokens = token_bytes_for(tokenizer) if has_schema else None  # deep values: the syntax reads bytes
        deep = tokens is not None and tokens.complete
        schema = _lone_schema(constraint) if deep else None
        if schema is not None:
            char_dfa = char_automaton(dataclasses.replace(schema, deep_tails=True))
        check = _deadline_check(time.perf_counter() + time_budget_s, time_budget_s)
        folded = None  # character nodes with keywords / word_count / ends_with: token_product.py
        if char_dfa is None and not isinstance(constraint, Affixed):
            folded = compile_folded(constraint, tables, max_states, check, deep)
        if folded is not None:
            dfa = folded
        elif char_dfa is not None:
            dfa = compile_char_only(char_dfa, tables, max_states, check)
        elif split is None:
            dfa = _Compiler(constraint, tables, max_states, time_budget_s).run()
        else:
            rest, blocked = split
            blocklist = Blocklist(blocked, tables)
            dfa = _Compiler(rest, tables, max_states, time_budget_s, blocklist).run()
    except ConstraintTooComplex as err:
        COMPILED.put(key, err.fresh())
        raise
    if dfa.deep_values is not None and not dfa.deep_values.exact_ways(dfa, tokens):
        # a deep detour is a shorter way on than every exact one: decoding could not take it (json_syntax.py)
        dfa = compile_constraint(
            constraint, tokenizer, max_states, time_budget_s, blocklist_mask, deep_values=False
        )
        COMPILED.put(key, dfa)
        return dfa
    dfa.compile_seconds = time.perf_counter() - started
    if dfa.deep_values is not None:  # `accepts` reads the tokens' bytes
        dfa.deep_values.tokens = tokens
    COMPILED.put(key, dfa)
    return dfa


def _lone_schema(constraint: Constraint) -> JsonSchema | None:
    """The json_schema a constraint is, alone or as the one part of an `all` (the factored guide's group)."""
    while isinstance(constraint, All) and len(constraint.children) == 1:
        constraint = constraint.children[0]
    return constraint if isinstance(constraint, JsonSchema) else None


def _explicit_or_lazy(
    constraint: Constraint, tokenizer: Any, max_states: int, time_budget_s: float, blocklist_mask: bool
) -> Any:
    """compile_constraint(lazy=True): the explicit automaton within min(max_states, LAZY_AFTER_STATES) states
    and the time budget, else lazy: constraints of character nodes (with keywords / word_count / ends_with)
    as a LazyProductDFA of explicit parts, the rest as a LazyDFA."""
    try:
        cap = min(max_states, LAZY_AFTER_STATES)
        least = 1 if isinstance(constraint, Affixed) else minimal_states_at_least(constraint)
        if least > cap:  # the attempt would fail (state_bound.py): lazy at once
            raise ConstraintTooComplex(
                "constraint", f"the minimal automaton has at least {least:,} states, above the cap of {cap}"
            )
        return compile_constraint(constraint, tokenizer, cap, time_budget_s, blocklist_mask)
    except ConstraintTooComplex as err:
        if stalls(constraint):  # test-only: no form of it compiles
            raise
        started = time.perf_counter()
        tables, check = vocab_tables(tokenizer), _deadline_check(started + time_budget_s, time_budget_s)
        # with character nodes: explicit automata up to max_states, their product lazy (token_product.py)
        dfa = None if isinstance(constraint, Affixed) else lazy_folded(constraint, tables, max_states, check)
        if dfa is None and char_only_dfa(constraint) is not None:  # regex / JSON past max_states
            raise
        dfa = LazyDFA(constraint, tables) if dfa is None else dfa
        dfa.note = f"explicit automaton: {err.message}"
        dfa.compile_seconds = time.perf_counter() - started
        return dfa
