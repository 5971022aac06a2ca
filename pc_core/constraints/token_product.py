"""Constraints that mix character nodes with keywords, word_count or ends_with, compiled at the token level
as an intersection of small token automata (docs/method.md §4, patterns).

`{"all": [{"json_schema": S}, {"keywords": ["refund"]}]}` used to go through the word-level compiler, which
steps every vocabulary group through the product (tracker x matcher x JSON automaton) per state: minutes at
V = 50,257. Here every child of the top-level `all` becomes a character DFA of its own (char_fold.py: the
JSON automaton; the keyword's "some form occurs as whole words"; ...), each is compiled to a TokenDFA by
the vectorised character path (char_tokens.compile_char_only: every distinct token text run through the
DFA once per reachable state; a keyword has ~20 states, so this costs about a vocabulary pass), and the
token DFAs are intersected:

  * tokens are classed by the tuple of their classes in the components (a few hundred tuples), so a product
    state costs one table lookup per tuple and component, never a pass over the vocabulary;
  * product states are explored breadth-first, vectorised per layer; a state where too few components can
    still accept collapses into one dead state (EOS from it: the rejecting end);
  * the result is minimised by the compiler's Moore refinement (minimise.py).

The same product gives `any` (at least 1 of n components accepts), `at_least k` and `at_most k` (at
least n - k of the children's negations, each negation folded into its child's character DFA). Each
component's token DFA is exact for its node (accepts a token sequence iff its decoded text satisfies the
node, tokens that split a character handled as char_bytes.py says), so the product is exact. A top-level
`not` or leaf is folded into one character DFA (char_fold.product) and compiled directly. Components are
cached per (node, vocabulary): a keyword's automaton is reused with every schema. None (the word-level
compiler) where char_fold declines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from pc_core.cache import LRUCache
from pc_core.constraints.char_fold import folded_char_dfa, part_dfas
from pc_core.constraints.char_tokens import char_only_dfa, compile_char_only
from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.json_syntax import DeepValues
from pc_core.constraints.lazy_product import LazyProductDFA
from pc_core.constraints.minimise import _minimise
from pc_core.constraints.nodes import All, AnyOf, AtLeast, AtMost, Not, canonical_json
from pc_core.constraints.patterns import JsonSchema, char_automaton
from pc_core.errors import ConstraintTooComplex

EXPLORE_FACTOR = 4
"""Product states explored before minimisation: at most this x the cap on minimal states."""

COMPONENTS: LRUCache[TokenDFA] = LRUCache("folded components", 64 * 2**20, lambda v: v.nbytes)
"""Token DFAs of the children of folded constraints by (canonical child, vocabulary fingerprint); one compiled
under any cap serves every cap it fits (the minimal automaton does not depend on the cap)."""


def compile_folded(
    constraint: object, tables: object, max_states: int, check: Callable, deep_values: bool = False
) -> TokenDFA | None:
    """The minimal TokenDFA of a constraint mixing character nodes with foldable word-level leaves
    (char_fold.py), or None when it is not one (the caller compiles it word-level). With `deep_values`, the
    one json_schema of an `all` lets undeclared values nest past max_depth (json_syntax.py)."""
    top = _top_level(constraint)
    if top is not None:
        children, k = top
        parts = part_dfas(constraint, children)
        if parts is None:
            return None
        schemas = [i for i, child in enumerate(children) if isinstance(child, JsonSchema)]
        if deep_values and k == len(children) and len(schemas) == 1:  # all: the text is the document
            child = children[schemas[0]]
            parts[schemas[0]] = (child, char_automaton(dataclasses.replace(child, deep_tails=True)))
        dfas = [_component(child, dfa, tables, max_states, check) for child, dfa in parts]
        return at_least(dfas, k, tables, max_states, check)
    folded = folded_char_dfa(constraint)
    return None if folded is None else compile_char_only(folded, tables, max_states, check)


def lazy_folded(
    constraint: object, tables: object, max_states: int, check: Callable
) -> LazyProductDFA | None:
    """The lazy form of a constraint of character nodes (lazy_product.py): a folded all / any / at_least /
    at_most as the product of its children's explicit automata, explored on demand; character nodes alone as
    their one explicit automaton (up to `max_states`). None for anything else, or when a part does not
    compile within `max_states` and the budget."""
    char_dfa = char_only_dfa(constraint)
    top = None if char_dfa is not None else _top_level(constraint)
    parts = None if top is None else part_dfas(constraint, top[0])
    try:
        if char_dfa is not None:
            return LazyProductDFA([compile_char_only(char_dfa, tables, max_states, check)], 1, tables)
        if parts is None:
            return None
        dfas = [_component(child, dfa, tables, max_states, check) for child, dfa in parts]
    except ConstraintTooComplex:
        return None
    return LazyProductDFA(dfas, top[1], tables)


def _top_level(constraint: object) -> tuple[tuple, int] | None:
    """(children, k) when the constraint is "at least k of these children": all / any / at_least / at_most
    (at most k of n: at least n - k of their negations); None for a leaf or `not`."""
    if isinstance(constraint, (All, AnyOf)) and constraint.children:  # nested alike: one level
        children = _flatten(constraint, type(constraint))
        return children, len(children) if isinstance(constraint, All) else 1
    if isinstance(constraint, AtLeast) and constraint.children:
        return constraint.children, constraint.k
    if isinstance(constraint, AtMost) and constraint.children:
        return tuple(Not(c) for c in constraint.children), len(constraint.children) - constraint.k
    return None


def _flatten(node: object, kind: type) -> tuple:
    """The children of nested `kind` nodes (all inside all, `keywords` shorthand included; any inside any)."""
    out: list = []
    for child in node.children:
        out.extend(_flatten(child, kind) if isinstance(child, kind) and child.children else (child,))
    return tuple(out)


def _component(child: object, char_dfa: object, tables: object, max_states: int, check: Callable) -> TokenDFA:
    key = (canonical_json(child), tables.fingerprint, getattr(char_dfa, "deep", None) is not None)
    found = COMPONENTS.get(key)
    if found is None or found.num_states > max_states:  # within a smaller cap: the same automaton
        found = compile_char_only(char_dfa, tables, max_states, check)
        COMPONENTS.put(key, found)
    return found


def at_least(dfas: list[TokenDFA], k: int, tables: object, max_states: int, check: Callable) -> TokenDFA:
    """The minimal TokenDFA accepting the token sequences at least k of `dfas` accept (k = len: their
    intersection; k = 1: their union), over one vocabulary."""
    if len(dfas) == 1 and k == 1:
        return dfas[0]
    eos = tables.eos_token_id
    letters, token_letter = np.unique(np.stack([d.token_class for d in dfas], axis=1), axis=0,
                                      return_inverse=True)  # fmt: skip
    token_letter = token_letter.reshape(-1)
    parts = len(dfas)
    sizes = np.array([d.num_states for d in dfas], np.int64)
    if float(np.prod(sizes.astype(np.float64))) >= 2.0**62:
        raise ConstraintTooComplex(
            "constraint", "the automaton's product is too large; simplify the constraint"
        )
    mult = np.concatenate([[1], np.cumprod(sizes)[:-1]]).astype(np.int64)
    live = [d.steps_to_accept >= 0 for d in dfas]
    dead_code = -1  # fewer than k components can still accept

    def codes_of(states: np.ndarray) -> np.ndarray:  # (..., parts) -> code, dead ones -> dead_code
        alive = np.zeros(states.shape[:-1], np.int64)
        for i in range(parts):
            alive += live[i][states[..., i]]
        return np.where(alive >= k, (states * mult).sum(axis=-1), dead_code)

    init = np.array([[d.initial_state for d in dfas]], np.int64)
    ids = {int((init[0] * mult).sum()): 0}
    frontier, tuples, rows = init, [init[0]], []
    cap = max_states * EXPLORE_FACTOR
    while len(frontier):
        check()
        succ = np.stack([d.transitions[frontier[:, i]][:, letters[:, i]] for i, d in enumerate(dfas)], axis=2)
        codes = codes_of(succ.astype(np.int64))  # (n, letters)
        uniq, inverse = np.unique(codes, return_inverse=True)
        new = [c for c in uniq.tolist() if c not in ids and c != dead_code]
        for c in new:
            ids[c] = len(ids)
        if len(ids) > cap:
            raise ConstraintTooComplex("constraint", f"more than {cap} automaton states before minimisation (cap "
                                       f"{max_states} after); simplify the constraint", states=len(ids),
                                       limit=max_states)  # fmt: skip
        rows.append(
            np.array([ids.get(c, dead_code) for c in uniq.tolist()], np.int64)[inverse.reshape(codes.shape)]
        )
        frontier = (np.array(new, np.int64)[:, None] // mult) % sizes if new else frontier[:0]
        tuples.extend(frontier)
    return _finish(dfas, k, rows, tuples, token_letter, int(token_letter[eos]), tables, max_states, check)


def _finish(dfas: list[TokenDFA], k: int, rows: list, tuples: list, token_letter: np.ndarray, eos_letter: int,
            tables: object, max_states: int, check: Callable) -> TokenDFA:  # fmt: skip
    """The explored table with the dead state (EOS: to the rejecting end) and the rejecting end appended.
    Banned: the tokens banned in more than len - k components (they leave fewer than k alive)."""
    n, n_letters = len(tuples), rows[0].shape[1]
    dead, end_no = n, n + 1
    delta = np.concatenate(rows + [np.full((2, n_letters), dead, np.int64)])
    delta[delta < 0] = dead
    delta[dead, eos_letter] = end_no
    delta[end_no] = end_no
    states = np.array(tuples, np.int64)
    accepting = np.zeros(n, np.int64)
    ended = np.ones(n, bool)  # EOS ends every component at once
    for i, d in enumerate(dfas):
        accepting += d.accepting[states[:, i]]
        ended &= d.ended[states[:, i]]
    accepting = accepting >= k
    accepting = np.concatenate([accepting, [False, False]])
    ended = np.concatenate([ended, [False, True]])
    banned = np.zeros(len(token_letter), np.int64)
    for d in dfas:
        if d.banned_tokens is not None:
            banned += d.banned_tokens
    banned = banned > len(dfas) - k
    deep = [(i, d.deep_values) for i, d in enumerate(dfas) if d.deep_values is not None]
    if not deep or k != len(dfas):
        return _minimise(delta, token_letter.astype(np.int32), 0, accepting, ended, tables, max_states, check,
                         banned=banned)  # fmt: skip
    ((i, values),) = deep  # an all with one json_schema: a product state is deep where that part is
    flags = np.concatenate([values.deep[states[:, i]], [False, False]])
    dfa, flags = _minimise(delta, token_letter.astype(np.int32), 0, accepting, ended, tables, max_states,
                           check, banned=banned, flags=flags)  # fmt: skip
    if flags.any():
        dfa.deep_values = DeepValues(flags, values.whitespace, tables.fingerprint, tables.vocab_size)
    return dfa
