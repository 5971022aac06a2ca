"""The per-tokenizer tables' fast paths against the plain definitions they replace: runs and pieces of a text
by regex against a character loop, the fingerprint's one hash update against one per piece, the byte-level
token bytes against the general decoder pipeline."""

import hashlib
import json
import random

import numpy as np
from support import build_tokenizer

from pc_core.constraints.token_bytes import (
    _Pipeline,
    decoder_state,
    decoder_type,
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


def test_fingerprint_is_one_hash_update_per_piece(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    size = len(tokenizer)
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [size, tokenizer.eos_token_id, sorted(tokenizer.all_special_ids), decoder_type(tokenizer)]
        ).encode()
    )
    for piece in tokenizer.convert_ids_to_tokens(list(range(size))):
        h.update(str(piece).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    assert tokenizer_fingerprint(tokenizer) == h.hexdigest()[:32]


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
