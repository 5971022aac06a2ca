"""Characters that tokens split: the pending bytes of an incomplete UTF-8 character (docs/method.md §3).

A byte-level tokenizer may write a character across tokens (GPT-2 writes many CJK characters as a token
ending with the first byte or two and a token starting with the rest; SentencePiece byte fallback writes
`<0xE4><0xB8><0xAD>`). The token automaton runs on bytes: after a token that ends inside a character, its
state holds the incomplete character (the *tail*); the next token must start with the continuation bytes
that complete it (or extend it), and the automaton reads the completed character then. A tail is never
accepting, so every accepted text is valid UTF-8 with complete characters.

Tails are not kept byte for byte: tails that need the same number of bytes, allow the same range for the next
byte, and whose every completion has the same *signature* (what the character does to the automaton at
hand: its column in a character DFA, or its class for the word tracker) act alike, so they share one class
(`TailClasses`). A class keeps a representative tail, and what continuation bytes do to it stands for every
member: they complete a character with the signature of the representative's completion, extend the tail to
another class, or are invalid.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from pc_core.constraints.vocab import FIRST_RANGE, decode_pending, valid_tail

MAX_CODE = 0x110000


def char_length(lead: int) -> int:
    """Bytes in a UTF-8 character with this first byte (a valid lead byte 0xC2-0xF4)."""
    return 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def code_range(tail: bytes) -> tuple[int, int, int, tuple[int, int]]:
    """(first code point, last code point, bytes missing, range of the next byte) of the characters that
    complete a valid incomplete character `tail`: they form one interval of code points."""
    missing = char_length(tail[0]) - len(tail)
    low, high = FIRST_RANGE.get(tail[0], (0x80, 0xBF)) if len(tail) == 1 else (0x80, 0xBF)
    first = (tail + bytes([low]) + b"\x80" * (missing - 1)).decode()
    last = (tail + bytes([high]) + b"\xbf" * (missing - 1)).decode()
    return ord(first), ord(last), missing, (low, high)


@lru_cache(maxsize=1)
def char_categories() -> np.ndarray:
    """(0x110000,) int8: 1 for word characters (`\\w`), 2 for whitespace (`\\s`), 0 otherwise; built once
    per process (~0.4 s) by running the regexes over every code point."""
    import re

    text = "".join(map(chr, range(MAX_CODE)))
    out = np.zeros(MAX_CODE, np.int8)
    for pattern, value in ((r"\w+", 1), (r"\s+", 2)):
        for m in re.finditer(pattern, text):
            out[m.start() : m.end()] = value
    return out


@lru_cache(maxsize=1)
def nontrivial_casefolds() -> dict[int, str]:
    """{code point: casefold} for the ~1,500 characters that casefold to something else."""
    return {i: f for i in range(MAX_CODE) if (f := chr(i).casefold()) != chr(i)}


def _run_key(values: np.ndarray) -> bytes:
    """An exact, compact key of an int64 array: its run starts and run values."""
    starts = np.flatnonzero(np.diff(values, prepend=values[0] - 1))
    return np.concatenate([[len(values)], starts, values[starts]]).astype(np.int64).tobytes()


class TailClasses:
    """Incomplete characters in classes that act alike under `signature` ((n,) code points -> (n,) int64)."""

    def __init__(
        self,
        signature: Callable[[np.ndarray], np.ndarray],
        allowed: Callable[[bytes, np.ndarray], bool] | None = None,
    ) -> None:
        self.signature = signature
        # which tails may be pending at all, given the signatures of their completions (None: every one)
        self.allowed = allowed
        self.ids: dict[tuple, int] = {}  # (missing, next-byte range, signature runs) -> class
        self.reps: list[bytes] = [b""]  # class -> representative tail (class 0: no tail)
        self.of_tail: dict[bytes, int] = {b"": 0}
        self.steps: dict[tuple[int, bytes], tuple | None] = {}

    def klass(self, tail: bytes) -> int | None:
        """The class of a valid incomplete character (0 for b""), None where it is not allowed."""
        found = self.of_tail.get(tail, -1)
        if found == -1:
            first, last, missing, next_range = code_range(tail)
            signature = np.asarray(self.signature(np.arange(first, last + 1, dtype=np.int64)), np.int64)
            if self.allowed is not None and not self.allowed(tail, signature):
                self.of_tail[tail] = None
                return None
            key = (missing, next_range, _run_key(signature))
            found = self.ids.get(key)
            if found is None:
                found = self.ids[key] = len(self.reps)
                self.reps.append(tail)
            self.of_tail[tail] = found
        return found

    def step(self, k: int, lead: bytes) -> tuple[str, object] | None:
        """What continuation bytes `lead` do to a tail of class k: ("char", a character with the signature of
        every member's completion), ("tail", class of the longer tail), or None (invalid UTF-8)."""
        key = (k, lead)
        if key not in self.steps:
            data = self.reps[k] + lead
            text, tail = decode_pending(b"", data)
            if tail == data:  # still incomplete: valid so far, or a surrogate's start (never completes)
                k2 = self.klass(data) if valid_tail(data) else None
                self.steps[key] = None if k2 is None else ("tail", k2)
            elif len(text) == 1 and text != "\ufffd" and not tail:
                self.steps[key] = ("char", text)
            else:
                self.steps[key] = None
        return self.steps[key]


def continuation_text(classes: TailClasses, k: int, lead: bytes, rest: bytes) -> tuple[str, int] | None:
    """(text, tail class) that a continuation token (continuation bytes `lead`, then `rest`) adds after a
    tail of class k: the completed character and rest's complete text, or a longer tail; None if invalid."""
    outcome = classes.step(k, lead)
    if outcome is None:
        return None
    kind, value = outcome
    if kind == "tail":
        return ("", value) if not rest else None  # bytes after the continuation run break the character
    text, tail = decode_pending(b"", rest)
    if "\ufffd" in text or (tail and not valid_tail(tail)):
        return None
    k2 = classes.klass(tail)
    return None if k2 is None else (str(value) + text, k2)
