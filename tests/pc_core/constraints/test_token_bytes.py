"""Token bytes derived from the decoder pipeline agree with decode_continuation for every tokenizer family."""

import random

import pytest
from tokenizer_families import FAMILIES, LLAMA2_DECODER, build_family, byte_token_ids, plain_ids, resplit

from pc_core.constraints.checker import decode_continuation
from pc_core.constraints.token_bytes import byte_fallback_value, decoder_type, token_bytes_table
from pc_core.constraints.vocab import VocabTables, tokenizer_fingerprint


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    return request.param, build_family(request.param, tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="module")
def llama2(tmp_path_factory):
    return build_family("llama2", tmp_path_factory.mktemp("llama2"))


def _joined(table, ids) -> str:
    return b"".join(table[i] for i in ids).decode("utf-8", "replace")


def _with_decoder(tokenizer, decoder):
    """A copy of `tokenizer` with another `tokenizers` decoder (None: no decoder at all)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.decoder = decoder
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=tokenizer.eos_token,
        bos_token=tokenizer.bos_token,
        unk_token=tokenizer.unk_token,
    )


def _random_sequences(tokenizer, seed, n=1500):
    """Uniform over the non-special ids, and (with byte-fallback tokens) sequences rich in byte tokens, so
    invalid, truncated and valid multi-byte runs all occur."""
    rng = random.Random(seed)
    plain = plain_ids(tokenizer)
    byte_ids = sorted(byte_token_ids(tokenizer))
    for _ in range(n):
        pool = byte_ids if byte_ids and rng.random() < 0.4 else plain
        yield [rng.choice(pool if rng.random() < 0.7 else plain) for _ in range(rng.randint(0, 12))]


def test_table_joined_equals_decode_continuation(family):
    name, tokenizer = family
    table = token_bytes_table(tokenizer)
    assert len(table) == len(tokenizer)
    for ids in _random_sequences(tokenizer, seed=len(name)):
        assert _joined(table, ids) == decode_continuation(tokenizer, ids), (
            name,
            tokenizer.convert_ids_to_tokens(ids),
        )


def test_text_tokenizations_agree(family):
    """Encodings of real text (and retokenizations of it into smaller pieces and byte tokens) decode to the
    text, with the leading space kept."""
    name, tokenizer = family
    table = token_bytes_table(tokenizer)
    rng = random.Random(1)
    for text in [
        " The dog caught a frisbee.",
        " El niño come piña",
        " 日本の猫 🐶 café!",
        " Über 🎉\nMüller",
    ]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        for variant in [ids] + [resplit(tokenizer, ids, rng) for _ in range(10)]:
            assert _joined(table, variant) == decode_continuation(tokenizer, variant)
            if name != "wordpiece":  # WordPiece puts a space between words, not the text's own spaces
                assert decode_continuation(tokenizer, variant) == text


def test_special_tokens_and_eos(family):
    name, tokenizer = family
    table = token_bytes_table(tokenizer)
    eos = tokenizer.eos_token_id
    for t in tokenizer.all_special_ids:
        assert table[t] == b""
    dog = tokenizer.encode(" dog", add_special_tokens=False)
    cat = tokenizer.encode(" cat", add_special_tokens=False)
    specials = [t for t in tokenizer.all_special_ids if t != eos]
    assert decode_continuation(tokenizer, [*specials, *dog, *specials, eos, *cat]) == decode_continuation(
        tokenizer, dog
    )
    assert decode_continuation(tokenizer, [eos, *dog]) == ""
    assert decode_continuation(tokenizer, []) == ""


def test_word_marker_keeps_its_space(family):
    name, tokenizer = family
    table = token_bytes_table(tokenizer)
    marker = {"byte_level": "Ġdog", "llama2": "▁dog", "metaspace": "▁dog", "wordpiece": "dog"}[name]
    t = tokenizer.convert_tokens_to_ids(marker)
    assert tokenizer.convert_ids_to_tokens([t]) == [marker]
    assert table[t] == b" dog"
    assert decode_continuation(tokenizer, [t]) == " dog"


@pytest.mark.parametrize("name", ["llama2", "metaspace"])
def test_continuation_keeps_leading_space_that_decode_strips(name, tmp_path_factory):
    tokenizer = build_family(name, tmp_path_factory.mktemp(name))
    ids = tokenizer.encode(" dog and cat", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "▁dog"
    assert tokenizer.decode(ids) == "dog and cat"  # the tokenizer's own decode: the start of a text
    assert decode_continuation(tokenizer, ids) == " dog and cat"
    assert _joined(token_bytes_table(tokenizer), ids) == " dog and cat"


def test_byte_fallback_tokens_are_their_byte(llama2):
    table = token_bytes_table(llama2)
    ids = byte_token_ids(llama2)
    assert sorted(ids.values()) == list(range(256))
    assert sorted(ids) == list(range(3, 259))  # Llama-2's layout
    for t, byte in ids.items():
        assert table[t] == bytes([byte])
    newline = llama2.convert_tokens_to_ids("<0x0A>")
    assert decode_continuation(llama2, [newline]) == "\n"
    # a character spelled in bytes, and the same bytes cut short
    e_acute = [llama2.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "é".encode()]
    assert decode_continuation(llama2, e_acute) == "é" == llama2.decode(e_acute)
    assert decode_continuation(llama2, e_acute[:1]) == "\ufffd"
    dog = llama2.convert_tokens_to_ids("▁dog")
    assert decode_continuation(llama2, [*e_acute[:1], dog]) == "\ufffd dog"


def test_invalid_byte_runs_decode_per_maximal_subpart(llama2):
    """`tokenizers` turns every byte of an invalid run into U+FFFD (even an ASCII one); the continuation,
    like the byte table and byte-level BPE, replaces each maximal invalid subpart once."""
    byte = {b: t for t, b in byte_token_ids(llama2).items()}
    table = token_bytes_table(llama2)
    cases = {
        (0x41, 0x80): "A\ufffd",
        (0xE6, 0x97, 0x41): "\ufffdA",
        (0xC3, 0xA9, 0xFF): "é\ufffd",
        (0xF0, 0x9F, 0x90, 0xB6): "🐶",
    }
    for data, expected in cases.items():
        ids = [byte[b] for b in data]
        assert bytes(data).decode("utf-8", "replace") == expected
        assert decode_continuation(llama2, ids) == expected == _joined(table, ids)
    assert llama2.decode([byte[0x41], byte[0x80]]) == "\ufffd\ufffd"  # the quirk avoided above


def test_byte_fallback_value_follows_tokenizers():
    from tokenizers import decoders

    fallback = decoders.ByteFallback()
    for piece in ["<0x0A>", "<0x0a>", "<0xFF>", "<0x+A>", "<0xG1>", "<0x0A", "<0x0AA>", "<0x1>", "<0x-1>"]:
        value = byte_fallback_value(piece)
        decoded = fallback.decode([piece])
        if value is None:
            assert decoded == piece, piece
        else:
            assert decoded == bytes([value]).decode("utf-8", "replace"), piece


def _decoders():
    from tokenizers import decoders

    return {
        "gemma (no strip)": decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        ),
        "strip each token": decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)]),
        "metaspace first": decoders.Metaspace(prepend_scheme="first"),
        "metaspace never": decoders.Metaspace(prepend_scheme="never"),
        "replace after fuse": decoders.Sequence([decoders.Fuse(), decoders.Replace("▁", "_")]),
        "wordpiece no cleanup": decoders.WordPiece(cleanup=False),
        "no decoder": None,
    }


@pytest.mark.parametrize("kind", list(_decoders()))
def test_other_pipelines_are_exact(llama2, kind):
    tokenizer = _with_decoder(llama2, _decoders()[kind])
    table = token_bytes_table(tokenizer)
    for ids in _random_sequences(tokenizer, seed=7, n=600):
        assert _joined(table, ids) == decode_continuation(tokenizer, ids), (
            kind,
            tokenizer.convert_ids_to_tokens(ids),
        )


def test_underivable_pipelines_raise_naming_the_decoder(llama2):
    from tokenizers import Regex, decoders

    cases = {
        "BPEDecoder": decoders.BPEDecoder(),
        "CTC": decoders.CTC(),
        "Strip": decoders.Sequence([decoders.Fuse(), decoders.Strip(" ", 0, 1)]),
        "Regex": decoders.Replace(Regex("a+"), "b"),
        "ByteFallback": decoders.Sequence([decoders.ByteFallback(), decoders.Replace("▁", " ")]),
    }
    for name, decoder in cases.items():
        tokenizer = _with_decoder(llama2, decoder)
        with pytest.raises(ValueError, match="cannot derive exact token bytes for the decoder") as info:
            token_bytes_table(tokenizer)
        assert name in str(info.value)
        with pytest.raises(ValueError):
            VocabTables.build(tokenizer)


def test_byte_level_added_tokens_outside_the_byte_alphabet(tmp_path):
    """`tokenizers` maps a byte-level token to bytes only when every character is in GPT-2's table; a token
    with any other character (an added token such as "ü x") is its own UTF-8."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab={"a": 0, "Ġb": 1, "Ã": 2, "©": 3, "<eos>": 4}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<eos>"])
    tok.add_tokens(["ü x", "Ġq"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    table = token_bytes_table(tokenizer)
    assert table == [b"a", b" b", b"\xc3", b"\xa9", b"", "ü x".encode(), b" q"]
    for ids in ([0, 5, 1], [2, 5, 3], [2, 3, 6], [5, 2]):
        assert _joined(table, ids) == decode_continuation(tokenizer, ids) == tokenizer.decode(ids)


def test_decoder_type_for_the_fingerprint(family, llama2):
    name, tokenizer = family
    kind = decoder_type(tokenizer)
    assert kind == decoder_type(tokenizer) and tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(
        tokenizer
    )
    if name == "byte_level":
        assert kind == "ByteLevel"  # unchanged from before, so byte-level fingerprints are too
    if name == "llama2":
        import json

        assert json.loads(kind) == LLAMA2_DECODER
    # a different pipeline over the same vocabulary is a different fingerprint
    other = _with_decoder(llama2, _decoders()["gemma (no strip)"])
    assert decoder_type(other) != decoder_type(llama2)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(llama2)
