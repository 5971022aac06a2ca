"""Texts matched character by character inside the token automaton: `ends_with`, the suffix and stop strings
(docs/method.md §3, §4).

Token texts are runs of characters; these conditions look at characters, wherever token boundaries fall:

* `ends_with` (a constraint node) is a KMP automaton over the text (matchers.EndsWithMatcher). A token acts on
  it as a function of the KMP state; a token whose text is not a substring of the pattern sends every state
  to the same one (the longest suffix of the token's text that is a prefix of the pattern), so the compiler
  groups tokens by `ends_with_signatures`.
* The suffix and the stop strings are tracked by `Affixes`: the partial matches the text ends with, each with
  a flag saying whether the constraint held on the text before the match started (the span would be
  satisfied if the match completes). The constraint's own state keeps running beside them, for the case
  where a partial match fails and its characters turn out to be part of the span. A token that is *inert*
  (it cannot start, continue or complete any match from any state) clears the partial matches and needs no
  work; the few other tokens (`relevant`) are followed character by character, asking the compiler whether
  the constraint holds at the positions inside the token where a match starts.

The text of a token before such a position is a *prefix string*. The compiler partitions the prefix strings
exactly as it partitions the vocabulary (`prefix_tables`: a vocabulary made of them), so the question "does
the constraint hold after this prefix" costs one step per group of prefix strings, not one per token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pc_core.constraints.vocab import KIND_EOS, KIND_SEP, KIND_WORD, VocabTables, split_pieces

EMPTY: frozenset = frozenset()
END, GO = "end", "go"


def token_texts(tables: VocabTables) -> list[str]:
    """Each token's text decoded on its own ("" for EOS and special tokens), cached on the tables."""
    cached = getattr(tables, "_pcgen_texts", None)
    if cached is None:
        cached = ["".join(tables.runs(t)) for t in range(tables.vocab_size)]
        try:
            tables._pcgen_texts = cached  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return cached


def ends_with_signatures(patterns: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """(V,) int64: tokens with equal values act alike on the KMP automata of every `ends_with` pattern."""
    ids: dict[tuple, int] = {}
    out = np.zeros(len(texts), np.int64)
    for t, text in enumerate(texts):
        signature = tuple(_effect(p, text) for p in patterns) if text else ("identity",)
        out[t] = ids.setdefault(signature, len(ids))
    return out


def _effect(pattern: str, text: str) -> object:
    """What `text` does to the KMP state of `pattern`: if it is not a substring of the pattern, every state
    goes to the longest suffix of `text` that is a prefix of the pattern (a longer match would contain all of
    `text`); otherwise the result depends on the state, so the text stands for itself."""
    if text in pattern:
        return ("text", text)
    if text[-1] not in pattern:
        return 0
    for length in range(min(len(text), len(pattern)), 0, -1):
        if pattern[length - 1] == text[-1] and text.endswith(pattern[:length]):
            return length
    return 0


class Affixes:
    """The suffix (pattern 0 when present) and the stop strings, and what a token does to the partial matches.

    A partial match is (pattern index, characters matched, flag): the text ends with that many characters of
    the pattern, and the flag says whether the constraint held on the text before them. Suffix matches are
    kept only when it did (others can never end the generation); stop matches are kept either way (any
    complete stop string ends it).

    Per relevant token, measured from the end of its text so that tokens of different lengths compare equal:
      starts[t]: matches that start inside the token, (pattern, k, kind, value), k = position of the start;
                 kind "partial" (value: characters matched at the token's end) or "done" (value: the match's
                 end position);
      carry[t]:  ((pattern, matched), kind, value): what the token does to a partial match carried in.
    `structure(t, k_key)` turns them into a hashable description; tokens with equal descriptions (and equal
    behaviour of the constraint) act alike, and `step` decides one description in one state."""

    def __init__(
        self, suffix: str | None, stop: Sequence[str], texts: Sequence[str], banned: np.ndarray
    ) -> None:
        self.suffix_mode = suffix is not None
        self.patterns = ([suffix] if suffix is not None else []) + list(stop)
        self.is_suffix = [self.suffix_mode and i == 0 for i in range(len(self.patterns))]
        self.texts = texts
        self.prefixes: dict[str, int] = {}  # prefix strings (token text before a match start), numbered
        self.templates: dict[int, tuple[tuple, tuple[int, ...]]] = {}
        relevant = []
        self.starts: dict[int, list[tuple[int, int, str, int]]] = {}
        self.carry: dict[int, tuple] = {}
        for t, text in enumerate(texts):
            if not text or banned[t]:
                continue
            starts, carry = [], []
            for i, p in enumerate(self.patterns):
                k = text.find(p[0])
                while k >= 0:  # a match starting inside the token that lasts to its end or completes in it
                    if text.startswith(p, k):
                        starts.append((i, k, "done", k + len(p)))
                    elif p.startswith(text[k:]):
                        starts.append((i, k, "partial", len(text) - k))
                    k = text.find(p[0], k + 1)
                at = p.find(text, 1)
                while at >= 0:  # the token continues a match that has `at` characters
                    end = at + len(text)
                    carry.append(((i, at), "done", len(text)) if end == len(p) else ((i, at), "partial", end))
                    at = p.find(text, at + 1)
                m = text.find(p[-1])
                while 0 <= m < min(len(p) - 1, len(text) - 1):  # the token completes it and goes on
                    if p.endswith(text[: m + 1]):
                        carry.append(((i, len(p) - m - 1), "done", m + 1))
                    m = text.find(p[-1], m + 1)
            if starts or carry:
                relevant.append(t)
                self.starts[t] = starts
                self.carry[t] = tuple(sorted(carry))
                for _, k, _, _ in starts:
                    if k:
                        self.prefixes.setdefault(text[:k], len(self.prefixes))
        self.relevant = np.asarray(relevant, np.int64)

    def structure(self, token: int, prefix_group: np.ndarray) -> tuple:
        """What `token` does to partial matches in a context: (template, the group of each prefix string the
        template refers to, in the context's partition of the prefix strings; `prefix_group`)."""
        template, prefixes = self.template(token)
        return template, tuple(int(prefix_group[p]) for p in prefixes)

    def template(self, token: int) -> tuple[tuple, tuple[int, ...]]:
        """What `token` does to partial matches, as a hashable description in which tokens of different
        lengths that act alike compare equal: (completions, partial starts, carried partials), and the
        prefix strings it refers to (numbered slots).

        completions: the matches that complete inside the token, in order of their end and then their start,
        as (end rank, start rank, source, ends with the token); source ("start", pattern, slot) for a match
        starting inside the token (slot: the prefix string before it, -1 at the token's start), ("carried",
        (pattern, matched)) for one carried in. Nothing after
        the first stop string that starts inside the token matters (it always ends the text), so the list
        stops there and the partial matches are dropped.
        partial starts: (pattern, characters matched at the end, slot); carried partials: ((pattern, matched),
        characters matched at the end)."""
        found_template = self.templates.get(token)
        if found_template is not None:
            return found_template
        text = self.texts[token]
        n = len(text)
        found = []  # (end, start, source)
        partial_starts, carried_partials = [], []
        slots: dict[int, int] = {}
        for i, k, kind, value in self.starts[token]:
            group = slots.setdefault(self.prefixes[text[:k]], len(slots)) if k else -1
            if kind == "done":
                found.append((value, k, ("start", i, group)))
            else:
                partial_starts.append((i, value, group))
        for match, kind, value in self.carry[token]:
            if kind == "done":
                found.append((value, -match[1], ("carried", match)))
            else:
                carried_partials.append((match, value))
        found.sort(key=lambda f: (f[0], f[1]))
        last = next((f[0] for f in found if f[2][0] == "start" and not self.is_suffix[f[2][1]]), None)
        if last is not None:  # a stop string starting in the token ends the text by then, whatever else
            found = [f for f in found if f[0] <= last]
            partial_starts, carried_partials = [], []
        ends = {e: r for r, e in enumerate(sorted({f[0] for f in found}))}
        begins = {b: r for r, b in enumerate(sorted({f[1] for f in found}))}
        completions = tuple((ends[e], begins[b], source, e == n) for e, b, source in found)
        template = (completions, tuple(sorted(partial_starts)), tuple(sorted(carried_partials)))
        self.templates[token] = (template, tuple(slots))
        return self.templates[token]

    def step(
        self, structure: tuple, matches: frozenset, flag_at: Callable[[int], bool]
    ) -> tuple[str, object]:
        """(END, satisfied) when the generation ends inside a token of this structure, else (GO, the new
        partial matches). `flag_at(prefix group)`: whether the constraint holds on the text before a match
        that starts inside the token."""
        (completions, partial_starts, carried_partials), groups = structure
        flag_of = lambda slot: flag_at(groups[slot] if slot >= 0 else -1)  # noqa: E731
        carried_flags = {(i, matched): flag for i, matched, flag in matches}
        first = None  # the end rank of the first completion that counts
        winner = None
        for end, _, source, exact in completions:  # in order of end, then start
            if first is not None and end != first:
                break
            if source[0] == "carried":
                if source[1] not in carried_flags:
                    continue
                pattern, flag = source[1][0], carried_flags[source[1]]
            else:
                pattern = source[1]
                if self.is_suffix[pattern]:
                    if not flag_of(source[2]):
                        continue  # only a suffix after a satisfying text counts
                    flag = True
                else:
                    flag = not self.suffix_mode and flag_of(source[2])
            first = end
            if not self.is_suffix[pattern]:  # a stop string: the earliest-starting one ending first decides
                return END, flag
            if winner is None:
                winner = exact
        if winner is not None:  # the suffix, and no stop string ends with it
            return END, winner
        partial = {(m[0], value, carried_flags[m]) for m, value in carried_partials if m in carried_flags}
        for i, value, slot in partial_starts:
            if self.is_suffix[i]:
                if flag_of(slot):
                    partial.add((i, value, True))
            else:
                partial.add((i, value, not self.suffix_mode and flag_of(slot)))
        return GO, frozenset(partial)


def prefix_tables(strings: Sequence[str]) -> VocabTables:
    """A vocabulary whose tokens are `strings` (then an EOS), described like a tokenizer's (vocab.py), so the
    compiler can partition it with the machinery it uses for tokens."""
    table: dict[str, int] = {"": 0}
    size = len(strings) + 1
    kind = np.full(size, KIND_WORD, np.int8)
    kind[-1] = KIND_EOS
    p_id, sep_id, s_id = (np.zeros(size, np.int32) for _ in range(3))
    inner: dict[int, tuple[tuple[str, str], ...]] = {}
    by_cf: dict[str, list[int]] = {}
    by_ex: dict[str, list[int]] = {}
    for t, text in enumerate(strings):
        p, sep, words, tail = split_pieces(text)
        if p:
            p_id[t] = table.setdefault(p, len(table))
            by_cf.setdefault(p.casefold(), []).append(t)
            by_ex.setdefault(p, []).append(t)
        if sep:
            kind[t] = KIND_SEP
            sep_id[t] = table.setdefault(sep, len(table))
            s_id[t] = table.setdefault(tail, len(table)) if tail else 0
            if words:
                inner[t] = words
    names = list(table)
    by_cf_strings: dict[str, list[int]] = {}
    for i, text in enumerate(names):
        by_cf_strings.setdefault(text.casefold(), []).append(i)
    return VocabTables(
        fingerprint="prefix-strings",
        vocab_size=size,
        eos_token_id=size - 1,
        kind=kind,
        p_id=p_id,
        sep_id=sep_id,
        s_id=s_id,
        inner=inner,
        banned=np.zeros(size, bool),
        strings=names,
        string_ids=table,
        string_ids_by_casefold=by_cf_strings,
        p_tokens_by_casefold={k: np.asarray(v, np.int64) for k, v in by_cf.items()},
        p_tokens_by_exact={k: np.asarray(v, np.int64) for k, v in by_ex.items()},
    )


class TextReps:
    """One representative text per `ends_with` behaviour (for memo keys: texts that act alike share one)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = patterns
        self.reps: dict[tuple, str] = {}

    def __call__(self, text: str) -> str | None:
        if not self.patterns:
            return None
        signature = tuple(_effect(p, text) for p in self.patterns) if text else ("identity",)
        return self.reps.setdefault(signature, text)
