"""Per-tokenizer tables, computed once and cached by tokenizer fingerprint.

Every token is described by what its bytes do to the text, decoded on its own: its leading run of word
characters `p`, its first separator run (any non-word characters), the words strictly inside it with the
separator run after each, and its trailing run of word characters `s`. For a token with no separator, `p` is
its whole text.

Characters at the byte level (docs/method.md §3): a token may end inside a multi-byte UTF-8 character (its
pieces describe the complete characters, `tail_id` names the incomplete end), or start with the continuation
bytes of a character begun by earlier tokens (`continuations`: its leading continuation bytes and the rest).
`banned` marks every token that is not complete valid text on its own (either of those, or invalid bytes);
the compiler allows the first kind at a character boundary and the second after a matching pending
character (byte_chars.py). `never` marks the tokens that are invalid UTF-8 whatever precedes them.
"""

from __future__ import annotations

import codecs
import gc
import hashlib
import itertools
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pc_core.cache import LRUCache
from pc_core.constraints.token_bytes import decoder_type, token_bytes_table

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
    # one update over "piece\0piece\0...", the same digest as an update per piece and separator
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    h.update("".join(f"{piece}\x00" for piece in pieces).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def decode_pending(pending: bytes, data: bytes) -> tuple[str, bytes]:
    """Decode `data` after the incomplete sequence `pending`, exactly as a lossy UTF-8 decoder streams it.

    Returns the completed text (U+FFFD for each invalid subpart) and the new incomplete tail.
    """
    if not pending:
        try:  # the common case, complete valid UTF-8: nothing pending after it
            return data.decode("utf-8"), b""
        except UnicodeDecodeError:
            pass
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.setstate((pending, 0))
    text = decoder.decode(data, final=False)
    return text, decoder.getstate()[0]


# the byte after a UTF-8 lead byte, where UTF-8 restricts it (no overlong forms, surrogates, > U+10FFFF)
FIRST_RANGE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def valid_tail(tail: bytes) -> bool:
    """Whether `tail` is the start of some UTF-8 character, and not all of it. (Python's incremental decoder
    keeps b"\xed\xa0", a surrogate's start, pending: it cannot be completed.)"""
    if not tail or not 0xC2 <= tail[0] <= 0xF4:
        return False
    if len(tail) >= (2 if tail[0] < 0xE0 else 3 if tail[0] < 0xF0 else 4):
        return False
    low, high = FIRST_RANGE.get(tail[0], (0x80, 0xBF))
    return all(low <= b <= high if i == 1 else 0x80 <= b <= 0xBF for i, b in enumerate(tail) if i)


def continuation_parts(data: bytes) -> tuple[bytes, bytes] | None:
    """(leading continuation bytes, rest) of a token that can only continue a character begun before it: one
    to three bytes 0x80-0xBF, then bytes that decode without U+FFFD (possibly ending inside a character).
    None when no preceding bytes make the token valid UTF-8."""
    j = 0
    while j < len(data) and 0x80 <= data[j] < 0xC0:
        j += 1
    if not 1 <= j <= 3:
        return None
    text, tail = decode_pending(b"", data[j:])
    if "\ufffd" in text or (tail and not valid_tail(tail)):
        return None
    return data[:j], data[j:]


_RUNS_RE = re.compile(r"\w+|\W+")  # \w as in is_word_char: one match per maximal run


def split_runs(text: str) -> list[str]:
    """The text as alternating runs of word characters and separators (the first may be either)."""
    return _RUNS_RE.findall(text)


# (leading word run)(first separator run)(inner words and separators, lazily)(trailing word run): the greedy
# runs take maximal runs, the lazy middle leaves the trailing one maximal; it matches every text
_PIECES_RE = re.compile(r"(\w*)(\W*)(.*?)(\w*)", re.S)


def split_pieces(text: str) -> tuple[str, str, tuple[tuple[str, str], ...], str]:
    """(leading word run, first separator run, inner (word, separator after it) pairs, trailing word run) of
    a token's text; the separator run is "" when the text is all word characters."""
    p, sep, middle, s = _PIECES_RE.fullmatch(text).groups()  # type: ignore[union-attr]
    if not middle:
        return p, sep, (), s
    runs = split_runs(middle)  # word, separator, word, separator, ...
    return p, sep, tuple(zip(runs[::2], runs[1::2])), s


def _partial_characters(
    token: int, data: bytes, tails: list[bytes], intern_tail: Any, continuations: dict
) -> tuple[str, int, bool]:
    """A token whose bytes are not UTF-8 on their own: its text so far, the id of the character it ends inside
    (interned in `tails`; 0 if none), and whether it is invalid whatever precedes it. A token that continues
    a pending character is recorded in `continuations` as (continuation bytes, rest bytes)."""
    text, tail = decode_pending(b"", data)
    if "\ufffd" not in text and valid_tail(tail):  # ends inside a character
        tail_id = intern_tail(tail, len(tails))
        if tail_id == len(tails):
            tails.append(tail)
        return text, tail_id, False
    split = continuation_parts(data)
    if split is not None:
        continuations[token] = split
    return text, 0, split is None


def _casefold_index(strings: list[str]) -> dict[str, list[int]]:
    """{casefolded string: the ids of the strings that fold to it}"""
    out: dict[str, list[int]] = {}
    for i, text in enumerate(strings):
        out.setdefault(text.casefold(), []).append(i)
    return out


def _int64_groups(groups: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """{key: int64 array of its tokens}: views into one array (one slice each is ~5x cheaper than an array
    per key, and most of the ~100k keys of a 128k vocabulary hold one token)."""
    lengths = [len(v) for v in groups.values()]
    flat = np.fromiter(itertools.chain.from_iterable(groups.values()), np.int64, sum(lengths))
    ends = itertools.accumulate(lengths)
    return {key: flat[end - n : end] for key, n, end in zip(groups, lengths, ends)}


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
    banned: np.ndarray  # (V,) bool: not complete valid text on its own (split character or U+FFFD)
    strings: list[str]
    string_ids: dict[str, int]
    string_ids_by_casefold: dict[str, list[int]]
    # leading run (casefolded / exact) -> tokens with that run (for the few tokens that extend a relevant prefix)
    p_tokens_by_casefold: dict[str, np.ndarray] = field(default_factory=dict)
    p_tokens_by_exact: dict[str, np.ndarray] = field(default_factory=dict)
    # byte-level characters (byte_chars.py): the incomplete character a token ends with (0: none; its text is
    # valid), tokens that continue a pending character (id -> (continuation bytes, rest bytes)), and tokens
    # that are invalid UTF-8 whatever precedes them
    tail_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (V,) int32 into `tails`
    tails: list[bytes] = field(default_factory=lambda: [b""])
    continuations: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    never: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (V,) bool

    @classmethod
    def build(cls, tokenizer: Any, fingerprint: str | None = None) -> VocabTables:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos_token_id; pcgen needs one to end texts")
        # the build allocates a few objects per token and frees none: the collector's passes over the growing
        # dictionaries find nothing and cost ~30% of a 128k-token build
        collecting = gc.isenabled()
        gc.disable()
        try:
            return cls._build(tokenizer, eos, fingerprint)
        finally:
            if collecting:
                gc.enable()

    @classmethod
    def _build(cls, tokenizer: Any, eos: int, fingerprint: str | None) -> VocabTables:
        raw = token_bytes_table(tokenizer)
        size = len(raw)
        special = set(tokenizer.all_special_ids)
        string_ids = {"": 0}
        intern = string_ids.setdefault  # first-seen order: p, sep, s of each token in turn
        kind = [KIND_WORD] * size
        p_id, sep_id, s_id = [0] * size, [0] * size, [0] * size
        banned = [False] * size
        tail_id, never = [0] * size, [False] * size
        tails, continuations = [b""], {}
        intern_tail = {b"": 0}.setdefault
        inner: dict[int, tuple[tuple[str, str], ...]] = {}
        # tokens by their prefix piece, casefolded and exact (defaultdict: no list allocated per lookup)
        by_cf: defaultdict[str, list[int]] = defaultdict(list)
        by_ex: defaultdict[str, list[int]] = defaultdict(list)
        pieces = _PIECES_RE.fullmatch
        for t, data in enumerate(raw):
            if t == eos or t in special:
                kind[t] = KIND_EOS if t == eos else KIND_SPECIAL
                continue
            try:  # (decode_pending's common case inline: 128k calls)
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                banned[t] = True
                text, tail_id[t], never[t] = _partial_characters(t, data, tails, intern_tail, continuations)
            p, sep, middle, s = pieces(text).groups()  # type: ignore[union-attr]
            if p:
                p_id[t] = intern(p, len(string_ids))
                by_ex[p].append(t)
                by_cf[p.casefold()].append(t)
            if sep:
                kind[t] = KIND_SEP
                sep_id[t] = intern(sep, len(string_ids))
                if middle:
                    runs = split_runs(middle)
                    inner[t] = tuple(zip(runs[::2], runs[1::2]))
            if s:
                s_id[t] = intern(s, len(string_ids))
        strings = list(string_ids)
        return cls(
            fingerprint=fingerprint or tokenizer_fingerprint(tokenizer),
            vocab_size=size,
            eos_token_id=eos,
            kind=np.array(kind, np.int8),
            p_id=np.array(p_id, np.int32),
            sep_id=np.array(sep_id, np.int32),
            s_id=np.array(s_id, np.int32),
            inner=inner,
            banned=np.array(banned, bool),
            strings=strings,
            string_ids=string_ids,
            string_ids_by_casefold=_casefold_index(strings),
            p_tokens_by_casefold=_int64_groups(by_cf),
            p_tokens_by_exact=_int64_groups(by_ex),
            tail_id=np.array(tail_id, np.int32),
            tails=tails,
            continuations=continuations,
            never=np.array(never, bool),
        )

    @property
    def nbytes(self) -> int:
        """Approximate resident size: the arrays, the strings and the per-token dictionaries."""
        arrays = (self.kind, self.p_id, self.sep_id, self.s_id, self.banned, self.tail_id, self.never)
        strings = sum(sys.getsizeof(s) for s in self.strings)
        lookups = sum(
            a.nbytes + 64 for d in (self.p_tokens_by_casefold, self.p_tokens_by_exact) for a in d.values()
        )
        split = 100 * (len(self.tails) + len(self.continuations))
        return sum(a.nbytes for a in arrays) + 2 * strings + lookups + 200 * len(self.inner) + split

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


VOCAB_TABLES: LRUCache[VocabTables] = LRUCache("vocab", 4 * 256 * 2**20, lambda t: t.nbytes)


def vocab_tables(tokenizer: Any) -> VocabTables:
    """Tables for `tokenizer`, built once per fingerprint (LRU, bounded in bytes)."""
    fingerprint = getattr(tokenizer, "_pcgen_fingerprint", None)
    if fingerprint is None:
        fingerprint = tokenizer_fingerprint(tokenizer)
        try:
            tokenizer._pcgen_fingerprint = fingerprint
        except AttributeError:
            pass
    tables = VOCAB_TABLES.get(fingerprint)
    if tables is None:
        tables = VocabTables.build(tokenizer, fingerprint)
        VOCAB_TABLES.put(fingerprint, tables)
    return tables
