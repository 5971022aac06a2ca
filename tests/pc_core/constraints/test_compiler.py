"""The token DFA must agree with the independent text checker on every tokenization."""

import random

import numpy as np
import pytest
from byte_support import breaks_characters, has_banned_token, splittable_chars
from tiny_models import random_text

from pc_core import check_ids, compile_constraint
from pc_core.constraints.compiler import DEFAULT_MAX_STATES
from pc_core.constraints.minimise import _minimise
from pc_core.errors import ConstraintError, ConstraintTooComplex

WORDS = [
    "dog",
    "dogs",
    "Dog",
    "DOG",
    "dogma",
    "hotdog",
    "cat",
    "cats",
    "category",
    "Cat",
    "frisbee",
    "frisbees",
    "catch",
    "caught",
    "catching",
    "New",
    "York",
    "new",
    "york",
    "pan",
    "pans",
    "vegetable",
    "the",
    "a",
    "run",
    "ran",
    "running",
    "wake",
    "coffee",
    "hot",
    "café",
    "日本",
    "under_score",
    "42",
    "well",
    "known",
    "rock",
    "n",
    "roll",
    "COFFEE",
    "cOffEE",
    "Coffee",
    "fish",
    "fishing",
    "Well",
    "KNOWN",
]
SEPARATORS = [" ", " ", " ", ", ", ". ", "!", "\n", " - ", "  ", "'", "😀", " 😀 ", "-", " '", "' ", "."]

CONSTRAINTS = [
    {"keywords": ["dog"]},
    {"keywords": ["dog", "frisbee", "catch"]},
    {"keyword": "cat", "inflections": False},
    {"keyword": "Dog", "case_sensitive": True},
    {"keyword": "New York", "inflections": False},
    {"keyword": "New York", "inflections": False, "case_sensitive": True},
    {"keyword": "hot dog"},
    {"keyword": "run", "variants": ["jog", "sprint"]},
    {"keyword": "café"},
    {"keyword": "日本", "inflections": False},
    {"keyword": "under_score"},
    {"word_at": 1, "word": "the"},
    {"word_at": 3, "word": "pan"},
    {"all": [{"word_at": 3, "word": "pan"}, {"word_at": 5, "word": "vegetable"}]},
    {"word_count": {"min": 2, "max": 5}},
    {"word_count": {"min": 3}},
    {"word_count": {"max": 0}},
    {"forbidden": ["cat", "dog"]},
    {"ordered": ["dog", "frisbee"]},
    {"ordered": ["the", "the", "dog"]},
    {"ordered": ["hot dog", "dog"]},
    {"not": {"keywords": ["dog", "cat"]}},
    {"any": [{"keyword": "pan"}, {"all": ["cat", {"not": "dog"}]}]},
    {"all": ["dog", {"word_count": {"min": 1, "max": 6}}, {"forbidden": ["cat"]}]},
    {"any": [{"word_at": 2, "word": "dog"}, {"ordered": ["cat", "pan"]}]},
    {"keyword": "coffee", "case": "any"},
    {"keyword": "Coffee", "case": "sensitive"},
    {"keyword": "well-known"},
    {"keyword": "New  York"},
    {"keyword": "rock 'n' roll", "inflections": False},
    {"keyword": "cafe\u0301"},
    {"keyword": "run", "pos": "verb"},
    {"keyword": "fish", "pos": "noun"},
    {"forbidden": ["cat", "dog", "pan", "the", "coffee"]},
    {"all": ["frisbee", {"forbidden": ["cat", "dog", "pan", "the", "new"], "case": "any"}]},
    {"ordered": ["New York", "dog"]},
    {"all": [{"keyword": "well-known", "case": "any"}, {"word_count": {"max": 5}}]},
]


def _token_texts(tokenizer):
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def _random_text(rng):
    return random_text(rng, WORDS, SEPARATORS)


def _tokenizations(tokenizer, text, rng):
    """The canonical encoding plus encodings split at every character position (a few, sampled)."""
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)
    out = [encode(text)]
    positions = list(range(1, len(text)))
    for i in rng.sample(positions, min(4, len(positions))):
        out.append(encode(text[:i]) + encode(text[i:]))
    # three pieces, to cross several boundaries
    if len(text) > 3:
        i, j = sorted(rng.sample(positions, 2))
        out.append(encode(text[:i]) + encode(text[i:j]) + encode(text[j:]))
    return out


def _sequences(tokenizer, seed, n_text=60, n_random=80):
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)
    seqs = []
    for _ in range(n_text):
        for ids in _tokenizations(tokenizer, _random_text(rng), rng):
            seqs.append(ids)
            if rng.random() < 0.3:
                seqs.append(ids + [eos] + [rng.randrange(vocab) for _ in range(3)])
    for _ in range(n_random):
        seqs.append([rng.randrange(vocab) for _ in range(rng.randint(0, 10))])
    return seqs


@pytest.mark.parametrize("spec", CONSTRAINTS, ids=[str(i) for i in range(len(CONSTRAINTS))])
def test_dfa_agrees_with_text_checker(tokenizer, spec):
    dfa = compile_constraint(spec, tokenizer)
    assert dfa.vocab_size == len(tokenizer)
    disagreements = []
    seqs = _sequences(tokenizer, seed=hash(str(spec)) % 1000)
    splittable = splittable_chars(spec)  # characters tokens may split (byte_chars.py)
    for ids in seqs:
        expected = check_ids(spec, tokenizer, ids) and not breaks_characters(tokenizer, ids, splittable)
        if dfa.accepts(ids) != expected:
            disagreements.append((ids, tokenizer.decode(ids), expected))
    assert not disagreements, disagreements[:5]


def _random_constraint(rng, depth=0):
    kind = rng.choice(["kw", "kw", "phrase", "all", "any", "not", "ordered", "word_at", "count", "forbidden"])
    if depth >= 2 and kind in ("all", "any", "not"):
        kind = "kw"
    word = lambda: rng.choice(["dog", "cat", "pan", "frisbee", "new", "the", "run", "catch"])
    case = lambda: rng.choice(["natural", "natural", "sensitive", "any"])
    if kind == "kw":
        return {"keyword": word(), "inflections": rng.random() < 0.5, "case": case()}
    if kind == "phrase":
        gap = rng.choice([" ", " ", "-", ", "])
        return {"keyword": f"{word()}{gap}{word()}", "inflections": rng.random() < 0.5, "case": case()}
    if kind in ("all", "any"):
        return {kind: [_random_constraint(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if kind == "not":
        return {"not": _random_constraint(rng, depth + 1)}
    if kind == "ordered":
        return {"ordered": [word() for _ in range(rng.randint(1, 3))]}
    if kind == "word_at":
        return {"word_at": rng.randint(1, 4), "word": word(), "inflections": rng.random() < 0.5}
    if kind == "count":
        lo = rng.randint(0, 4)
        return {"word_count": {"min": lo, "max": lo + rng.randint(0, 4)}}
    return {"forbidden": [word() for _ in range(rng.randint(1, 6))], "case": case()}


@pytest.mark.parametrize("seed", range(12))
def test_random_nested_constraints_agree(tokenizer, seed):
    rng = random.Random(1000 + seed)
    spec = _random_constraint(rng)
    dfa = compile_constraint(spec, tokenizer, max_states=4096)
    for ids in _sequences(tokenizer, seed=seed, n_text=40, n_random=40):
        expected = check_ids(spec, tokenizer, ids) and not has_banned_token(tokenizer, ids)
        assert dfa.accepts(ids) == expected, (spec, ids, tokenizer.decode(ids))


def test_tokens_constraint_matches_ids_not_text(tokenizer):
    pattern = tokenizer.encode(" dog", add_special_tokens=False) + tokenizer.encode(
        ".", add_special_tokens=False
    )
    dfa = compile_constraint({"tokens": pattern}, tokenizer)
    assert dfa.accepts([5, *pattern, 7])
    assert not dfa.accepts(pattern[:-1])
    assert not dfa.accepts([tokenizer.eos_token_id, *pattern])
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.choice(pattern + [rng.randrange(len(tokenizer))]) for _ in range(rng.randint(0, 8))]
        expected = check_ids({"tokens": pattern}, tokenizer, ids) and not has_banned_token(tokenizer, ids)
        assert dfa.accepts(ids) == expected


def _accepts_text(dfa, tokenizer, text):
    return dfa.accepts(tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize(
    "spec, text, expected",
    [
        ({"keyword": "cat"}, " the cats sat", True),
        ({"keyword": "cat"}, " a category", False),
        ({"keyword": "cat", "inflections": False}, " the cats sat", False),
        ({"keyword": "cat", "inflections": False}, " the cat.", True),
        ({"keyword": "dog"}, " DOGS bark", True),
        ({"keyword": "Dog", "case_sensitive": True}, " dog", False),
        ({"keyword": "Dog", "case_sensitive": True}, " Dog", True),
        ({"keyword": "New York", "inflections": False}, " in new york", True),
        ({"keyword": "New York", "inflections": False}, " in New\nYork!", True),
        ({"keyword": "New York", "inflections": False}, " in New Yorkshire", False),
        ({"word_at": 3, "word": "pan"}, "  , the hot pan", True),
        ({"word_at": 3, "word": "pan"}, " - a pan is hot", False),
        ({"word_at": 1, "word": "the"}, "...The end", True),
        ({"word_count": {"min": 2, "max": 3}}, " one, two", True),
        ({"word_count": {"min": 2, "max": 3}}, " one two three four", False),
        ({"ordered": ["wake", "coffee"]}, " I wake up, then coffee", True),
        ({"ordered": ["wake", "coffee"]}, " coffee, then I wake", False),
        ({"not": {"keyword": "cat"}}, " a category", True),
        ({"forbidden": ["cat"]}, " the cats", False),
    ],
)
def test_named_cases(tokenizer, spec, text, expected):
    dfa = compile_constraint(spec, tokenizer)
    assert _accepts_text(dfa, tokenizer, text) is expected
    # a different tokenization of the same text: one token per character
    ids = [t for ch in text for t in tokenizer.encode(ch, add_special_tokens=False)]
    assert tokenizer.decode(ids) == text
    assert dfa.accepts(ids) is expected


def test_keyword_across_token_boundaries(tokenizer):
    dfa = compile_constraint({"keyword": "frisbee"}, tokenizer)
    text = " a frisbee!"
    for i in range(1, len(text)):
        ids = tokenizer.encode(text[:i], add_special_tokens=False) + tokenizer.encode(
            text[i:], add_special_tokens=False
        )
        assert dfa.accepts(ids), (i, tokenizer.convert_ids_to_tokens(ids))


def test_structure_reachable_minimal_and_ended(tokenizer):
    dfa = compile_constraint({"keywords": ["dog", "frisbee"]}, tokenizer)
    # every state is reachable from the initial one
    seen, frontier = {dfa.initial_state}, [dfa.initial_state]
    while frontier:
        s = frontier.pop()
        for t in set(dfa.transitions[s].tolist()) - seen:
            seen.add(t)
            frontier.append(t)
    assert seen == set(range(dfa.num_states))

    # minimising again changes nothing
    class Tables:
        eos_token_id = dfa.eos_token_id
        fingerprint = dfa.tokenizer_fingerprint

    Tables.banned = dfa.banned_tokens
    Tables.p_id = 1 - dfa.token_block
    again = _minimise(dfa.transitions, dfa.token_class, 0, dfa.accepting, dfa.ended, Tables, 10**6)
    assert again.num_states == dfa.num_states
    # EOS leads to an absorbing ended state that remembers acceptance
    eos = tokenizer.eos_token_id
    for s in range(dfa.num_states):
        if dfa.is_ended(s):
            assert set(dfa.transitions[s].tolist()) == {s}
        else:
            end = dfa.step(s, eos)
            assert dfa.is_ended(end) and dfa.is_accepting(end) == dfa.is_accepting(s)
    # classes are the coarsest: no two columns are identical
    assert len(np.unique(dfa.transitions.T, axis=0)) == dfa.num_classes


def test_default_successor_and_exceptions_describe_transitions(tokenizer):
    dfa = compile_constraint({"keywords": ["dog", "frisbee"]}, tokenizer)
    for s in range(dfa.num_states):
        tokens, succ = dfa.exceptions(s)
        full = np.full(dfa.vocab_size, dfa.default_successor[s])
        full[tokens] = succ
        assert np.array_equal(full, dfa.transitions[s][dfa.token_class])


def test_steps_to_accept(tokenizer):
    dfa = compile_constraint({"keywords": ["dog", "cat", "pan"]}, tokenizer)
    assert dfa.steps_to_accept[dfa.initial_state] == 3
    assert dfa.can_accept_within(3) and not dfa.can_accept_within(2)
    assert compile_constraint({"forbidden": ["dog"]}, tokenizer).steps_to_accept[0] == 0


def test_cache_returns_same_dfa(tokenizer):
    a = compile_constraint({"keywords": ["dog", "cat"]}, tokenizer)
    b = compile_constraint({"all": [{"keyword": "dog"}, "cat"]}, tokenizer)
    assert a is b


def test_errors(tokenizer):
    with pytest.raises(ConstraintError, match="outside the vocabulary"):
        compile_constraint({"tokens": [len(tokenizer)]}, tokenizer)
    with pytest.raises(ConstraintError) as info:
        compile_constraint({"keywords": ["dog", ""]}, tokenizer)
    assert info.value.path == "constraint.keywords[1]"


def test_huge_conjunction_fails_fast_with_numbers(big_tokenizer):
    words = [f"w{i}x" for i in range(200)]
    # a budget it cannot run out of: the size check refuses it
    with pytest.raises(ConstraintTooComplex) as info:
        compile_constraint({"keywords": words}, big_tokenizer, time_budget_s=600)
    assert not info.value.out_of_time and "2^200" in str(info.value)  # before exploring: no state was built
    assert info.value.limit == DEFAULT_MAX_STATES
    assert info.value.states > info.value.limit
    assert "200" in str(info.value)


def test_state_cap_raises_typed_error(tokenizer):
    with pytest.raises(ConstraintTooComplex) as info:
        compile_constraint({"word_count": {"min": 100, "max": 200}}, tokenizer, max_states=50)
    assert info.value.limit == 50 and info.value.states > 50


@pytest.mark.parametrize("index", range(len(CONSTRAINTS) - 12, len(CONSTRAINTS)))
def test_new_semantics_agree_on_the_big_vocabulary(big_tokenizer, index):
    spec = CONSTRAINTS[index]
    dfa = compile_constraint(spec, big_tokenizer)
    for ids in _sequences(big_tokenizer, seed=index, n_text=30, n_random=40):
        expected = check_ids(spec, big_tokenizer, ids) and not has_banned_token(big_tokenizer, ids)
        assert dfa.accepts(ids) == expected, (spec, ids, big_tokenizer.decode(ids))


def test_big_vocabulary_random_sequences(big_tokenizer):
    spec = {"all": ["dog", {"keyword": "New York", "inflections": False}, {"word_count": {"min": 3}}]}
    dfa = compile_constraint(spec, big_tokenizer)
    rng = random.Random(0)
    seqs = _sequences(big_tokenizer, seed=1, n_text=30, n_random=100)
    seqs += [big_tokenizer.encode(" New York has a dog", add_special_tokens=False)]
    hits = 0
    for ids in seqs:
        expected = check_ids(spec, big_tokenizer, ids) and not has_banned_token(big_tokenizer, ids)
        hits += expected
        assert dfa.accepts(ids) == expected, (ids, big_tokenizer.decode(ids))
    assert hits >= 1
    assert rng  # seeded generator used above


def test_token_block_says_whether_a_token_continues_a_word(tokenizer):
    dfa = compile_constraint({"keywords": ["dog"]}, tokenizer)
    (continues,) = tokenizer.encode("dog", add_special_tokens=False)[:1]
    (starts,) = tokenizer.encode(" dog", add_special_tokens=False)[:1]
    assert dfa.token_block[continues] == 0 and dfa.token_block[starts] == 1
    assert dfa.token_block[tokenizer.eos_token_id] == 1
