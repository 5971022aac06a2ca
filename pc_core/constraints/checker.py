"""The text-level checker: does a decoded text satisfy a constraint?

This is the definition the token DFA must agree with (docs/method.md §3). It is deliberately written
independently of the DFA compiler: it splits the whole text into words and gaps with a regex and tests each
node directly, so comparing the two catches mistakes in either. Both share only the keyword forms
(words.keyword_forms), the part of the semantics that is a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pc_core.constraints.spec import (
    All,
    AnyOf,
    Constraint,
    Keyword,
    Not,
    Ordered,
    Tokens,
    WordAt,
    WordCount,
    parse_constraint,
)
from pc_core.constraints.words import WORD_RE, keyword_forms, normalise_gap


def decode_continuation(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """The text a constraint is judged on: the ids cut at the first EOS, decoded without special tokens, as
    the continuation of a text rather than its start, with invalid UTF-8 replaced by U+FFFD.

    The tokenizer's own decode treats its first token as the start of a text: SentencePiece-style decoders
    strip one leading space ("▁dog" -> "dog") and Metaspace drops the first token's markers. A generated
    continuation follows a prompt, so this decodes the ids after an anchor token that takes that treatment
    and removes the anchor's text. The only other departure from `tokenizer.decode`: a run of byte-fallback
    tokens (`<0xNN>`) that is not valid UTF-8 is decoded here from its bytes (one U+FFFD per maximal invalid
    subpart, like the UTF-8 decoding of byte-level BPE), where `tokenizers` turns every byte of the run into
    U+FFFD, ASCII ones included.
    """
    import json
    import re

    def setup() -> tuple[int, str, set[int], bool]:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        skip = set(tokenizer.all_special_ids)
        byte_fallback = False
        if backend is not None:
            skip.update(i for i, t in backend.get_added_tokens_decoder().items() if t.special)

            def steps(node: dict) -> list[dict]:
                return [s for c in node["decoders"] for s in steps(c)] if "decoders" in node else [node]

            if backend.decoder is not None:
                state = json.loads(backend.decoder.__getstate__())
                byte_fallback = any(s.get("type") == "ByteFallback" for s in steps(state))

        def alone(t: int) -> str:
            return tokenizer.decode([t], skip_special_tokens=True, clean_up_tokenization_spaces=False)

        # an anchor: a token whose text is one visible character, so no start-of-text rule reaches past it
        for c in "aeoxAEOX01.,!?":
            t = tokenizer.convert_tokens_to_ids(c)
            if isinstance(t, int) and t not in skip and t != tokenizer.unk_token_id and alone(t) == c:
                return t, c, skip, byte_fallback
        for t in range(len(tokenizer)):
            text = alone(t) if t not in skip else ""
            if len(text) == 1 and not text.isspace() and text != "\ufffd":
                return t, text, skip, byte_fallback
        raise ValueError(f"{type(tokenizer).__name__} has no token that decodes to one visible character")

    cached = getattr(tokenizer, "_pcgen_continuation", None)
    if cached is None or cached[0] != len(tokenizer):
        cached = (len(tokenizer), setup())
        try:
            tokenizer._pcgen_continuation = cached
        except AttributeError:
            pass
    anchor, anchor_text, skip, byte_fallback = cached[1]

    ids = list(token_ids)
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    ids = [t for t in ids if t not in skip]

    def decode(part: list[int]) -> str:
        if not part:
            return ""
        text = tokenizer.decode([anchor, *part], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if not text.startswith(anchor_text):
            raise ValueError(f"decoding after the anchor {anchor_text!r} changed it: {text[:20]!r}")
        return text[len(anchor_text) :]

    if not byte_fallback:
        return decode(ids)
    # ByteFallback's test in `tokenizers`: "<0x" + two hex digits (u8::from_str_radix, "+" allowed) + ">"
    pattern = re.compile(r"<0x([0-9A-Fa-f]{2}|\+[0-9A-Fa-f])>")
    values = []
    for piece in tokenizer.convert_ids_to_tokens(ids):
        m = pattern.fullmatch(piece) if piece is not None and len(piece.encode()) == 6 else None
        values.append(int(m.group(1), 16) if m else None)
    runs, start = [], 0  # maximal runs of byte tokens, as (start, end, valid UTF-8)
    for i in range(len(ids) + 1):
        if i == len(ids) or values[i] is None:
            if start < i:
                data = bytes(values[start:i])
                runs.append((start, i, data.decode("utf-8", "replace").encode() == data))
            start = i + 1
    if all(valid for _, _, valid in runs):
        return decode(ids)
    out, done = [], 0
    for a, b, valid in runs:
        if not valid:
            out.append(decode(ids[done:a]))
            out.append(bytes(values[a:b]).decode("utf-8", "replace"))
            done = b
    out.append(decode(ids[done:]))
    return "".join(out)


class Words:
    """A text as words and the normalised gaps between consecutive words."""

    def __init__(self, text: str) -> None:
        self.spans = [m.span() for m in WORD_RE.finditer(text)]
        self.words = [text[a:b] for a, b in self.spans]
        self.gaps = [
            normalise_gap(text[self.spans[i][1] : self.spans[i + 1][0]]) for i in range(len(self) - 1)
        ]

    def __len__(self) -> int:
        return len(self.spans)


def check_text(
    constraint: Constraint | dict | str, text: str, token_ids: Sequence[int] | None = None
) -> bool:
    """True when `text` satisfies the constraint. `token_ids` (cut at EOS) are needed only for `tokens`."""
    node = parse_constraint(constraint)
    return _holds(node, Words(text), list(token_ids) if token_ids is not None else None)


def cut_at_eos(tokenizer: Any, token_ids: Sequence[int]) -> list[int]:
    ids = list(token_ids)
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def check_ids(constraint: Constraint | dict | str, tokenizer: Any, token_ids: Sequence[int]) -> bool:
    ids = cut_at_eos(tokenizer, token_ids)
    return check_text(constraint, decode_continuation(tokenizer, ids), ids)


def keyword_spans(keyword: Keyword, text: Words) -> list[tuple[int, int]]:
    """(start, end) word-index spans where a form of `keyword` occurs, sorted by end then start: the words
    equal under the keyword's case mode and the gaps between them equal after whitespace normalisation."""
    words = [w.casefold() for w in text.words] if keyword.case == "any" else text.words
    spans = set()
    for form in keyword_forms(keyword):
        n = len(form.words)
        for start in range(len(words) - n + 1):
            if (
                tuple(words[start : start + n]) == form.words
                and tuple(text.gaps[start : start + n - 1]) == form.gaps
            ):
                spans.add((start, start + n))
    return sorted(spans, key=lambda s: (s[1], s[0]))


def _holds(node: Constraint, words: Words, ids: list[int] | None) -> bool:
    if isinstance(node, Keyword):
        return bool(keyword_spans(node, words))
    if isinstance(node, All):
        return all(_holds(c, words, ids) for c in node.children)
    if isinstance(node, AnyOf):
        return any(_holds(c, words, ids) for c in node.children)
    if isinstance(node, Not):
        return not _holds(node.child, words, ids)
    if isinstance(node, Ordered):
        position = 0  # greedy: the earliest-ending occurrence after the previous one leaves the most room
        for keyword in node.items:
            ends = [end for start, end in keyword_spans(keyword, words) if start >= position]
            if not ends:
                return False
            position = min(ends)
        return True
    if isinstance(node, WordAt):
        if len(words) < node.index:
            return False
        return bool([s for s in keyword_spans(node.word, words) if s[0] == node.index - 1])
    if isinstance(node, WordCount):
        return node.min <= len(words) and (node.max is None or len(words) <= node.max)
    if isinstance(node, Tokens):
        if ids is None:
            raise ValueError("a `tokens` constraint needs the token ids")
        n = len(node.ids)
        return any(tuple(ids[i : i + n]) == node.ids for i in range(len(ids) - n + 1))
    raise TypeError(f"unknown constraint node {node!r}")


def keyword_matches(constraint: Constraint | dict | str, text: str) -> list[dict]:
    """Character spans of the keywords that occur in `text`: [{"keyword", "start", "end"}], for showing users
    why a constraint holds. Keywords under `not` are skipped (they are what must *not* appear)."""
    words = Words(text)
    positions = words.spans
    out = []

    def visit(node: Constraint, negated: bool) -> None:
        if isinstance(node, Not):
            visit(node.child, not negated)
        elif isinstance(node, (All, AnyOf)):
            for child in node.children:
                visit(child, negated)
        elif negated:
            return
        elif isinstance(node, Keyword):
            for start, end in keyword_spans(node, words):
                out.append({"keyword": node.text, "start": positions[start][0], "end": positions[end - 1][1]})
        elif isinstance(node, Ordered):
            for keyword in node.items:
                visit(keyword, negated)
        elif isinstance(node, WordAt) and len(words) >= node.index:
            if any(s[0] == node.index - 1 for s in keyword_spans(node.word, words)):
                a, b = positions[node.index - 1]
                out.append({"keyword": node.word.text, "start": a, "end": b})

    visit(parse_constraint(constraint), False)
    return sorted({(m["start"], m["end"], m["keyword"]): m for m in out}.values(), key=lambda m: m["start"])
