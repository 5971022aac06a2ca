"""The bytes each token contributes to a generated continuation, derived from the tokenizer's decoder.

A `tokenizers` decoder turns the list of token strings into text in steps. Byte-level BPE (GPT-2, Llama-3,
Qwen2) maps every character of a token back to one byte. SentencePiece-style tokenizers (Llama-2, Mistral,
TULU2) use `Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)]`: the word marker becomes a
space, `<0xNN>` tokens become the byte 0xNN, the pieces are joined and one leading space is stripped from the
whole text. Others use `Metaspace`, which drops the marker of the first token and turns every other one into
a space. Decoding a token on its own runs all of these as if the token began a text, so it loses the space
of "▁dog" and turns `<0x0A>` alone into U+FFFD; this module instead interprets the steps for a token that is
*not* at the start of the text, which is what every generated token after a prompt is:

  * per-token steps (Replace, ByteFallback, Metaspace, WordPiece, Strip before Fuse) apply to each token;
  * what applies only to the first token of a whole text (Strip(start) after Fuse, Metaspace's
    prepend_scheme "first"/"always", WordPiece's unprefixed first token) does not apply;
  * raw bytes (ByteFallback, ByteLevel) are kept as bytes: the text is the concatenation decoded as UTF-8
    with errors="replace" (one U+FFFD per maximal invalid subpart).

A pipeline whose result depends on a token's neighbours in a way bytes per token cannot express (BPEDecoder,
CTC, Strip(stop) after Fuse, regex replacements, a multi-character or non-ASCII pattern that byte-fallback
bytes could form, ...) raises ValueError naming the decoder, rather than guessing.
"""

from __future__ import annotations

import json
import re
from typing import Any

SPECIAL = b""  # special tokens contribute nothing (decode skips them)

# ByteFallback's test in `tokenizers`: six bytes, "<0x" ... ">", and u8::from_str_radix(token[3..5], 16),
# which also takes a leading "+" ("<0x+A>" is byte 10).
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2}|\+[0-9A-Fa-f])>")

# WordPiece's `cleanup`, applied to each token string in this order.
_WORDPIECE_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


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
# the same table for str.translate (each character to the one whose code point is its byte, then Latin-1
# encodes it as that byte), and a search for any character outside it; both run in C, ~10x faster per token
_BYTE_LEVEL_TRANSLATE = {ord(c): b for c, b in _UNICODE_TO_BYTE.items()}
_NOT_BYTE_LEVEL = re.compile("[^" + "".join(re.escape(c) for c in _UNICODE_TO_BYTE) + "]")


def byte_fallback_value(piece: str) -> int | None:
    """The byte a `<0xNN>` token stands for under ByteFallback, else None."""
    m = _BYTE_TOKEN.fullmatch(piece) if len(piece.encode()) == 6 else None
    return int(m.group(1), 16) if m else None


def decoder_state(tokenizer: Any) -> dict | None:
    """The tokenizer's decoder configuration (the JSON `tokenizers` serialises), None when it has none."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no `tokenizers` backend (backend_tokenizer); pcgen derives token "
            "bytes from a fast tokenizer's decoder"
        )
    if backend.decoder is None:
        return None
    return json.loads(backend.decoder.__getstate__())


def decoder_type(tokenizer: Any) -> str:
    """A deterministic description of the decoder for the tokenizer fingerprint: "none", "ByteLevel" (its
    options do not change decoding), or the canonical JSON of any other pipeline (every step and option)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.decoder is None:
        return "none"
    state = json.loads(backend.decoder.__getstate__())
    if state.get("type") in ("ByteLevel", None):
        return state.get("type") or "unknown"
    return json.dumps(state, sort_keys=True, separators=(",", ":"))


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids that contribute no text: the tokenizer's special tokens, and the backend's added tokens marked
    special (`decode(skip_special_tokens=True)` drops both)."""
    special = set(tokenizer.all_special_ids)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        special.update(i for i, t in backend.get_added_tokens_decoder().items() if t.special)
    return special


def _steps(state: dict | None) -> list[dict]:
    if state is None:
        return []
    if state.get("type") == "Sequence":
        return [step for child in state["decoders"] for step in _steps(child)]
    return [state]


def _describe(state: dict | None) -> str:
    return "no decoder" if state is None else json.dumps(state, ensure_ascii=False, sort_keys=True)


class _Pipeline:
    """The decoder steps, checked once, applied to one token that does not start the text.

    A token's value is a str (text) or bytes (raw bytes from ByteFallback or ByteLevel)."""

    def __init__(self, state: dict | None, pieces: list[str | None]) -> None:
        self.state = state
        steps = _steps(state)
        self.join_with_space = state is None  # no decoder: `tokenizers` joins the token strings with " "
        self.has_byte_tokens = any(s.get("type") == "ByteFallback" for s in steps) and any(
            p is not None and byte_fallback_value(p) is not None for p in pieces
        )
        self.plan: list[tuple[dict, bool]] = []  # (step, whether a Fuse or ByteLevel ran before it)
        fused = False  # later steps see the whole text, not one token
        byte_level = False  # the text is raw bytes already
        byte_runs = False  # ByteFallback ran: a run of byte tokens is one string to later steps
        for step in steps:
            kind = step.get("type")
            if byte_level and kind not in ("Fuse", "Strip"):
                raise self.fail(f"{kind} after ByteLevel")
            if kind == "Fuse":
                fused = True
            elif kind == "ByteLevel":
                if fused or byte_runs:
                    raise self.fail("ByteLevel after Fuse or ByteFallback")
                fused = byte_level = True
            elif kind == "ByteFallback":
                if fused:
                    raise self.fail("ByteFallback after Fuse")
                byte_runs = self.has_byte_tokens
            elif kind in ("Replace", "Metaspace"):
                if kind == "Replace":
                    pattern = step.get("pattern", {})
                    if "String" not in pattern:
                        raise self.fail(f"Replace with the non-string pattern {pattern}")
                    old = pattern["String"]
                else:
                    old = step.get("replacement", "▁")
                if old == "":
                    raise self.fail(f"{kind} of an empty pattern")
                # after Fuse the step sees the whole text and after ByteFallback a run of byte tokens is one
                # string: only a single character can be replaced token by token there, and after
                # ByteFallback only an ASCII one, since byte tokens can spell a non-ASCII character
                if (fused or byte_runs) and len(old) != 1:
                    raise self.fail(f"{kind} of the multi-character pattern {old!r} across tokens")
                if byte_runs and not old.isascii():
                    raise self.fail(f"{kind} of {old!r} after ByteFallback: byte tokens can spell it")
            elif kind == "Strip":
                if len(step.get("content", " ")) != 1:
                    raise self.fail("Strip of a multi-character content")
                if fused and step.get("stop", 0):
                    raise self.fail("Strip(stop) after Fuse strips the end of the whole text")
                if not fused and byte_runs and (step.get("start", 0) or step.get("stop", 0)):
                    raise self.fail("Strip of each token after ByteFallback (a byte run is one string)")
            elif kind == "WordPiece":
                if fused or byte_runs:
                    raise self.fail("WordPiece after Fuse or ByteFallback")
            else:  # BPEDecoder (depends on the last token), CTC (on the previous one), unknown types
                raise self.fail(f"the {kind} step depends on neighbouring tokens or is not supported")
            self.plan.append((step, fused and kind != "Fuse" and kind != "ByteLevel"))

    def fail(self, why: str) -> ValueError:
        return ValueError(f"cannot derive exact token bytes for the decoder {_describe(self.state)}: {why}")

    def apply(self, piece: str) -> bytes:
        value: str | bytes = piece
        for step, after_fuse in self.plan:
            kind = step["type"]
            if kind == "ByteLevel":
                if _NOT_BYTE_LEVEL.search(value) is None:
                    value = value.translate(_BYTE_LEVEL_TRANSLATE).encode("latin-1")
                else:  # `tokenizers` keeps a token with any character outside the table as its own UTF-8
                    value = value.encode()
            elif kind == "ByteFallback":
                byte = byte_fallback_value(value) if isinstance(value, str) else None
                if byte is not None:
                    value = bytes([byte])
            elif kind in ("Replace", "Metaspace"):
                if kind == "Replace":
                    old, new = step["pattern"]["String"], step["content"]
                else:  # every marker becomes a space; only the first token of a whole text drops them
                    old, new = step.get("replacement", "▁"), " "
                if isinstance(value, str):
                    value = value.replace(old, new)
                elif value == old.encode():  # a byte token spelling the (ASCII) pattern
                    value = new
            elif kind == "Strip" and not after_fuse and isinstance(value, str):
                # (after Fuse, Strip(start) touches only the start of the whole text, never this token)
                content, start, stop = step.get("content", " "), step.get("start", 0), step.get("stop", 0)
                i = 0
                while i < min(start, len(value)) and value[i] == content:
                    i += 1
                j = len(value)
                while len(value) - j < stop and j > i and value[j - 1] == content:
                    j -= 1
                value = value[i:j]
            elif kind == "WordPiece":  # every token after the first: "##" prefix dropped, else a space
                prefix = step.get("prefix", "##")
                value = value[len(prefix) :] if value.startswith(prefix) else " " + value
                if step.get("cleanup", True):
                    for old, new in _WORDPIECE_CLEANUP:
                        value = value.replace(old, new)
        data = value.encode() if isinstance(value, str) else value
        return b" " + data if self.join_with_space else data


def token_bytes_table(tokenizer: Any) -> list[bytes]:
    """The bytes each token contributes to a continuation's text (special tokens: b"").

    Concatenated and decoded as UTF-8 with errors="replace", they give `decode_continuation` of the ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = decoder_state(tokenizer)
    size = len(tokenizer)
    special = special_token_ids(tokenizer)
    pieces = [backend.id_to_token(i) for i in range(size)]
    pipeline = _Pipeline(state, pieces)
    if [step["type"] for step, _ in pipeline.plan] == ["ByteLevel"] and not pipeline.join_with_space:
        # byte-level BPE (GPT-2, Llama-3, Qwen2), `apply` inlined: a third of the time for 128k tokens
        translate, outside = _BYTE_LEVEL_TRANSLATE, _NOT_BYTE_LEVEL.search
        return [
            SPECIAL
            if i in special or piece is None
            else piece.encode()
            if outside(piece)
            else piece.translate(translate).encode("latin-1")
            for i, piece in enumerate(pieces)
        ]
    return [
        SPECIAL if i in special or piece is None else pipeline.apply(piece) for i, piece in enumerate(pieces)
    ]
