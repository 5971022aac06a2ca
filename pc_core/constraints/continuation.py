"""The text a constraint is judged on: a generated continuation, decoded by the tokenizer itself.

The tokenizer's own decode treats its first token as the start of a text: SentencePiece-style decoders strip
one leading space ("▁dog" -> "dog") and Metaspace drops the first token's markers. A generated continuation
follows a prompt, so it is decoded after an *anchor* token (one visible character, which takes the
start-of-text treatment) whose text is then removed. The only other departure from `tokenizer.decode`: a run
of byte-fallback tokens (`<0xNN>`) that is not valid UTF-8 is decoded from its bytes (one U+FFFD per maximal
invalid subpart, like the UTF-8 decoding of byte-level BPE), where `tokenizers` turns every byte of the run
into U+FFFD, ASCII ones included. This deliberately does not reuse token_bytes.py: the checker is the
independent judge of what the DFA, built from those bytes, accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# ByteFallback's test in `tokenizers`: "<0x" + two hex digits (u8::from_str_radix, "+" allowed) + ">"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2}|\+[0-9A-Fa-f])>")


@dataclass(frozen=True)
class _Decoding:
    vocab_size: int
    anchor: int
    anchor_text: str
    skip: frozenset[int]  # special tokens: no text
    byte_fallback: bool


def cut_at_eos(tokenizer: Any, token_ids: Sequence[int]) -> list[int]:
    ids = list(token_ids)
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def decode_continuation(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """The ids cut at the first EOS, decoded without special tokens, as the continuation of a text rather
    than its start, with invalid UTF-8 replaced by U+FFFD."""
    how = _decoding(tokenizer)
    ids = [t for t in cut_at_eos(tokenizer, token_ids) if t not in how.skip]
    if not how.byte_fallback:
        return _after_anchor(tokenizer, how, ids)
    values = [_byte_value(piece) for piece in tokenizer.convert_ids_to_tokens(ids)]
    out, done = [], 0
    for start, end in _invalid_byte_runs(values):
        out.append(_after_anchor(tokenizer, how, ids[done:start]))
        out.append(bytes(values[start:end]).decode("utf-8", "replace"))
        done = end
    out.append(_after_anchor(tokenizer, how, ids[done:]))
    return "".join(out)


def _after_anchor(tokenizer: Any, how: _Decoding, ids: list[int]) -> str:
    if not ids:
        return ""
    text = tokenizer.decode([how.anchor, *ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if not text.startswith(how.anchor_text):
        raise ValueError(f"decoding after the anchor {how.anchor_text!r} changed it: {text[:20]!r}")
    return text[len(how.anchor_text) :]


def _byte_value(piece: str | None) -> int | None:
    match = _BYTE_TOKEN.fullmatch(piece) if piece is not None and len(piece.encode()) == 6 else None
    return int(match.group(1), 16) if match else None


def _invalid_byte_runs(values: list[int | None]) -> list[tuple[int, int]]:
    """(start, end) of the maximal runs of byte tokens whose bytes are not valid UTF-8."""
    runs, start = [], 0
    for i in range(len(values) + 1):
        if i == len(values) or values[i] is None:
            if start < i:
                data = bytes(values[start:i])
                if data.decode("utf-8", "replace").encode() != data:
                    runs.append((start, i))
            start = i + 1
    return runs


def _decoding(tokenizer: Any) -> _Decoding:
    """How to decode continuations for `tokenizer`, found once and kept on the tokenizer object."""
    cached = getattr(tokenizer, "_pcgen_continuation", None)
    if cached is None or cached.vocab_size != len(tokenizer):
        cached = _find_decoding(tokenizer)
        try:
            tokenizer._pcgen_continuation = cached
        except AttributeError:
            pass
    return cached


def _find_decoding(tokenizer: Any) -> _Decoding:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    skip = set(tokenizer.all_special_ids)
    byte_fallback = False
    if backend is not None:
        skip.update(i for i, t in backend.get_added_tokens_decoder().items() if t.special)
        if backend.decoder is not None:
            steps = _steps(json.loads(backend.decoder.__getstate__()))
            byte_fallback = any(step.get("type") == "ByteFallback" for step in steps)

    def alone(t: int) -> str:
        return tokenizer.decode([t], skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # an anchor: a token whose text is one visible character, so no start-of-text rule reaches past it
    for ch in "aeoxAEOX01.,!?":
        t = tokenizer.convert_tokens_to_ids(ch)
        if isinstance(t, int) and t not in skip and t != tokenizer.unk_token_id and alone(t) == ch:
            return _Decoding(len(tokenizer), t, ch, frozenset(skip), byte_fallback)
    for t in range(len(tokenizer)):
        text = alone(t) if t not in skip else ""
        if len(text) == 1 and not text.isspace() and text != "\ufffd":
            return _Decoding(len(tokenizer), t, text, frozenset(skip), byte_fallback)
    raise ValueError(f"{type(tokenizer).__name__} has no token that decodes to one visible character")


def _steps(node: dict) -> list[dict]:
    return [s for child in node["decoders"] for s in _steps(child)] if "decoders" in node else [node]
