"""Test oracles for characters split across tokens (pc_core/constraints/byte_chars.py), independent of the
compiler: they look only at the bytes each token contributes and at the constraint's text."""

from __future__ import annotations

from typing import NamedTuple

from pc_core.constraints.blocklist import split_blocklist
from pc_core.constraints.nodes import Affixed, EndsWith, iter_keywords, walk
from pc_core.constraints.spec import parse_constraint
from pc_core.constraints.token_bytes import token_bytes_table

ANY = None  # every character may be split


class _Vocabulary(NamedTuple):
    tokenizer: object  # kept, so that its id is not reused
    size: int  # a vocabulary grown since is read again
    raw: list[bytes]  # token_bytes_table
    banned: dict[int, bool]  # banned_token's answers so far


_VOCABULARIES: dict[int, _Vocabulary] = {}


def _vocabulary(tokenizer) -> _Vocabulary:
    """token_bytes_table, built once per tokenizer: a property test asks for it per sequence, and building it
    walks the whole vocabulary (90% of test_tokenizer_families' time before)."""
    held = _VOCABULARIES.get(id(tokenizer))
    if held is None or held.tokenizer is not tokenizer or held.size != len(tokenizer):
        held = _VOCABULARIES[id(tokenizer)] = _Vocabulary(
            tokenizer, len(tokenizer), token_bytes_table(tokenizer), {}
        )
    return held


def splittable_chars(spec, blocklist_mask: bool = True) -> frozenset[str]:
    """The characters a word-level constraint lets tokens split: the non-ASCII characters of its keywords'
    forms (words and gaps) and `ends_with` texts; none with a suffix or stop strings, or a blocklist enforced
    beside the DFA (compile_constraint's `blocklist_mask`)."""
    constraint = parse_constraint(spec)
    if isinstance(constraint, Affixed) or (blocklist_mask and split_blocklist(constraint) is not None):
        return frozenset()  # a suffix, stop strings or a blocklist beside the DFA: no character is split
    texts = [node.text for node in walk(constraint) if isinstance(node, EndsWith)]
    for keyword in iter_keywords(constraint):
        for form in keyword.forms():  # ("any" forms are casefolded)
            texts += [*form.words, *form.gaps]
    return frozenset(c for text in texts for c in text if not c.isascii())


def breaks_characters(tokenizer, ids, splittable: frozenset[str] | None = frozenset()) -> bool:
    """Would generation never emit `ids` (up to EOS) for its bytes? They must be valid UTF-8 ending with a
    complete character, and a token boundary inside a character is allowed only where the character's bytes
    so far start some character of `splittable` (ANY: every character)."""
    raw = _vocabulary(tokenizer).raw
    eos = tokenizer.eos_token_id
    data, cuts = b"", []
    for t in ids:
        if t == eos:
            break
        data += raw[t]
        cuts.append(len(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    starts, at = [], 0
    for ch in text:  # byte offset where each character starts
        starts.append(at)
        at += len(ch.encode())
    allowed = None if splittable is None else {c.encode()[:i] for c in splittable for i in range(1, 4)}
    boundary = set(starts) | {len(data)}
    for cut in cuts:
        if cut in boundary:
            continue
        begin = max(s for s in starts if s < cut)
        if allowed is not None and data[begin:cut] not in allowed:
            return True
    return False


def decoded_without_replacement(tokenizer, ids) -> bool:
    """The continuation's text (pcgen's decoder) has no U+FFFD."""
    from pc_core.constraints import decode_continuation

    return "\ufffd" not in decode_continuation(tokenizer, ids)


def has_banned_token(tokenizer, ids) -> bool:
    """Independent of the compiler: does a token (before EOS) end inside a UTF-8 character, or decode to
    U+FFFD on its own (invalid bytes)? Generation never emits either."""
    for t in ids:
        if t == tokenizer.eos_token_id:
            return False
        if banned_token(tokenizer, t):
            return True
    return False


def banned_token(tokenizer, token: int) -> bool:
    """has_banned_token for one token, remembered per tokenizer (property tests ask for the same tokens
    again and again). A complete ending gains exactly one U+FFFD from any stray continuation byte; a
    partial one does not."""
    vocabulary = _vocabulary(tokenizer)
    if token not in vocabulary.banned:
        data = vocabulary.raw[token]
        alone = data.decode("utf-8", "replace")
        vocabulary.banned[token] = "\ufffd" in alone or any(
            (data + bytes([b])).decode("utf-8", "replace") != alone + "\ufffd" for b in range(0x80, 0xC0)
        )
    return vocabulary.banned[token]
