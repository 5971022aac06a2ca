"""The explicit compiler's fast paths (issue 26 §2) give exactly the automaton of the simple ones: the
level-at-a-time exploration (frontier_exploration.FrontierExploration) the same states, numbered alike, as the
state-at-a-time one (_Exploration); the minimisation (minimise.py: Moore over event edges, exact stability
check, hashed column merging) the same minimal DFA as plain Moore refinement over the token-level table."""

import random

import numpy as np
import pytest

from pc_core.constraints.blocklist import Blocklist, split_blocklist
from pc_core.constraints.explicit import _Compiler
from pc_core.constraints.frontier_exploration import FrontierExploration, _PairMap
from pc_core.constraints.minimise import _minimise, _moore_blocks, _unique_columns
from pc_core.constraints.spec import parse_constraint, with_affixes
from pc_core.constraints.vocab import vocab_tables
from pc_core.errors import ConstraintTooComplex

WORDS = ["dog", "cat", "pan", "the", "ha", "café", "New York", "ha ha"]


def _random_constraint(rng: random.Random, depth: int = 0) -> dict:
    """Nested constraints over the whole word-level language: keywords and phrases, counts, positions,
    word counts, `ends_with`, and the boolean operators."""
    kinds = ["kw", "kw", "count", "at_least", "word_at", "word_count", "ends_with", "all", "any", "not"]
    kind = rng.choice(kinds if depth < 2 else kinds[:7])
    word = lambda: rng.choice(WORDS)
    options = lambda: {"inflections": rng.random() < 0.5, "case": rng.choice(["natural", "sensitive", "any"])}
    if kind == "kw":
        return {"keyword": word(), **options()}
    if kind == "count":
        lo = rng.randint(0, 2)
        return {"count": {"keyword": word(), **options()}, "min": lo, "max": lo + rng.randint(0, 2)}
    if kind == "at_least":
        children = [_random_constraint(rng, depth + 1) for _ in range(rng.randint(1, 3))]
        return {"at_least": rng.randint(0, len(children)), "of": children}
    if kind == "word_at":
        return {"word_at": rng.choice([-2, -1, 1, 2]), "word": rng.choice(WORDS[:6]), "case": "any"}
    if kind == "word_count":
        lo = rng.randint(0, 4)
        return {"word_count": {"min": lo, "max": lo + rng.randint(0, 4)}}
    if kind == "ends_with":
        return {"ends_with": rng.choice([".", " dog", "!", "é"])}
    if kind in ("all", "any"):
        return {kind: [_random_constraint(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    return {"not": _random_constraint(rng, depth + 1)}


def _specs() -> list:
    rng = random.Random(26)
    specs = [_random_constraint(rng) for _ in range(36)]
    specs += [
        {"all": [{"count": w, "min": 1, "max": 1} for w in ["dog", "cat", "pan", "the"]]},  # "once"
        {"keywords": ["dog", "cat", "pan", "the", "ha"]},
        {"all": [{"keywords": ["dog", "cat"]}, {"word_count": {"min": 4, "max": 9}}]},
        {"all": ["dog", *({"not": w} for w in ["cat", "pan", "the", "ha", "sun"])]},  # a blocklist beside
        {"tokens": [5, 9]},
        {"any": [{"tokens": [7]}, "dog"]},
    ]
    return specs


SPECS = _specs()


def _compiler(spec, tables) -> _Compiler:
    constraint = parse_constraint(spec)
    split = split_blocklist(constraint)
    if split is not None:
        rest, blocked = split
        return _Compiler(rest, tables, 8192, 600, Blocklist(blocked, tables))
    return _Compiler(constraint, tables, 8192, 600)


@pytest.mark.parametrize("index", range(len(SPECS)))
def test_frontier_exploration_gives_the_same_automaton(tokenizer, index):
    """Identical tables (not only isomorphic): states are numbered in the same order of first appearance."""
    tables = vocab_tables(tokenizer)
    spec = SPECS[index]
    wide = _compiler(spec, tables).run(frontier=True)
    narrow = _compiler(spec, tables).run(frontier=False)
    assert wide.content_key == narrow.content_key, spec
    assert wide.num_states == narrow.num_states > 1


def _reference_minimal(table: np.ndarray, accepting: np.ndarray, ended: np.ndarray) -> np.ndarray:
    """Plain Moore refinement over exact rows: (n,) block of each state, numbered by first appearance."""
    block = np.unique(accepting * 2 + ended, return_inverse=True)[1].reshape(-1)
    while True:
        rows = np.concatenate([block[:, None], block[table]], axis=1)
        new = np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
        if new.max() == block.max():
            break
        block = new
    first = np.unique(block, return_index=True)[1]
    renumber = np.empty(len(first), np.int64)
    renumber[np.argsort(first)] = np.arange(len(first))
    return renumber[block]


def _token_table(compiler: _Compiler) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The explored automaton over single tokens (states x vocabulary), straight from the exploration."""
    wide = FrontierExploration(compiler)
    wide.run()
    n = len(wide.accepting)
    table = np.repeat(np.arange(n)[:, None], compiler.tables.vocab_size, axis=1)  # ended states: absorbing
    for block in wide.blocks:
        groups = compiler.contexts[block.name].group_of_token
        table[block.states] = block.succ[:, block.inverse[groups]]
    return table, wide.accepting, wide.ended


@pytest.mark.parametrize("index", range(0, len(SPECS) - 3, 2))
def test_minimal_dfa_matches_plain_moore(tokenizer, index):
    """The compiled DFA, token by token, is the reference minimisation of the explored automaton (same
    block numbering), and its classes are the distinct columns (no two classes alike)."""
    tables = vocab_tables(tokenizer)
    spec = SPECS[index]
    if split_blocklist(parse_constraint(spec)) is not None:
        pytest.skip("a blocklist mask changes the table beside the DFA")
    table, accepting, ended = _token_table(_Compiler(parse_constraint(spec), tables, 8192, 600))
    block = _reference_minimal(table, accepting, ended)
    m = int(block.max()) + 1
    reps = np.zeros(m, np.int64)
    reps[block] = np.arange(len(block))
    expected = block[table[reps]]  # (m, V)
    dfa = _Compiler(parse_constraint(spec), tables, 8192, 600).run()
    assert dfa.num_states == m, spec
    assert np.array_equal(dfa.transitions[:, dfa.token_class], expected), spec
    assert np.array_equal(dfa.accepting, accepting[reps]) and np.array_equal(dfa.ended, ended[reps])
    assert len(np.unique(dfa.transitions.T, axis=0)) == dfa.num_classes


@pytest.mark.parametrize("seed", range(40))
def test_minimise_matches_plain_moore_on_random_automata(seed):
    """Random automata whose states come in groups of rows that repeat columns (as the explorer's events do),
    some groups promising more than their rows hold (the check must catch it): _moore_blocks is the plain
    refinement, and _minimise merges exactly the identical columns, in np.unique's order."""
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(2, 400)), int(rng.integers(1, 30))
    target = rng.integers(0, max(2, n // int(rng.integers(1, 20))), size=n)  # few successors: many merges
    delta = np.empty((n, c), np.int32)
    groups = []
    for states in np.array_split(rng.permutation(n), int(rng.integers(1, 8))):
        class_event = rng.integers(0, int(rng.integers(1, c + 1)), size=c)
        events = target[rng.integers(0, n, size=(len(states), class_event.max() + 1))]
        delta[states] = events[:, class_event]
        if rng.random() < 0.5:  # a broken promise: entries that differ from their event's
            for s in states[:3]:
                delta[s, rng.integers(0, c)] = rng.integers(0, n)
        groups.append((states, class_event))
    accepting = rng.random(n) < 0.3
    ended = np.zeros(n, bool)
    expected = _reference_minimal(delta.astype(np.int64), accepting, ended)
    assert np.array_equal(_moore_blocks(delta, accepting, ended, None, groups), expected)
    assert np.array_equal(_moore_blocks(delta, accepting, ended), expected)
    m = int(expected.max()) + 1
    reps = np.zeros(m, np.int64)
    reps[expected] = np.arange(n)
    small = expected[delta[reps]]
    _, col_reps, col_of = np.unique(small.T, axis=0, return_index=True, return_inverse=True)
    found_reps, found_of = _unique_columns(small)
    assert np.array_equal(found_reps, col_reps) and np.array_equal(found_of, col_of.reshape(-1))


def test_unique_columns_orders_columns_that_agree_on_many_rows():
    """Columns equal on their first hundreds of rows are ordered by the rows where they differ."""
    table = np.zeros((1000, 6), np.int64)
    table[700:, 1] = 3
    table[999, 2] = 1
    table[500:, 4] = 2
    table[:, 5] = table[:, 1]
    reps, of = _unique_columns(table)
    _, col_reps, col_of = np.unique(table.T, axis=0, return_index=True, return_inverse=True)
    assert reps.tolist() == col_reps.tolist() == [0, 2, 1, 4] and of.tolist() == col_of.reshape(-1).tolist()


def test_affixes_take_the_state_at_a_time_path(tokenizer):
    """A suffix or stop strings: partial matches are stepped per state; the result is still minimal."""
    tables = vocab_tables(tokenizer)
    spec = with_affixes({"keyword": "dog"}, suffix=" the end", stop=("!",))
    dfa = _Compiler(spec, tables, 8192, 600).run()
    again = _minimise(dfa.transitions, dfa.token_class, 0, dfa.accepting, dfa.ended, tables, 10**6)
    assert again.num_states == dfa.num_states and np.array_equal(again.transitions, dfa.transitions)
    with pytest.raises(AssertionError):
        FrontierExploration(_Compiler(spec, tables, 8192, 600))


def test_both_explorations_stop_at_the_same_caps(tokenizer):
    """The state caps hold alike: a cap is refused by the level-at-a-time exploration exactly when the
    state-at-a-time one refuses it (it explores the same states)."""
    tables = vocab_tables(tokenizer)
    spec = parse_constraint({"all": [{"count": w, "min": 1, "max": 1} for w in ["dog", "cat", "pan"]]})
    outcomes = set()
    for cap in [20, 60, 100, 106, 107, 150, 333, 334, 400]:  # 426 explored, 334 minimal
        results = []
        for frontier in (True, False):
            try:
                results.append(_Compiler(spec, tables, cap, 600).run(frontier=frontier).content_key)
            except ConstraintTooComplex as err:
                results.append(("refused", err.message))
        assert results[0] == results[1], cap
        outcomes.add(isinstance(results[0], tuple))
    assert outcomes == {True, False}


def test_pair_map_matches_a_dict_across_the_dense_limit(monkeypatch):
    """(a, b) -> value look-ups agree with a dict, in the dense table and after it moves to sorted arrays."""
    monkeypatch.setattr(_PairMap, "DENSE", 2000)
    rng = np.random.default_rng(0)
    found, expected = _PairMap(), {}
    for step in range(30):
        high = 8 + 6 * step  # the keys grow: the table doubles, then passes the limit
        a, b = rng.integers(0, high, size=(2, 50))
        pairs = {(int(x), int(y)) for x, y in zip(a, b)} - set(expected)
        if pairs:
            new_a, new_b = (np.array(c, np.int64) for c in zip(*sorted(pairs)))
            values = rng.integers(0, 10**9, size=len(pairs))
            found.insert(new_a, new_b, values)
            expected.update(zip(sorted(pairs), values.tolist()))
        qa, qb = rng.integers(0, high + 5, size=(2, 200))
        want = [expected.get((int(x), int(y)), -1) for x, y in zip(qa, qb)]
        assert found.get(qa, qb).tolist() == want, step
    assert found.table is None  # the sorted arrays were used


@pytest.mark.parametrize("index", [0, 36, 37, 39])
def test_frontier_exploration_with_sorted_maps(tokenizer, monkeypatch, index):
    """Past the dense tables' limit the look-ups go to sorted arrays: still the same automaton."""
    monkeypatch.setattr(_PairMap, "DENSE", 64)
    tables = vocab_tables(tokenizer)
    spec = SPECS[index]
    assert (
        _compiler(spec, tables).run(frontier=True).content_key
        == _compiler(spec, tables).run(frontier=False).content_key
    )
