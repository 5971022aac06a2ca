"""Counting operators (docs/method.md §3): `count`, `at_least` / `at_most`, `word_at` from the end, and the
empty `all` (true) / `any` (false). Each is defined by the independent text checker and the compiled DFA must
agree with it on every tokenisation: named cases, then property tests on random and adversarial token
sequences (keyword-dense texts, texts split at every kind of boundary, random pieces of keywords), on the
test tokenizer and on every tokenizer family."""

import random

import pytest
from byte_support import breaks_characters, splittable_chars
from tokenizer_families import FAMILIES, build_family, plain_ids, resplit

from pc_core import check_ids, check_text, compile_constraint
from pc_core.constraints.nodes import (
    All,
    AnyOf,
    AtLeast,
    AtMost,
    Count,
    Keyword,
    WordAt,
    canonical_json,
    keywords_by_polarity,
)
from pc_core.constraints.spec import parse_constraint
from pc_core.errors import ConstraintError


def kw(word, **options):
    return {"keyword": word, **options}


# ------------------------------------------------------------------------------------------------ parsing


def test_empty_all_is_true_and_empty_any_is_false(tokenizer):
    assert parse_constraint({"all": []}) == All(())
    assert parse_constraint({"any": []}) == AnyOf(())
    for text in ["", " dog", " a cat sat."]:
        assert check_text({"all": []}, text) is True
        assert check_text({"any": []}, text) is False
        assert check_text({"not": {"any": []}}, text) is True
    dfa = compile_constraint({"all": []}, tokenizer)
    assert dfa.accepts([]) and dfa.accepts(tokenizer.encode(" the dog ran", add_special_tokens=False))
    never = compile_constraint({"any": []}, tokenizer)
    assert never.steps_to_accept[never.initial_state] < 0  # unsatisfiable: the service answers 422
    assert compile_constraint({"all": ["dog", {"all": []}]}, tokenizer).accepts(
        tokenizer.encode(" a dog", add_special_tokens=False)
    )


def test_counting_nodes_parse_and_round_trip():
    assert parse_constraint({"count": "dog", "min": 2, "max": 2}) == Count(Keyword("dog"), 2, 2)
    assert parse_constraint({"count": kw("New York", case="any"), "min": 1}) == Count(
        Keyword("New York", case="any"), 1, None
    )
    beside = parse_constraint({"count": "dog", "max": 1, "inflections": False})
    assert beside == Count(Keyword("dog", inflections=False), 0, 1)
    assert parse_constraint({"at_least": 2, "of": ["a", "b", "c"]}) == AtLeast(
        2, (Keyword("a"), Keyword("b"), Keyword("c"))
    )
    assert parse_constraint({"at_most": 0, "of": []}) == AtMost(0, ())
    assert parse_constraint({"word_at": -1, "word": "pan"}) == WordAt(-1, Keyword("pan", inflections=False))
    for spec in [
        {"count": "dog", "min": 2, "max": 3},
        {"at_least": 1, "of": [{"count": "dog", "max": 0}, {"word_at": -2, "word": "the"}]},
        {"at_most": 2, "of": ["a", {"not": "b"}, {"all": []}]},
    ]:
        node = parse_constraint(spec)
        assert parse_constraint(node.to_json()) == node
        assert canonical_json(parse_constraint(node.to_json())) == canonical_json(node)


def test_polarity_of_counted_keywords():
    required, forbidden = keywords_by_polarity(
        parse_constraint(
            {"all": [{"count": "dog", "min": 2}, {"count": "cat", "max": 0}, {"at_most": 0, "of": ["pan"]}]}
        )
    )
    assert [k.text for k in required] == ["dog"]
    assert [k.text for k in forbidden] == ["cat", "pan"]


def test_matches_show_counted_keywords_and_words_from_the_end():
    from pc_core.constraints.checker import keyword_matches

    assert keyword_matches({"word_at": -1, "word": "pan"}, " the pan.") == [
        {"keyword": "pan", "start": 5, "end": 8}
    ]
    assert keyword_matches({"word_at": -2, "word": "pan"}, " the pan.") == []
    found = keyword_matches(
        {"at_least": 1, "of": [{"count": "dog", "min": 2}, {"not": "cat"}]}, " dog, cat dogs"
    )
    assert [(m["keyword"], m["start"]) for m in found] == [("dog", 1), ("dog", 10)]


@pytest.mark.parametrize(
    "spec, path, fragment",
    [
        ({"count": "dog", "min": 3, "max": 2}, "constraint.max", "min (3) must be <= max (2)"),
        ({"count": "dog", "min": -1}, "constraint.min", ">= 0"),
        ({"count": "dog", "max": -1}, "constraint.max", ">= 0"),
        ({"count": "dog", "max": 10**6}, "constraint.max", "<= 512"),
        ({"count": "dog", "min": 1.5}, "constraint.min", "expected an integer"),
        ({"count": "dog"}, "constraint.min", "min, max or both"),
        ({"count": {"all": ["dog"]}, "min": 1}, "constraint.count", "keyword"),
        ({"count": ["dog"], "min": 1}, "constraint.count", "keyword"),
        ({"count": "", "min": 1}, "constraint.count", "must not be empty"),
        ({"count": "dog", "min": 1, "of": []}, "constraint.of", "unexpected field"),
        (
            {"all": [{"count": kw("dog", case="loud"), "min": 1}]},
            "constraint.all[0].count.case",
            "expected one",
        ),
        ({"at_least": -1, "of": ["a"]}, "constraint.at_least", ">= 0"),
        ({"at_least": 3, "of": ["a", "b"]}, "constraint.at_least", "<= 2"),
        ({"at_least": True, "of": ["a"]}, "constraint.at_least", "expected an integer"),
        ({"at_most": -2, "of": ["a"]}, "constraint.at_most", ">= 0"),
        ({"at_most": 1}, "constraint.of", "required"),
        ({"at_least": 1, "of": "dog"}, "constraint.of", "expected a list"),
        ({"at_least": 1, "of": ["a", {"word_at": 0, "word": "x"}]}, "constraint.of[1].word_at", ">= 1"),
        ({"at_most": 1, "of": ["a"], "min": 1}, "constraint.min", "unexpected field"),
        ({"word_at": 0, "word": "a"}, "constraint.word_at", "<= -1"),
        ({"word_at": -513, "word": "a"}, "constraint.word_at", ">= -512"),
        ({"word_at": 513, "word": "a"}, "constraint.word_at", "<= 512"),
    ],
)
def test_errors_name_the_field(spec, path, fragment):
    with pytest.raises(ConstraintError) as info:
        parse_constraint(spec)
    assert info.value.path == path, info.value
    assert fragment in info.value.message, info.value


# ------------------------------------------------------------------------------------------ named cases


NAMED = [
    # count: whole words, every form of the keyword, non-overlapping
    ({"count": "dog", "min": 2, "max": 2}, " dog and dogs", True),
    ({"count": "dog", "min": 2, "max": 2}, " Dog, DOG.", True),
    ({"count": "dog", "min": 2, "max": 2}, " dog dog dog", False),
    ({"count": "dog", "min": 2, "max": 2}, " dog hotdog dogma", False),
    ({"count": "dog", "min": 2, "max": 2}, " dog", False),
    ({"count": "dog", "max": 1}, "", True),
    ({"count": "dog", "max": 1}, " dog dog", False),
    ({"count": "dog", "max": 0}, " a cat", True),
    ({"count": "dog", "min": 3}, " dog, dog; dog!", True),
    ({"count": "dog", "min": 3}, " dog, dog", False),
    ({"count": kw("ha ha"), "min": 2}, " ha ha ha", False),  # "ha ha ha" holds one non-overlapping "ha ha"
    ({"count": kw("ha ha"), "min": 2}, " ha ha ha ha", True),
    ({"count": kw("ha ha"), "min": 2, "max": 2}, " ha ha ha ha ha", True),
    ({"count": kw("New York"), "min": 2, "max": 2}, " New York, New  York", True),
    ({"count": kw("New York"), "min": 2, "max": 2}, " New York New-York", False),
    ({"count": kw("dog", variants=["pup"], inflections=False), "min": 2, "max": 2}, " pup dog", True),
    ({"count": kw("cat", case="any"), "min": 2, "max": 2}, " cAt CAT", True),
    ({"count": kw("cat", case="sensitive"), "min": 1, "max": 1}, " cat Cat", True),
    # at_least / at_most over any sub-constraints
    ({"at_least": 2, "of": ["dog", "cat", "pan"]}, " a dog and a cat", True),
    ({"at_least": 2, "of": ["dog", "cat", "pan"]}, " dog dog", False),
    ({"at_least": 0, "of": ["dog"]}, "", True),
    ({"at_most": 1, "of": ["dog", "cat", "pan"]}, " a dog and a cat", False),
    ({"at_most": 1, "of": ["dog", "cat", "pan"]}, " dog dog", True),
    ({"at_most": 0, "of": ["dog", "cat"]}, " a pan", True),
    ({"at_most": 0, "of": ["dog", "cat"]}, " a cat", False),
    ({"at_least": 2, "of": [{"not": "dog"}, {"word_count": {"max": 2}}, "pan"]}, " a pan", True),
    ({"at_least": 2, "of": [{"not": "dog"}, {"word_count": {"max": 2}}, "pan"]}, " a dog pan", False),
    # word_at from the end: -1 is the last word
    ({"word_at": -1, "word": "pan"}, " the pan", True),
    ({"word_at": -1, "word": "pan"}, " the pan.", True),
    ({"word_at": -1, "word": "pan"}, " pan the", False),
    ({"word_at": -1, "word": "pan"}, " pan", True),
    ({"word_at": -1, "word": "pan"}, "", False),
    ({"word_at": -1, "word": "pan"}, " the pans", False),  # word_at: no inflections unless asked
    ({"word_at": -1, "word": "pan", "inflections": True}, " the pans", True),
    ({"word_at": -2, "word": "the"}, " the pan", True),
    ({"word_at": -2, "word": "the"}, " pan", False),
    ({"word_at": -3, "word": "pan"}, " a pan is hot", True),
    ({"word_at": -3, "word": "pan"}, " pan is hot now", False),
    ({"all": [{"word_at": 1, "word": "the"}, {"word_at": -1, "word": "the"}]}, " the", True),
    # combinations
    ({"not": {"count": "dog", "min": 1, "max": 2}}, " dog dog dog", True),
    (
        {"any": [{"count": "dog", "min": 2, "max": 2}, {"count": "dog", "min": 4, "max": 4}]},
        " dog " * 4,
        True,
    ),
    (
        {"any": [{"count": "dog", "min": 2, "max": 2}, {"count": "dog", "min": 4, "max": 4}]},
        " dog " * 3,
        False,
    ),
]


@pytest.mark.parametrize("spec, text, expected", NAMED, ids=[str(i) for i in range(len(NAMED))])
def test_named_cases(tokenizer, spec, text, expected):
    """The checker gives the expected answer; the DFA agrees on the canonical tokens and on one token per
    character."""
    assert check_text(spec, text) is expected
    dfa = compile_constraint(spec, tokenizer)
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)
    per_char = [t for ch in text for t in encode(ch)]
    assert (dfa.accepts(encode(text)), dfa.accepts(per_char)) == (expected, expected)


# --------------------------------------------------------------------------- property tests: DFA vs checker

DENSE_WORDS = ["dog", "dog", "dogs", "Dog", "hotdog", "cat", "Cat", "cAt", "pan", "pans", "the", "ha", "ha"]
DENSE_WORDS += ["New", "York", "a", "is", "café"]
DENSE_SEPARATORS = [" "] * 8 + [", ", ". ", "-", "  ", "!", "\n", " 🐶 "]
FIXED_TEXTS = [
    " New York, New  York.",
    " ha ha ha ha ha",
    " dog dog, Dog dogs",
    " the cat, the pan",
    " café café",
]

CONSTRAINTS = [
    {"count": "dog", "min": 2, "max": 2},
    {"count": "dog", "min": 1, "max": 3},
    {"count": kw("cat", case="any", inflections=False), "min": 2},
    {"count": kw("ha ha"), "min": 1, "max": 2},
    {"count": kw("New York"), "max": 1},
    {"at_least": 2, "of": ["dog", "cat", "pan"]},
    {"at_most": 1, "of": ["dog", kw("cat", case="any"), {"word_at": -1, "word": "pan"}]},
    {"at_least": 2, "of": [{"count": "dog", "min": 2}, {"not": "cat"}, {"word_count": {"min": 3, "max": 6}}]},
    {"word_at": -1, "word": "pan"},
    {"word_at": -3, "word": "the", "case": "any"},
    {"all": [{"word_at": -2, "word": "dog"}, {"word_count": {"min": 2, "max": 8}}]},
    {"any": [{"count": "dog", "min": 2, "max": 2}, {"count": "dog", "min": 4, "max": 4}]},
    {"all": [{"count": "dog", "min": 1, "max": 1}, {"count": "cat", "min": 1, "max": 1}, {"all": []}]},
    {"not": {"at_most": 0, "of": [{"ordered": ["the", "pan"]}, {"count": "café", "min": 2}]}},
    {
        "any": [
            {"word_at": -2, "word": "dog"},
            {"word_at": -2, "word": "cat", "case": "any"},
            {"word_at": 1, "word": "pan"},
            {"word_at": 1, "word": "the"},
            "ha",
        ]
    },
]


def _dense_text(rng, max_words=12):
    """Keyword-dense text: counts of 0..6, phrases that overlap themselves ("ha ha ha"), near misses."""
    parts = []
    for _ in range(rng.randint(0, max_words)):
        parts += [rng.choice(DENSE_WORDS), rng.choice(DENSE_SEPARATORS)]
    text = "".join(parts)
    if parts and rng.random() < 0.4:  # end inside the last word: the end of the text finishes it
        text = text[: -len(parts[-1])]
    return text if rng.random() < 0.8 else text.lstrip()


def _pool(tokenizer):
    """Tokens that spell pieces of the dense words: random strings of them nearly spell keywords."""
    rng = random.Random(0)
    pool = set()
    for word in DENSE_WORDS:
        for text in (word, " " + word):
            ids = tokenizer.encode(text, add_special_tokens=False)
            pool.update(ids)
            pool.update(resplit(tokenizer, ids, rng, p=0.8))
    return sorted(pool)


def _sequences(tokenizer, seed, n_text=40, n_random=60):
    rng = random.Random(seed)
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)
    pool, plain, eos = _pool(tokenizer), plain_ids(tokenizer), tokenizer.eos_token_id
    seqs = []
    for i in range(n_text):
        text = FIXED_TEXTS[i] if i < len(FIXED_TEXTS) else _dense_text(rng)
        canonical = encode(text)
        seqs += [canonical, resplit(tokenizer, canonical, rng)]
        if len(text) > 2:
            i = rng.randrange(1, len(text))
            seqs.append(encode(text[:i]) + encode(text[i:]))
        if rng.random() < 0.3:
            seqs.append(canonical + [eos] + [rng.choice(plain) for _ in range(3)])
    for _ in range(n_random):
        seqs.append([rng.choice(pool if rng.random() < 0.8 else plain) for _ in range(rng.randint(0, 14))])
    return seqs


def _agree(spec, tokenizer, seqs):
    dfa = compile_constraint(spec, tokenizer, max_states=8192)
    outcomes, disagreements = set(), []
    splittable = splittable_chars(spec)  # characters tokens may split (byte_chars.py)
    for ids in seqs:
        if breaks_characters(tokenizer, ids, splittable):
            assert not dfa.accepts(ids)
            continue
        expected = check_ids(spec, tokenizer, ids)
        outcomes.add(expected)
        if dfa.accepts(ids) != expected:
            disagreements.append((ids, tokenizer.decode(ids), expected))
    assert not disagreements, (spec, disagreements[:5])
    return outcomes


@pytest.mark.parametrize("spec", CONSTRAINTS, ids=[str(i) for i in range(len(CONSTRAINTS))])
def test_dfa_agrees_with_checker(tokenizer, spec):
    outcomes = _agree(spec, tokenizer, _sequences(tokenizer, seed=len(str(spec))))
    assert outcomes == {True, False}, spec  # the inputs exercise both answers


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    return request.param, build_family(request.param, tmp_path_factory.mktemp("families"))


@pytest.mark.parametrize("index", [0, 3, 6, 8, 9, 11])
def test_dfa_agrees_with_checker_on_every_tokenizer_family(family, index):
    name, tokenizer = family
    spec = CONSTRAINTS[index]
    _agree(spec, tokenizer, _sequences(tokenizer, seed=index + len(name), n_text=25, n_random=40))


def _random_constraint(rng, depth=0):
    """Nested constraints mixing the counting operators with the rest of the language."""
    kinds = ["kw", "count", "count", "at_least", "at_most", "word_at", "word_at_end", "all", "any", "not"]
    kind = rng.choice(kinds)
    if depth >= 2 and kind in ("at_least", "at_most", "all", "any", "not"):
        kind = rng.choice(["kw", "count", "word_at_end"])
    word = lambda: rng.choice(["dog", "cat", "pan", "the", "ha"])
    options = lambda: {"inflections": rng.random() < 0.5, "case": rng.choice(["natural", "sensitive", "any"])}
    if kind == "kw":
        return {"keyword": word(), **options()}
    if kind == "count":
        lo = rng.randint(0, 3)
        text = word() if rng.random() < 0.7 else "ha ha"
        return {"count": {"keyword": text, **options()}, "min": lo, "max": lo + rng.randint(0, 2)}
    if kind in ("at_least", "at_most"):
        children = [_random_constraint(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        k = rng.randint(0, len(children))
        return {kind: k, "of": children}
    if kind in ("word_at", "word_at_end"):
        index = rng.randint(1, 3) * (-1 if kind == "word_at_end" else 1)
        return {"word_at": index, "word": word(), "case": rng.choice(["natural", "any"])}
    if kind in ("all", "any"):
        return {kind: [_random_constraint(rng, depth + 1) for _ in range(rng.randint(0, 3))]}
    return {"not": _random_constraint(rng, depth + 1)}


@pytest.mark.parametrize("seed", range(16))
def test_random_nested_constraints_agree(tokenizer, seed):
    rng = random.Random(2600 + seed)
    spec = _random_constraint(rng)
    _agree(spec, tokenizer, _sequences(tokenizer, seed=seed, n_text=30, n_random=30))


def test_word_at_of_one_index_merge_under_any():
    """any(word_at -k, w) over n words is one k-bit history of "one of them", not one per word ((n + 1)^k
    explored states); the other children keep their own matchers."""
    from pc_core.constraints.counting import WordFromEndMatcher
    from pc_core.constraints.matcher_tree import build_matcher
    from pc_core.constraints.matchers import WordAtMatcher

    words = ["dog", "cat", "pan", "the"]
    spec = {"any": [*({"word_at": -3, "word": w} for w in words), {"word_at": 2, "word": "dog"}, "ha"]}
    symbols = {w: i + 1 for i, w in enumerate(words + ["ha"])}
    matcher = build_matcher(parse_constraint(spec), lambda w, _: frozenset({symbols[w.lower()]}), lambda g: 1)
    kinds = [type(c).__name__ for c in matcher.children]
    assert kinds == ["WordFromEndMatcher", "WordAtMatcher", "KeywordMatcher"]
    assert matcher.children[0].syms == frozenset({1, 2, 3, 4}) and matcher.children[0].distance == 3
    assert isinstance(matcher.children[1], WordAtMatcher) and not isinstance(
        matcher.children[1], WordFromEndMatcher
    )


# ------------------------------------------------------------------------------ the guide: brute force

BRUTE_SPECS = [
    {"count": "dog", "min": 2, "max": 2},
    {"count": "dog", "max": 1},
    {"at_least": 2, "of": ["dog", "cat", "pan"]},
    {"at_most": 1, "of": ["dog", {"keyword": "cat", "inflections": False}]},
    {"word_at": -1, "word": "pan"},
    {"word_at": -2, "word": "the"},
    {"all": []},
]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from tiny_models import build_micro_tokenizer

    return build_micro_tokenizer(tmp_path_factory.mktemp("micro"))


@pytest.mark.parametrize("spec", BRUTE_SPECS, ids=[str(i) for i in range(len(BRUTE_SPECS))])
def test_guide_matches_brute_force(micro, spec):
    """The exact guide over these automata equals enumeration of every continuation on a 14-token vocabulary."""
    from brute_force_guide import Brute, _close

    from pc_core.guide import ConstraintGuide
    from pc_core.hmm import HMM

    dfa = compile_constraint(spec, micro)
    for h, horizon, prefixes in ((2, 3, [[], [0], [4], [3]]), (3, 2, [[], [1]])):
        hmm = HMM.random(h, len(micro), seed=h * 5 + horizon, eos_token_id=micro.eos_token_id)
        guide = ConstraintGuide(hmm, dfa, horizon=horizon)
        brute = Brute(hmm, micro, spec, horizon)
        for prefix in prefixes:
            _close(guide.log_prob(prefix).item(), brute.log_prob(prefix))
            _close(guide.next_log_probs(prefix).numpy(), brute.next_log_probs(prefix))
