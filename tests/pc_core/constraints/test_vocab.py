"""The per-tokenizer tables' fast paths against the plain definitions they replace: runs and pieces of a text
by regex against a character loop, the byte-level token bytes against the general decoder pipeline; and the
fingerprint of a fixed tokenizer, pinned."""

import random

import numpy as np
from tiny_models import build_tokenizer

from pc_core.constraints.token_bytes import (
    _Pipeline,
    decoder_state,
    special_token_ids,
    token_bytes_table,
)
from pc_core.constraints.vocab import (
    VocabTables,
    decode_pending,
    split_pieces,
    split_runs,
    tokenizer_fingerprint,
)
from pc_core.constraints.words import is_word_char

ALPHABET = "ab_Z9é日\u0301\u200d \n\t.,-'!\ufffd😀\u00a0"


def reference_runs(text):
    runs = []
    for ch in text:
        if runs and is_word_char(ch) == is_word_char(runs[-1][-1]):
            runs[-1] += ch
        else:
            runs.append(ch)
    return runs


def reference_pieces(text):
    runs = reference_runs(text)
    p = runs.pop(0) if runs and is_word_char(runs[0][0]) else ""
    if not runs:
        return p, "", (), ""
    sep = runs.pop(0)
    s = runs.pop() if runs and is_word_char(runs[-1][0]) else ""
    return p, sep, tuple((runs[i], runs[i + 1]) for i in range(0, len(runs), 2)), s


def test_runs_and_pieces_match_the_character_loop():
    rng = random.Random(0)
    texts = ["", " ", "a", "a b", " a b c ", "é\u0301x y", "_", "a\ufffdb"]
    texts += ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12))) for _ in range(20000)]
    for text in texts:
        assert split_runs(text) == reference_runs(text), text
        assert split_pieces(text) == reference_pieces(text), text


def test_decode_pending_fast_path_matches_the_incremental_decoder():
    import codecs

    rng = random.Random(1)
    samples = [b"", b"abc", "日本".encode(), "日".encode()[:2], b"\xff", b"\x97abc", "é".encode() + b"\xc3"]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 6))) for _ in range(5000)]
    for data in samples:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = decoder.decode(data, final=False)
        assert decode_pending(b"", data) == (text, decoder.getstate()[0]), data


def fixed_tokenizer(pieces: tuple[str, ...] = ("a", "b", "ab", "Ġ", "Ġab", "Ã", "©", "Ã©")):
    """A byte-level BPE built from a written vocabulary and merges (no training): the same on every machine.
    <|endoftext|> is the last id and EOS; "Ã©" is é in the byte alphabet."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {piece: i for i, piece in enumerate(pieces)}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("Ġ", "ab"), ("Ã", "©")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def test_fingerprint_of_a_fixed_tokenizer_is_pinned():
    """The digest is part of every HMM's pairing record (config.json) and of cache keys: a change to what it
    covers or how, even one that keeps it a fine hash, orphans every recorded pairing. Pinned, not recomputed.
    If the change is intended, regenerate: print(tokenizer_fingerprint(fixed_tokenizer())) here, run with -s
    (the value is SHA-256 over json [9, 8, [8], "ByteLevel"] then "piece\\0" per id, first 32 hex digits)."""
    assert tokenizer_fingerprint(fixed_tokenizer()) == "6123fbfd2fc4a3e6d1bd2488fc1bbd10"
    # and it depends on which id holds which piece and on EOS, not only on the vocabulary's size
    assert tokenizer_fingerprint(fixed_tokenizer(("b", "a", "ab", "Ġ", "Ġab", "Ã", "©", "Ã©"))) != (
        "6123fbfd2fc4a3e6d1bd2488fc1bbd10"
    )
    other_eos = fixed_tokenizer()
    other_eos.eos_token = "a"
    assert tokenizer_fingerprint(other_eos) != "6123fbfd2fc4a3e6d1bd2488fc1bbd10"


def test_byte_level_fast_path_matches_the_pipeline(tmp_path):
    """Every token, including an added one whose characters are outside the byte table (kept as UTF-8)."""
    tokenizer = build_tokenizer(tmp_path)
    tokenizer.add_tokens(["héllo wörld", "日本語"])
    backend = tokenizer.backend_tokenizer
    pieces = [backend.id_to_token(i) for i in range(len(tokenizer))]
    pipeline = _Pipeline(decoder_state(tokenizer), pieces)
    special = special_token_ids(tokenizer)
    expected = [b"" if i in special or p is None else pipeline.apply(p) for i, p in enumerate(pieces)]
    table = token_bytes_table(tokenizer)
    assert table == expected
    assert table[tokenizer.convert_tokens_to_ids("日本語")] == "日本語".encode()


def test_tables_token_groups_are_the_tokens_of_each_leading_run(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    tables = VocabTables.build(tokenizer)
    for groups, key_of in ((tables.p_tokens_by_exact, str), (tables.p_tokens_by_casefold, str.casefold)):
        expected: dict[str, list[int]] = {}
        for t in range(len(tokenizer)):
            p = tables.strings[tables.p_id[t]]
            if p:
                expected.setdefault(key_of(p), []).append(t)
        assert list(groups) == list(expected)
        for key, tokens in expected.items():
            assert groups[key].dtype == np.int64 and groups[key].tolist() == tokens
