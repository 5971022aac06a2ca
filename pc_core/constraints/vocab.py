"""Per-tokenizer tables, computed once and cached by tokenizer fingerprint.

Every token is described by what its bytes do to the text, decoded on its own: its leading run of word
characters `p`, its first separator run (any non-word characters), the words strictly inside it with the
separator run after each, and its trailing run of word characters `s`. For a token with no separator, `p` is
its whole text. Tokens that end inside a multi-byte UTF-8 character, or whose text contains U+FFFD (invalid
bytes, e.g. a token that starts with a stray continuation byte), are *banned*: generated text is always
valid and every character is complete at a token boundary (docs/method.md §3), so these pieces describe
every token that generation can emit exactly.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pc_core.cache import LRUCache
from pc_core.constraints.token_bytes import decoder_type, token_bytes_table
from pc_core.constraints.words import is_word_char

KIND_SPECIAL = 0  # skipped by decode(skip_special_tokens=True): no text at all
KIND_EOS = 1
KIND_WORD = 2  # only word characters (or nothing but a pending partial character)
KIND_SEP = 3  # contains at least one separator


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 over the vocabulary, special ids and decoder type: equal fingerprints decode equally."""
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
    return h.hexdigest()[:32]


def decode_pending(pending: bytes, data: bytes) -> tuple[str, bytes]:
    """Decode `data` after the incomplete sequence `pending`, exactly as a lossy UTF-8 decoder streams it.

    Returns the completed text (U+FFFD for each invalid subpart) and the new incomplete tail.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.setstate((pending, 0))
    text = decoder.decode(data, final=False)
    return text, decoder.getstate()[0]


def split_runs(text: str) -> list[str]:
    """The text as alternating runs of word characters and separators (the first may be either)."""
    runs: list[str] = []
    for ch in text:
        if runs and is_word_char(ch) == is_word_char(runs[-1][-1]):
            runs[-1] += ch
        else:
            runs.append(ch)
    return runs


def split_pieces(text: str) -> tuple[str, str, tuple[tuple[str, str], ...], str]:
    """(leading word run, first separator run, inner (word, separator after it) pairs, trailing word run) of
    a token's text; the separator run is "" when the text is all word characters."""
    runs = split_runs(text)
    p = runs.pop(0) if runs and is_word_char(runs[0][0]) else ""
    if not runs:
        return p, "", (), ""
    sep = runs.pop(0)
    s = runs.pop() if runs and is_word_char(runs[-1][0]) else ""
    inner = tuple((runs[i], runs[i + 1]) for i in range(0, len(runs), 2))
    return p, sep, inner, s


@dataclass
class VocabTables:
    fingerprint: str
    vocab_size: int
    eos_token_id: int
    kind: np.ndarray  # (V,) int8, KIND_*
    p_id: np.ndarray  # (V,) int32 into `strings`: leading word run (whole text when no separator)
    sep_id: np.ndarray  # (V,) int32: first separator run ("" when none)
    s_id: np.ndarray  # (V,) int32: trailing word run ("" when none, or no separator)
    inner: dict[int, tuple[tuple[str, str], ...]]  # token -> (inner word, separator run after it) (rare)
    banned: np.ndarray  # (V,) bool: ends inside a UTF-8 character, or decodes to U+FFFD
    strings: list[str]
    string_ids: dict[str, int]
    string_ids_by_casefold: dict[str, list[int]]
    # leading run (casefolded / exact) -> tokens with that run (for the few tokens that extend a relevant prefix)
    p_tokens_by_casefold: dict[str, np.ndarray] = field(default_factory=dict)
    p_tokens_by_exact: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, tokenizer: Any, fingerprint: str | None = None) -> VocabTables:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos_token_id; pcgen needs one to end texts")
        raw = token_bytes_table(tokenizer)
        size = len(raw)
        special = set(tokenizer.all_special_ids)
        strings, string_ids = [""], {"": 0}

        def sid(text: str) -> int:
            if text not in string_ids:
                string_ids[text] = len(strings)
                strings.append(text)
            return string_ids[text]

        kind = np.full(size, KIND_WORD, np.int8)
        p_id = np.zeros(size, np.int32)
        sep_id = np.zeros(size, np.int32)
        s_id = np.zeros(size, np.int32)
        banned = np.zeros(size, bool)
        inner: dict[int, tuple[tuple[str, str], ...]] = {}
        by_cf: dict[str, list[int]] = {}
        by_ex: dict[str, list[int]] = {}
        for t, data in enumerate(raw):
            if t == eos:
                kind[t] = KIND_EOS
                continue
            if t in special:
                kind[t] = KIND_SPECIAL
                continue
            text, tail = decode_pending(b"", data)
            banned[t] = bool(tail) or "\ufffd" in text
            p, sep, words, s = split_pieces(text)
            kind[t] = KIND_SEP if sep else KIND_WORD
            p_id[t], sep_id[t], s_id[t] = sid(p), sid(sep), sid(s)
            if words:
                inner[t] = words
            if p:
                by_cf.setdefault(p.casefold(), []).append(t)
                by_ex.setdefault(p, []).append(t)
        by_cf_strings: dict[str, list[int]] = {}
        for i, text in enumerate(strings):
            by_cf_strings.setdefault(text.casefold(), []).append(i)
        return cls(
            fingerprint=fingerprint or tokenizer_fingerprint(tokenizer),
            vocab_size=size,
            eos_token_id=eos,
            kind=kind,
            p_id=p_id,
            sep_id=sep_id,
            s_id=s_id,
            inner=inner,
            banned=banned,
            strings=strings,
            string_ids=string_ids,
            string_ids_by_casefold=by_cf_strings,
            p_tokens_by_casefold={k: np.asarray(v, np.int64) for k, v in by_cf.items()},
            p_tokens_by_exact={k: np.asarray(v, np.int64) for k, v in by_ex.items()},
        )

    @property
    def nbytes(self) -> int:
        """Approximate resident size: the arrays, the strings and the per-token dictionaries."""
        arrays = (self.kind, self.p_id, self.sep_id, self.s_id, self.banned)
        strings = sum(sys.getsizeof(s) for s in self.strings)
        lookups = sum(
            a.nbytes + 64 for d in (self.p_tokens_by_casefold, self.p_tokens_by_exact) for a in d.values()
        )
        return sum(a.nbytes for a in arrays) + 2 * strings + lookups + 200 * len(self.inner)

    def runs(self, token: int) -> list[str]:
        """The token's text as alternating word / separator runs (the text without pieces is not stored)."""
        out = [self.strings[self.p_id[token]]] if self.p_id[token] else []
        if self.sep_id[token]:
            out.append(self.strings[self.sep_id[token]])
            for word, sep in self.inner.get(token, ()):
                out += [word, sep]
            if self.s_id[token]:
                out.append(self.strings[self.s_id[token]])
        return out


TABLES: LRUCache[VocabTables] = LRUCache("vocab", 4 * 256 * 2**20, lambda t: t.nbytes)


def vocab_tables(tokenizer: Any) -> VocabTables:
    """Tables for `tokenizer`, built once per fingerprint (LRU, bounded in bytes)."""
    fingerprint = getattr(tokenizer, "_pcgen_fingerprint", None)
    if fingerprint is None:
        fingerprint = tokenizer_fingerprint(tokenizer)
        try:
            tokenizer._pcgen_fingerprint = fingerprint
        except AttributeError:
            pass
    tables = TABLES.get(fingerprint)
    if tables is None:
        tables = VocabTables.build(tokenizer, fingerprint)
        TABLES.put(fingerprint, tables)
    return tables
