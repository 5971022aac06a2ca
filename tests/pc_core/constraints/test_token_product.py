"""Character nodes composed with keywords, word_count and ends_with (char_fold.py, token_product.py): the
word-level leaves become character automata, each child of the top-level `all` a token automaton, and the
token automata are intersected. Checked three ways: the character automaton of each leaf against the
checker on random texts; the token automaton against the checker (plus the byte oracle for tokens that split
characters) on encodings, byte spellings and random draws; and against the word-level compiler, which
compiles the same constraints independently, on sequences without split characters."""

import random

import pytest
from byte_support import ANY, breaks_characters, decoded_without_replacement, splittable_chars

from pc_core.constraints import check_ids, check_text, compile_constraint, decode_continuation
from pc_core.constraints.char_fold import foldable, folded_char_dfa, part_dfas
from pc_core.constraints.explicit import _Compiler
from pc_core.constraints.lazy_product import LazyProductDFA
from pc_core.constraints.spec import parse_constraint
from pc_core.constraints.token_bytes import token_bytes_table
from pc_core.constraints.token_product import compile_folded, lazy_folded
from pc_core.constraints.vocab import vocab_tables

NOTE = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 24}}, "required": ["text"],
        "additionalProperties": False}  # fmt: skip
SPECS = [
    {"all": [{"json_schema": NOTE}, {"keywords": ["refund"]}]},
    {"all": [{"json_schema": NOTE}, {"keywords": ["refund", "dog", "late"]}]},
    {"all": [{"json_schema": NOTE}, {"not": {"keyword": "refund"}}, {"keyword": "dog"}]},
    {"all": [{"json_schema": NOTE}, {"word_count": {"min": 3, "max": 4}}]},
    {"all": [{"json_schema": NOTE}, {"forbidden": ["dog", "cat", "late", "pan"]}]},  # no blocklist mask
    {"all": [{"regex": "[A-Za-z ,.\n]{1,30}"}, {"keyword": "New York", "inflections": False}]},
    {"all": [{"regex": '[^"]{0,20}'}, {"keyword": "café", "case": "any"}]},
    {"all": [{"pattern": "order #\\d+"}, {"word_count": {"min": 3, "max": 6}}]},
    {"all": [{"pattern": "[0-9]"}, {"ends_with": "."}, {"keyword": "dog"}]},
    {"any": [{"json_schema": NOTE}, {"keyword": "dog"}]},
    {"at_least": 2, "of": [{"pattern": "a"}, {"keyword": "dog"}, {"ends_with": "."}]},
    {"at_most": 1, "of": [{"pattern": "a"}, {"keyword": "dog"}, {"ends_with": "."}]},
]
DOCS = ['{"text":"a refund"}', '{"text":"Refunds, dogs"}', '{"text":"refundx dog"}', '{"text":"late dog refund"}',
        '{"text":"one two three"}', '{"text":"a b c d"}', '{"text":"dog"}', "{}", "", "New York", "new york.",
        "New\nYork, dog.", "NewYork", "the café", "CAFÉ and dogs", "caféé", "order #42 now please", "order #x",
        "a dog 7.", "dogs 7.", "a", "7 dog_", " the dog ran.", '{"text":"café late"}']  # fmt: skip
TEXT_ALPHABET = list('abdgo fretunNwYkc.,7#"{}:\n_éÉ') + ["dog", "refund", "New", "York", "café", '{"text":"']


def _random_texts(rng, n):
    return ["".join(rng.choice(TEXT_ALPHABET) for _ in range(rng.randint(0, 8))) for _ in range(n)]


@pytest.mark.parametrize("index", range(len(SPECS)))
def test_character_automaton_agrees_with_the_checker(index):
    constraint = parse_constraint(SPECS[index])
    dfa = folded_char_dfa(constraint)
    assert dfa is not None
    rng = random.Random(index)
    texts = DOCS + _random_texts(rng, 1500)
    wrong = [t for t in texts if dfa.accepts(t) != check_text(constraint, t)]
    assert not wrong, wrong[:5]
    assert any(dfa.accepts(t) for t in texts)


def _sequences(tokenizer, rng):
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    single = {}
    for t in range(len(tokenizer)):
        data = tokenizer.convert_ids_to_tokens(t)
        single.setdefault(data, t)
    out = []
    for doc in DOCS:
        whole = encode(doc)
        out += [whole, whole + [tokenizer.eos_token_id], whole[:-1], [t for ch in doc for t in encode(ch)]]
        i = rng.randint(0, len(doc))
        out.append(encode(doc[:i]) + encode(doc[i:]))
    pool = sorted({t for doc in DOCS for t in encode(doc)})
    out += [[rng.choice(pool) for _ in range(rng.randint(1, 8))] for _ in range(300)]
    return out


@pytest.mark.parametrize("index", range(len(SPECS)))
def test_token_automaton_agrees_with_the_checker(tokenizer, index):
    """Exact on whole characters. Where tokens split a character: every split of a character the keywords
    name is allowed (as on the word-level path, byte_support.splittable_chars), a split of any other
    character may be (char_bytes.py: when its tails act alike), and nothing accepted breaks a character."""
    spec = SPECS[index]
    tables = vocab_tables(tokenizer)
    assert compile_folded(parse_constraint(spec), tables, 100_000, lambda: None) is not None  # this path
    dfa = compile_constraint(spec, tokenizer)
    named = splittable_chars(spec)
    rng = random.Random(index)
    accepted = 0
    for ids in _sequences(tokenizer, rng):
        holds = check_ids(spec, tokenizer, ids)
        got = dfa.accepts(ids)
        must = holds and not breaks_characters(tokenizer, ids, named)
        may = holds and not breaks_characters(tokenizer, ids, ANY)
        assert must <= got <= may, (spec, decode_continuation(tokenizer, ids), ids, got)
        if got:
            accepted += 1
            assert decoded_without_replacement(tokenizer, ids)
    assert accepted > 0


def test_a_named_character_may_be_split(tokenizer):
    """É written as two byte tokens, inside a keyword folded with a pattern."""
    spec = {"all": [{"regex": '[^"]{0,20}'}, {"keyword": "café", "case": "any"}]}
    single = {data[0]: t for t, data in enumerate(token_bytes_table(tokenizer)) if len(data) == 1}
    caf = tokenizer.encode(" CAF", add_special_tokens=False)
    split = [single[b] for b in "É".encode()]
    dfa = compile_constraint(spec, tokenizer)
    assert decode_continuation(tokenizer, caf + split) == " CAFÉ"
    assert dfa.accepts(caf + split) and not dfa.accepts(caf + split[:1])
    assert not dfa.accepts(caf + split + split)  # CAFÉÉ: another word


@pytest.mark.parametrize("index", [0, 2, 3, 4, 5, 7, 8])
def test_the_word_level_compiler_agrees_without_split_characters(tokenizer, index):
    """The word-level compiler (the path these constraints took before) judges every sequence of whole
    characters alike: two independent constructions of one language."""
    spec = SPECS[index]
    tables = vocab_tables(tokenizer)
    folded = compile_constraint(spec, tokenizer)
    word_level = _Compiler(parse_constraint(spec), tables, 100_000, 60.0).run()
    rng = random.Random(100 + index)
    compared = 0
    for ids in _sequences(tokenizer, rng):
        if breaks_characters(tokenizer, ids, frozenset()):
            continue
        assert folded.accepts(ids) == word_level.accepts(ids), decode_continuation(tokenizer, ids)
        compared += 1
    assert compared > 100


def test_what_is_folded():
    """Only trees of character nodes with keywords / word_count / ends_with; the rest stays word-level."""
    json = {"json_schema": NOTE}
    assert foldable(parse_constraint({"all": [json, {"keywords": ["refund"]}]}))
    assert not foldable(parse_constraint({"keywords": ["refund", "dog"]}))  # no character node
    assert not foldable(parse_constraint({"all": [json, {"count": "dog", "min": 2}]}))
    assert not foldable(parse_constraint({"all": [json, {"ordered": ["dog", "cat"]}]}))
    assert not foldable(parse_constraint({"json_schema": NOTE}))  # a character node alone: char_tokens.py
    too_many = parse_constraint({"all": [{"word_count": {"max": 500}}, {"pattern": "a"}]})
    assert (
        foldable(too_many) and part_dfas(too_many, too_many.children) is None
    )  # past the fold's bounds: word-level


def test_a_composed_schema_reuses_the_keyword_automaton(tokenizer):
    """The keyword's token automaton is compiled once and intersected with each schema."""
    from pc_core.constraints.token_product import COMPONENTS

    other = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}
    compile_constraint({"all": [{"json_schema": NOTE}, {"keywords": ["refund"]}]}, tokenizer)
    before = len(COMPONENTS)
    dfa = compile_constraint({"all": [{"json_schema": other}, {"keywords": ["refund"]}]}, tokenizer)
    assert len(COMPONENTS) == before + 1  # the new schema only
    ids = tokenizer.encode('{"note":"no refund"}', add_special_tokens=False)
    assert dfa.accepts(ids) and not dfa.accepts(tokenizer.encode('{"note":"no"}', add_special_tokens=False))


def test_unique_rows_groups_rows_as_numpy_does():
    import numpy as np

    from pc_core.constraints.char_bytes import unique_rows

    rng = np.random.default_rng(0)
    padded = rng.integers(-1, 3, size=(500, 4)).astype(np.int32)
    matrix, seq_of = unique_rows(padded)
    expected, inverse = np.unique(padded, axis=0, return_inverse=True)
    assert np.array_equal(matrix[seq_of], padded) and len(matrix) == len(expected)
    assert len(set(zip(seq_of.tolist(), inverse.reshape(-1).tolist()))) == len(expected)  # the same groups


@pytest.mark.parametrize("index", range(len(SPECS)))
def test_the_lazy_product_accepts_what_the_explicit_one_accepts(tokenizer, index):
    """lazy_product.LazyProductDFA (compile_constraint(lazy=True) past the explicit cap): the same language
    as the explicit product; successors and children agree with step."""
    spec = SPECS[index]
    lazy = lazy_folded(parse_constraint(spec), vocab_tables(tokenizer), 100_000, lambda: None)
    explicit = compile_constraint(spec, tokenizer)
    for ids in _sequences(tokenizer, random.Random(200 + index)):
        assert lazy.accepts(ids) == explicit.accepts(ids), decode_continuation(tokenizer, ids)
    state = lazy.run(tokenizer.encode('{"text":"a', add_special_tokens=False))
    successors = lazy.successors(state)
    assert all(successors[t] == lazy.step(state, t) for t in range(0, len(tokenizer), 7))
    children, tokens = lazy.children(state)
    assert [lazy.step(state, int(t)) for t in tokens] == children.tolist()


def test_past_the_explicit_cap_a_composed_schema_is_served_lazily(tokenizer, tiny_lm, tiny_hmm):
    """The product (2,600 states) is past max_states, its parts are not: the lazy product and the lazy guide
    serve it, and the output is a document of the schema holding the keywords."""
    from pc_core.decoding import generate

    spec = {"all": [{"json_schema": NOTE}, {"keywords": ["refund", "dog"]}]}
    assert isinstance(compile_constraint(spec, tokenizer, max_states=400, lazy=True), LazyProductDFA)
    out = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt="The", max_new_tokens=40, num_beams=2,
                   max_states=400)  # fmt: skip
    assert out.guide == "lazy"
    assert check_ids(spec, tokenizer, out.sequences[0].token_ids), out.sequences[0].text


def test_a_schema_past_the_lazy_cap_is_served_lazily(tokenizer, monkeypatch):
    """Character nodes alone past LAZY_AFTER_STATES (refused under lazy=True before): their explicit
    automaton as the one part of a LazyProductDFA, the same language."""
    from pc_core.constraints import compiler

    monkeypatch.setattr(compiler, "LAZY_AFTER_STATES", 50)
    lazy = compile_constraint({"json_schema": NOTE}, tokenizer, lazy=True)
    assert isinstance(lazy, LazyProductDFA)
    explicit = compile_constraint({"json_schema": NOTE}, tokenizer)
    assert explicit.num_states > 50
    for ids in _sequences(tokenizer, random.Random(7)):
        assert lazy.accepts(ids) == explicit.accepts(ids)
