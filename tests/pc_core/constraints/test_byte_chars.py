"""Characters at the byte level (docs/method.md §3; byte_chars.py, pending_chars.py, char_bytes.py).

A token may end inside a UTF-8 character when the automaton can complete it: `{"keywords": ["café"]}` on a
vocabulary that writes é only as two tokens, CJK keywords on byte-level BPE, SentencePiece byte fallback
(`<0xE4><0xB8><0xAD>`). The DFA is checked against the independent text checker plus an independent byte
oracle (byte_support.breaks_characters) on random and adversarial sequences; no accepted sequence decodes
to U+FFFD.
"""

import random

import numpy as np
import pytest
from byte_support import ANY, breaks_characters, decoded_without_replacement, splittable_chars
from tokenizer_families import build_family, byte_token_ids

from pc_core.constraints import check_ids, compile_constraint, decode_continuation
from pc_core.constraints.byte_chars import TailClasses
from pc_core.constraints.token_bytes import _bytes_to_unicode
from pc_core.constraints.vocab import continuation_parts, valid_tail, vocab_tables

EOS = "<|endoftext|>"
# a fixed byte-level vocabulary that writes é, 中, 文 and 😀 only across tokens
SPLIT_PIECES = [
    b" ", b"caf", b" caf", b"\xc3", b"\xa9", b"\xa9s", b" the", b".", b"\xe4", b"\xb8\xad", b"\xe6\x96",
    b"\x87", b"e", b"s", b"\xf0\x9f", b"\x98\x80", b"\xa9\xc3", b"\x80", b"\xb8", b"\xad", b"\xe6", b"\x96",
    b"\x87\xf0\x9f\x98",  # completes 文, then a tail no other token ends with
]  # fmt: skip
ID = {p: i for i, p in enumerate(SPLIT_PIECES)}


def _fixed_byte_level(directory, pieces):
    """A byte-level BPE over exactly these pieces (bytes), no merges, EOS last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = _bytes_to_unicode()
    vocab = {"".join(table[b] for b in p): i for i, p in enumerate(pieces)}
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, unk_token=EOS)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return _fixed_byte_level(tmp_path_factory.mktemp("split"), SPLIT_PIECES)


@pytest.fixture(scope="module")
def llama2(tmp_path_factory):
    """SentencePiece BPE with byte fallback, trained on text the builder writes (tokenizer_families.py)."""
    return build_family("llama2", tmp_path_factory.mktemp("llama2"))


def ids_of(*pieces):
    return [ID[p] for p in pieces]


# ---------------------------------------------------------------------------------- the defects, reproduced


def test_cafe_is_written_across_two_tokens(split):
    """Before: refused as unwritable (é exists only as the tokens C3 + A9)."""
    dfa = compile_constraint({"keywords": ["café"]}, split)
    assert dfa.steps_to_accept[dfa.initial_state] == 3
    cafe = ids_of(b" caf", b"\xc3", b"\xa9")
    assert dfa.accepts(cafe) and decode_continuation(split, cafe) == " café"
    assert dfa.accepts(cafe + [split.eos_token_id])
    assert not dfa.accepts(cafe[:2]) and not dfa.accepts(cafe[:2] + [split.eos_token_id])  # pending é
    assert not dfa.accepts(ids_of(b" caf", b"\xc3", b"\x80"))  # completes À, not é
    assert not dfa.accepts(ids_of(b" caf", b"\xa9"))  # a stray continuation byte
    cafee = ids_of(b" caf", b"\xc3", b"\xa9\xc3", b"\xa9")  # " caféé": é, then é again across tokens
    assert decode_continuation(split, cafee) == " caféé"
    assert not dfa.accepts(cafee) and not check_ids({"keywords": ["café"]}, split, cafee)  # another word
    assert dfa.accepts(cafee + ids_of(b" caf", b"\xc3", b"\xa9"))


def test_cjk_keyword_split_on_byte_level_bpe(tokenizer):
    """The test BPE (trained on ASCII text) writes every CJK character as three byte tokens."""
    spec = {"keywords": ["中文"]}
    dfa = compile_constraint(spec, tokenizer)
    ids = tokenizer.encode(" a 中文 b", add_special_tokens=False)
    tables = vocab_tables(tokenizer)
    assert any(tables.tail_id[t] for t in ids)  # some token ends inside a character
    assert dfa.accepts(ids) and check_ids(spec, tokenizer, ids)
    assert 0 < dfa.steps_to_accept[dfa.initial_state] <= 7


def test_cjk_keyword_on_the_shared_gpt2_bpe(big_tokenizer):
    spec = {"all": [{"keywords": ["中文"]}, {"word_count": {"max": 4}}]}
    ids = big_tokenizer.encode(" 中文 text", add_special_tokens=False)
    assert any(vocab_tables(big_tokenizer).tail_id[t] for t in ids)
    dfa = compile_constraint(spec, big_tokenizer)
    assert dfa.accepts(ids) and not dfa.accepts(ids[:2])


def test_byte_fallback_tokens_write_rare_characters(llama2):
    """<0xNN> tokens spell characters outside the tiny SentencePiece alphabet (中, 文, 🐶). A word-level
    constraint splits only characters that start like one it names (pending_chars.py): here 中 and 文."""
    spec = {"keywords": ["中文"]}
    ids = llama2.encode(" 中文", add_special_tokens=False)
    assert sum(t in byte_token_ids(llama2) for t in ids) == 6
    dfa = compile_constraint(spec, llama2)
    assert dfa.accepts(ids) and check_ids(spec, llama2, ids)
    assert dfa.steps_to_accept[dfa.initial_state] == 6  # 中 and 文 at the start of the continuation
    byte_id = {b: t for t, b in byte_token_ids(llama2).items()}
    dog = [byte_id[b] for b in " 🐶".encode()]  # 🐶 split into byte tokens, which 中文 does not allow
    assert check_ids(spec, llama2, ids + dog) and not dfa.accepts(ids + dog)
    assert compile_constraint({"regex": "[^a]*"}, llama2).accepts(ids + dog)  # a pattern splits any character


def test_character_constraints_run_on_bytes(split, tokenizer):
    cafe = ids_of(b"caf", b"\xc3", b"\xa9")
    zh = ids_of(b"\xe4", b"\xb8\xad", b"\xe6\x96", b"\x87")
    assert decode_continuation(split, zh) == "中文"
    assert compile_constraint({"regex": "caf[éè]"}, split).accepts(cafe)
    choice = compile_constraint({"choice": ["中文", "café", "中文😀"]}, split)
    assert choice.accepts(zh) and choice.accepts(cafe) and not choice.accepts(zh[:-1])
    smile = ids_of(b"\xe4", b"\xb8\xad", b"\xe6\x96", b"\x87\xf0\x9f\x98", b"\x80")
    assert decode_continuation(split, smile) == "中文😀" and choice.accepts(smile)
    schema = {"json_schema": {"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]}}
    doc = tokenizer.encode('{"k":"日本 😀"}', add_special_tokens=False)
    k = next(i for i, t in enumerate(doc) if vocab_tables(tokenizer).tail_id[t])  # ends inside 日
    dfa = compile_constraint(schema, tokenizer)
    assert dfa.accepts(doc) and not dfa.accepts(doc[: k + 1] + tokenizer.encode('"}'))


# ------------------------------------------------------------------------------------- pieces and classes


def test_continuation_parts_and_tails():
    assert continuation_parts(b"\xa9s") == (b"\xa9", b"s")
    assert continuation_parts(b"\xa9\xc3") == (b"\xa9", b"\xc3")
    assert continuation_parts(b"\x80\x80\x80\x80") is None  # no character has four continuation bytes
    assert continuation_parts(b"\xa9\xff") is None
    assert valid_tail(b"\xe4\xb8") and valid_tail(b"\xf0\x9f\x98")
    assert not valid_tail(b"\xed\xa0")  # a surrogate's start: never completes
    assert not valid_tail(b"\xe0\x80") and not valid_tail(b"\xc3\xa9")


def test_tail_classes_merge_tails_that_act_alike():
    # one column for every non-ASCII character: all 3-byte leads but the restricted ones act alike
    classes = TailClasses(lambda codes: (codes >= 0x80).astype(np.int64))
    assert classes.klass(b"\xe4") == classes.klass(b"\xe5") != classes.klass(b"\xe0")
    assert classes.klass(b"\xc3") == classes.klass(b"\xe4\xb8")  # one byte missing either way
    assert classes.step(classes.klass(b"\xe4"), b"\xb8") == ("tail", classes.klass(b"\xe4\xb8"))
    assert classes.step(classes.klass(b"\xe4"), b"\xb8\xad")[0] == "char"
    assert classes.step(classes.klass(b"\xe0"), b"\x80") is None  # overlong
    e_acute = TailClasses(lambda codes: np.where(codes == ord("é"), -1, 0))
    assert e_acute.klass(b"\xc3") != e_acute.klass(b"\xc4")


# ------------------------------------------------------------- the DFA against the checker, at the byte level

WORD_SPECS = [
    {"keywords": ["café"]},
    {"keyword": "中文", "inflections": False},
    {"not": {"keywords": ["café"]}},
    {"all": [{"keyword": "日本", "inflections": False}, {"word_count": {"max": 3}}]},
    {"keywords": ["Café"], "case": "any"},
    {"ends_with": "é"},
]
CHAR_SPECS = [{"regex": " ?caf[éè]s?"}, {"regex": "[^a]+"}, {"choice": ["中文", "café", "日本"]}]
SPLIT_SEQS = [  # for the fixed vocabulary, whose encoder knows only its pieces
    [b" caf", b"\xc3", b"\xa9"],
    [b"caf", b"\xc3", b"\xa9", b"s"],
    [b" caf", b"\xc3", b"\xa9s", b"."],
    [b"\xe4", b"\xb8\xad", b"\xe6\x96", b"\x87"],
    [b" ", b"\xe4", b"\xb8", b"\xad", b"\xe6", b"\x96", b"\x87"],
    [b" caf", b"\xc3", b"\xa9\xc3", b"\xa9"],
    [b"\xf0\x9f", b"\x98\x80", b" caf", b"\xc3", b"\xa9"],
    [b" the", b" caf", b"\xc3", b"\x80"],
    [b" the", b" caf", b"\xc3", b"\xa9", b" ", b"\xe4", b"\xb8\xad"],
    [b"\xe4", b"\xb8\xad", b"\xe6\x96", b"\x87\xf0\x9f\x98", b"\x80"],  # 中文😀
]
TEXTS = [
    " café",
    " the café.",
    "中文",
    " 中文 e",
    "café",
    " caféé",
    " 日本",
    " Café",
    " CAFÉ s",
    " e",
    "😀 é",
    "caf",
]


def _byte_split(tokenizer, text, rng):
    """The text with characters spelled byte by byte where the vocabulary has those bytes as tokens."""
    single = {}
    for t, data in enumerate(_raw(tokenizer)):
        if len(data) == 1:
            single.setdefault(data[0], t)
    out = []
    for ch in text:
        data = ch.encode()
        if len(data) > 1 and all(b in single for b in data) and rng.random() < 0.7:
            out += [single[b] for b in data]
        else:
            out += tokenizer.encode(ch, add_special_tokens=False)
    return out


def _raw(tokenizer):
    from pc_core.constraints.token_bytes import token_bytes_table

    return token_bytes_table(tokenizer)


def _adversarial(tokenizer, rng, n=250):
    """Encodings and byte spellings of the texts, cut short, with stray continuation bytes, wrong
    continuations, special tokens inside a character, and random draws from the splitting tokens."""
    tables = vocab_tables(tokenizer)
    splitting = [int(t) for t in np.flatnonzero(tables.tail_id)] + list(tables.continuations)
    special = sorted(set(tokenizer.all_special_ids) - {tokenizer.eos_token_id})
    seqs = []
    for text in TEXTS:
        whole = tokenizer.encode(text, add_special_tokens=False)
        split = _byte_split(tokenizer, text, rng)
        seqs += [
            whole,
            split,
            split[:-1],
            split + [tokenizer.eos_token_id],
            split[:-1] + [tokenizer.eos_token_id],
        ]
        if special and len(split) > 1:
            k = rng.randrange(1, len(split))
            seqs.append(split[:k] + [rng.choice(special)] + split[k:])
    if len(tokenizer) == len(SPLIT_PIECES) + 1:  # the fixed vocabulary
        for pieces in SPLIT_SEQS:
            ids = ids_of(*pieces)
            seqs += [ids, ids[:-1], ids + [tokenizer.eos_token_id]]
    pool = splitting + [t for text in TEXTS for t in tokenizer.encode(text, add_special_tokens=False)]
    for _ in range(n):
        seqs.append([rng.choice(pool) for _ in range(rng.randint(1, 7))])
    return seqs


@pytest.mark.parametrize(
    "spec", WORD_SPECS + CHAR_SPECS, ids=[str(i) for i in range(len(WORD_SPECS + CHAR_SPECS))]
)
@pytest.mark.parametrize("name", ["split", "tokenizer", "llama2", "byte_level"])
def test_dfa_agrees_with_checker_and_byte_oracle(request, name, spec):
    tok = build_family("byte_level", request.getfixturevalue("tmp_path")) if name == "byte_level" else (
        request.getfixturevalue(name))  # fmt: skip
    dfa = compile_constraint(spec, tok)
    splittable = ANY if spec in CHAR_SPECS else splittable_chars(spec)
    rng = random.Random(len(str(spec)) + len(name))
    disagreements, accepted = [], 0
    for ids in _adversarial(tok, rng):
        expected = check_ids(spec, tok, ids) and not breaks_characters(tok, ids, splittable)
        got = dfa.accepts(ids)
        if got != expected:
            disagreements.append((ids, decode_continuation(tok, ids), expected))
        if got:
            accepted += 1
            assert decoded_without_replacement(tok, ids), ids
    assert not disagreements, disagreements[:5]
    assert accepted > 0 or (name == "split" and "日本" in str(spec))  # (no 日 in the fixed vocabulary)


# ----------------------------------------------------------------------------- through the decoder, streamed


@pytest.mark.parametrize("spec", [{"keywords": ["café"]}, {"keywords": ["中文"]}, {"regex": "[中文é ]{3,6}"}])
@pytest.mark.parametrize(
    "kwargs", [{"num_beams": 2}, {"do_sample": True, "seed": 3, "num_return_sequences": 2}]
)
def test_generation_streams_split_characters_whole(tiny_lm, tokenizer, tiny_hmm, spec, kwargs):
    """The test BPE writes CJK only as byte tokens (é also as one token): outputs split characters across
    tokens, and neither the output nor any streamed piece has U+FFFD (an incomplete character waits for its
    last byte)."""
    from pc_core.decoding import generate

    events = []
    out = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt="The", max_new_tokens=12,
                   on_stream=events.append, **kwargs)  # fmt: skip
    assert events and all("\ufffd" not in e.text for e in events)
    for index, seq in enumerate(out.sequences):
        assert seq.constraint_satisfied and check_ids(spec, tokenizer, seq.token_ids)
        assert "\ufffd" not in seq.text and decoded_without_replacement(tokenizer, seq.token_ids)
        if spec == {"keywords": ["中文"]}:  # 中 and 文 were split
            assert sum(vocab_tables(tokenizer).tail_id[t] > 0 for t in seq.token_ids) >= 2
        assert "".join(e.text for e in events if e.index == index) == seq.text


def test_lazy_automaton_reads_bytes_too(split):
    """The lazily explored automaton (pc_core/lazy_dfa.py) has the same states inside a character."""
    from pc_core.constraints.spec import parse_constraint
    from pc_core.lazy_dfa import LazyDFA

    for spec in ({"keywords": ["café"]}, {"all": [{"keywords": ["中文"]}, {"word_count": {"max": 3}}]}):
        lazy = LazyDFA(parse_constraint(spec), vocab_tables(split))
        explicit = compile_constraint(spec, split)
        for pieces in SPLIT_SEQS:
            ids = ids_of(*pieces)
            for seq in (ids, ids[:-1], ids + [split.eos_token_id]):
                assert lazy.accepts(seq) == explicit.accepts(seq), (spec, pieces)
        assert any(lazy.accepts(ids_of(*pieces)) for pieces in SPLIT_SEQS)


@pytest.mark.parametrize("name", ["split", "tokenizer", "llama2"])
def test_a_pattern_with_many_tail_classes_still_splits_what_it_names(request, name):
    """`\\w` tells ~30+ classes of partial characters apart on a byte-level vocabulary: past 24 the pattern
    splits only the characters it names (é) and tails whose completions act alike; still exact: every
    accepted sequence is valid and satisfies the checker, and "café" with é split is written."""
    tok = request.getfixturevalue(name)
    spec = {"regex": " ?\\w+ café"}  # (a SentencePiece continuation starts with a space)
    dfa = compile_constraint(spec, tok)
    for ids in _adversarial(tok, random.Random(7), n=400):
        if dfa.accepts(ids):
            assert check_ids(spec, tok, ids) and not breaks_characters(tok, ids, ANY), ids
    if name == "split":
        assert dfa.accepts(ids_of(b"caf", b" caf", b"\xc3", b"\xa9"))
    else:
        byte_id = {b: t for t, b in byte_token_ids(tok).items()} or {
            data[0]: t for t, data in enumerate(_raw(tok)) if len(data) == 1
        }
        ids = tok.encode("x caf", add_special_tokens=False) + [byte_id[0xC3], byte_id[0xA9]]
        assert decode_continuation(tok, ids).endswith(" café") and dfa.accepts(ids)
