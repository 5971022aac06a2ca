"""Per-tokenizer tables, computed once and cached by tokenizer fingerprint.

Every token is described by what its bytes do to the text, decoded on its own (no partial character
pending before it): its leading run of word characters `p`, whether it contains a separator (any non-word
character, including U+FFFD for invalid bytes), the complete words strictly inside it, its trailing run of
word characters `s`, and the incomplete UTF-8 sequence it leaves pending at its end. For a token with no
separator, `p` is its whole text. Tokens that start with a UTF-8 continuation byte need the exact byte-level
path when a partial character is pending; every other case reduces to these pieces.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pc_core.constraints.words import is_word_char

KIND_SPECIAL = 0  # skipped by decode(skip_special_tokens=True): no text at all
KIND_EOS = 1
KIND_WORD = 2  # only word characters (or nothing but a pending partial character)
KIND_SEP = 3  # contains at least one separator


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table used by byte-level BPE vocabularies."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _decoder_type(tokenizer: Any) -> str:
    from pc_core.constraints.token_bytes import decoder_type

    return decoder_type(tokenizer)


def token_bytes_table(tokenizer: Any) -> list[bytes]:
    """The bytes each token contributes to a continuation's text (special tokens: b""), derived from the
    tokenizer's decoder pipeline (see token_bytes.py); ValueError for a pipeline that cannot be derived."""
    from pc_core.constraints.token_bytes import token_bytes_table as derive

    return derive(tokenizer)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 over the vocabulary, special ids and decoder type: equal fingerprints decode equally."""
    size = len(tokenizer)
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [size, tokenizer.eos_token_id, sorted(tokenizer.all_special_ids), _decoder_type(tokenizer)]
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


def split_pieces(text: str) -> tuple[str, bool, tuple[str, ...], str]:
    """(leading word run, has separator, inner words, trailing word run) of a token's text."""
    i = 0
    while i < len(text) and is_word_char(text[i]):
        i += 1
    if i == len(text):
        return text, False, (), ""
    j = len(text)
    while j > i and is_word_char(text[j - 1]):
        j -= 1
    inner, word = [], []
    for ch in text[i:j]:
        if is_word_char(ch):
            word.append(ch)
        elif word:
            inner.append("".join(word))
            word = []
    return text[:i], True, tuple(inner), text[j:]


@dataclass
class VocabTables:
    fingerprint: str
    vocab_size: int
    eos_token_id: int
    token_bytes: list[bytes]
    kind: np.ndarray  # (V,) int8, KIND_*
    p_id: np.ndarray  # (V,) int32 into `strings`: leading word run (whole text when no separator)
    s_id: np.ndarray  # (V,) int32: trailing word run ("" when none, or no separator)
    inner: dict[int, tuple[str, ...]]  # token -> complete inner words (rare)
    pend_id: np.ndarray  # (V,) int32 into `pendings`: incomplete UTF-8 tail left by the token
    lead_continuation: np.ndarray  # (V,) bool: first byte is 0x80..0xBF
    strings: list[str]
    string_ids: dict[str, int]
    string_ids_by_casefold: dict[str, list[int]]
    pendings: list[bytes]
    # casefolded leading run -> tokens with that run (for the few tokens that extend a relevant prefix)
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
        pendings, pending_ids = [b""], {b"": 0}

        def sid(text: str) -> int:
            if text not in string_ids:
                string_ids[text] = len(strings)
                strings.append(text)
            return string_ids[text]

        kind = np.full(size, KIND_WORD, np.int8)
        p_id = np.zeros(size, np.int32)
        s_id = np.zeros(size, np.int32)
        pend_id = np.zeros(size, np.int32)
        lead = np.zeros(size, bool)
        inner: dict[int, tuple[str, ...]] = {}
        by_cf: dict[str, list[int]] = {}
        by_ex: dict[str, list[int]] = {}
        for t, data in enumerate(raw):
            if t == eos:
                kind[t] = KIND_EOS
                continue
            if t in special:
                kind[t] = KIND_SPECIAL
                continue
            lead[t] = bool(data) and 0x80 <= data[0] <= 0xBF
            text, tail = decode_pending(b"", data)
            if tail not in pending_ids:
                pending_ids[tail] = len(pendings)
                pendings.append(tail)
            pend_id[t] = pending_ids[tail]
            p, has_sep, words, s = split_pieces(text)
            kind[t] = KIND_SEP if has_sep else KIND_WORD
            p_id[t], s_id[t] = sid(p), sid(s)
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
            token_bytes=raw,
            kind=kind,
            p_id=p_id,
            s_id=s_id,
            inner=inner,
            pend_id=pend_id,
            lead_continuation=lead,
            strings=strings,
            string_ids=string_ids,
            string_ids_by_casefold=by_cf_strings,
            pendings=pendings,
            p_tokens_by_casefold={k: np.asarray(v, np.int64) for k, v in by_cf.items()},
            p_tokens_by_exact={k: np.asarray(v, np.int64) for k, v in by_ex.items()},
        )


_CACHE: OrderedDict[str, VocabTables] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def vocab_tables(tokenizer: Any) -> VocabTables:
    """Tables for `tokenizer`, built once per fingerprint (a few LRU entries)."""
    fingerprint = getattr(tokenizer, "_pcgen_fingerprint", None)
    if fingerprint is None:
        fingerprint = tokenizer_fingerprint(tokenizer)
        try:
            tokenizer._pcgen_fingerprint = fingerprint
        except AttributeError:
            pass
    with _CACHE_LOCK:
        if fingerprint in _CACHE:
            _CACHE.move_to_end(fingerprint)
            return _CACHE[fingerprint]
    tables = VocabTables.build(tokenizer, fingerprint)
    with _CACHE_LOCK:
        _CACHE[fingerprint] = tables
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return tables
