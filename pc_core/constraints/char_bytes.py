"""A character DFA run on bytes, for the vectorised compile of character constraints (char_tokens.py).

`ByteCharDFA` extends a CharDFA so that tokens which split a character are sequences of its columns too
(docs/method.md §3, byte_chars.py):

  * states: the DFA's states (at a character boundary), then one *pending* state per (state, tail class)
    from which some completion of the tail is alive, then a dead state if the DFA has none;
  * columns: the DFA's columns; then T(k), "the token ends with an incomplete character of class k"; then
    one L column per distinct behaviour of a token's leading continuation bytes.

A token is the sequence [L]? + columns of its complete characters + [T]?: T leads from a boundary state to
its pending state, L from a pending state to the state after the completed character (or to the pending
state of a longer tail). Everything else from a pending state, and L from a boundary state, is dead; pending
states never accept. The compile (run_sparse, signatures, minimisation) runs unchanged on the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pc_core.constraints.affixes import token_texts
from pc_core.constraints.byte_chars import TailClasses, code_range
from pc_core.constraints.char_dfa import CharDFA


@dataclass
class ExtendedDFA:
    """What compile_char_only reads of a character DFA."""

    trans: np.ndarray  # (N, columns) int32
    accept: np.ndarray  # (N,) bool
    initial: int
    dead: set[int]
    # (N,) the character DFA's state each state stands for (-1: the added dead)
    base: np.ndarray | None = None

    @property
    def num_states(self) -> int:
        return int(self.trans.shape[0])


def uses_bytes(tables: object) -> bool:
    """Whether some token ends inside a character: only then can any token continue one."""
    return bool(np.asarray(tables.tail_id).any())


MAX_TAIL_CLASSES = 24
NAMED_CHARS = 64


def _named_prefixes(dfa: CharDFA) -> set[bytes]:
    """Starts of the UTF-8 of the non-ASCII characters the pattern names: those of a column that holds at
    most NAMED_CHARS characters in all (a literal or a small set: "é", "[éè]", not the ª inside `\\w`)."""
    ends = np.append(dfa.starts[1:], 0x110000)
    sizes = np.bincount(dfa.column, weights=(ends - dfa.starts).astype(np.float64))  # characters per column
    out = set()
    for atom in np.flatnonzero(sizes[dfa.column] <= NAMED_CHARS).tolist():
        for cp in range(max(int(dfa.starts[atom]), 0x80), min(int(ends[atom]), 0x110000)):
            if not 0xD800 <= cp < 0xE000:
                data = chr(cp).encode()
                out.update(data[:i] for i in range(1, len(data)))
    return out


def _closure(classes: TailClasses, tails: list[bytes], leads: list[bytes], cap: int | None = None) -> None:
    """Every tail class the vocabulary's tails and continuation runs can reach (stopping past `cap`)."""
    for tail in tails[1:]:
        classes.klass(tail)
    done = 1
    while done < len(classes.reps) and (cap is None or len(classes.reps) - 1 <= cap):
        for lead in leads:
            classes.step(done, lead)
        done += 1


def byte_char_dfa(dfa: CharDFA, tables: object) -> tuple[ExtendedDFA, np.ndarray, np.ndarray, np.ndarray,
                                                          np.ndarray]:  # fmt: skip
    """(extended DFA, then as token_sequences: seq of each token (V,), column matrix (U, width), lengths;
    then (V,) bool: the tokens this DFA never allows, whatever precedes them).

    Every character may be split while the tails fall in at most MAX_TAIL_CLASSES classes. Past that (a
    pattern that tells many non-ASCII characters apart, like `\\w` on a byte-level BPE: ~300 classes, each
    a pending copy of the automaton's states) only tails whose completions all act alike, and starts of the
    non-ASCII characters the pattern names on their own, may be pending; other splitting tokens lead to the
    sink there."""
    leads = sorted({lead for lead, _ in tables.continuations.values()})
    # the tails tokens end with: their own, and those after a continuation run
    tails = [*tables.tails, *(_decode(rest)[1] for _, rest in tables.continuations.values())]
    tails = [b"", *sorted(set(tails) - {b""})]
    classes = TailClasses(dfa.columns)
    _closure(classes, tails, leads, MAX_TAIL_CLASSES)
    if len(classes.reps) - 1 > MAX_TAIL_CLASSES:
        named = _named_prefixes(dfa)
        classes = TailClasses(dfa.columns, lambda tail, sig: tail in named or bool((sig == sig[0]).all()))
        _closure(classes, tails, leads)
    n_cls = len(classes.reps)  # classes 1..n_cls-1
    # L columns: continuation runs with equal outcomes from every class share one
    outcome_ids: dict[tuple, int] = {}
    lead_col = {}
    for lead in leads:
        vector = tuple(classes.step(k, lead) for k in range(1, n_cls))
        lead_col[lead] = outcome_ids.setdefault(vector, len(outcome_ids))
    ext = _extend(dfa, classes, list(outcome_ids))
    sequences = _sequences(dfa, tables, classes, lead_col, n_cls)
    assert len(classes.reps) == n_cls, "a tail class met after the columns were laid out"
    return (ext, *sequences)


def _extend(dfa: CharDFA, classes: TailClasses, behaviours: list[tuple]) -> ExtendedDFA:
    s_count, c_count = dfa.trans.shape
    n_cls = len(classes.reps)
    old_dead = min(dfa.dead) if dfa.dead else -1
    alive = np.zeros(
        (s_count, n_cls), bool
    )  # (S, classes): some completion of the tail keeps the state alive
    for k in range(1, n_cls):
        first, last, _, _ = code_range(classes.reps[k])
        cols = np.unique(dfa.columns(np.arange(first, last + 1, dtype=np.int64)))
        alive[:, k] = (dfa.trans[:, cols] != old_dead).any(axis=1)
    pairs = np.argwhere(alive)  # (P, 2) (state, class)
    pending = np.full((s_count, n_cls), -1, np.int64)
    pending[pairs[:, 0], pairs[:, 1]] = s_count + np.arange(len(pairs))
    dead = old_dead if dfa.dead else s_count + len(pairs)  # a DFA without a dead state gets one, last
    total = s_count + len(pairs) + (0 if dfa.dead else 1)
    width = c_count + n_cls - 1 + len(behaviours)
    trans = np.full((total, width), dead, np.int32)
    trans[:s_count, :c_count] = dfa.trans
    t_cols = pending[:, 1:]
    trans[:s_count, c_count : c_count + n_cls - 1] = np.where(t_cols >= 0, t_cols, dead)
    rows_s, rows_k = pairs[:, 0], pairs[:, 1]
    for j, vector in enumerate(behaviours):
        col = c_count + n_cls - 1 + j
        for k in range(1, n_cls):
            outcome = vector[k - 1]
            at = np.flatnonzero(rows_k == k)
            if outcome is None or not len(at):
                continue
            kind, value = outcome
            if kind == "char":
                target = dfa.trans[rows_s[at], dfa.column_of(value)]
            else:
                target = pending[rows_s[at], value]
                target = np.where(target >= 0, target, dead)
            trans[s_count + at, col] = target
    accept = np.zeros(total, bool)
    accept[:s_count] = dfa.accept
    base = np.concatenate([np.arange(s_count), rows_s, [] if dfa.dead else [-1]]).astype(np.int64)
    return ExtendedDFA(trans, accept, dfa.initial, {dead}, base)


def _sequences(
    dfa: CharDFA, tables: object, classes: TailClasses, lead_col: dict[bytes, int], n_cls: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each token as [L]? + columns of its complete characters + [T]? (-1 padded), deduplicated like
    char_tokens.token_sequences, and the unusable tokens: invalid after any bytes (`never`), or with a tail
    that may not be pending (they get the empty sequence; the caller sends them to the sink)."""
    c_count = dfa.trans.shape[1]
    decoded, base_body, base_codes = _code_points(tables)
    head = np.full(tables.vocab_size, -1, np.int64)  # L column, or -1
    tail = np.full(tables.vocab_size, -1, np.int64)  # T column, or -1
    unusable = np.asarray(tables.never, bool).copy()  # a tail that may not be pending: to the sink
    for t in np.flatnonzero(tables.tail_id).tolist():
        k = classes.klass(tables.tails[tables.tail_id[t]])
        tail[t] = -1 if k is None else c_count + k - 1
        unusable[t] = k is None
    for t, (lead, _) in tables.continuations.items():
        rest_tail = decoded[t]
        k = classes.klass(rest_tail) if rest_tail else 0
        head[t] = c_count + n_cls - 1 + lead_col[lead]
        if k:
            tail[t] = c_count + k - 1
        unusable[t] = k is None
    head[unusable], tail[unusable] = -1, -1
    body = np.where(unusable, 0, base_body)  # an unusable token: the empty sequence
    has_head, has_tail = head >= 0, tail >= 0
    lengths = body + has_head + has_tail
    width = max(1, int(lengths.max()) if len(lengths) else 1)
    padded = np.full((tables.vocab_size, width), -1, np.int32)
    padded[has_head, 0] = head[has_head]
    codes = base_codes[np.repeat(~unusable, base_body)]
    rows = np.repeat(np.arange(tables.vocab_size), body)
    starts = np.concatenate([[0], np.cumsum(body)[:-1]])
    offsets = np.arange(len(codes)) - np.repeat(starts, body) + has_head[rows]
    padded[rows, offsets] = dfa.columns(codes)
    padded[np.flatnonzero(has_tail), (lengths - 1)[has_tail]] = tail[has_tail]
    matrix, seq_of = unique_rows(padded)
    seq_len = (matrix >= 0).sum(axis=1)
    keep = seq_len > 0
    if not keep.all():  # drop the empty sequence: its tokens change nothing (or are never valid)
        renumber = np.cumsum(keep) - 1
        seq_of = np.where(lengths == 0, -1, renumber[seq_of])
        matrix, seq_len = matrix[keep], seq_len[keep]
    return seq_of, matrix, seq_len, unusable


def _code_points(tables: object) -> tuple[dict[int, bytes], np.ndarray, np.ndarray]:
    """What _sequences reads of the vocabulary whatever the DFA, cached on the tables: (the tail left after
    each continuation token's complete characters, characters per token (V,), their code points, token by
    token): a continuation token's characters are those of its bytes after the leading continuation run."""
    cached = getattr(tables, "_pcgen_code_points", None)
    if cached is None:
        texts = list(token_texts(tables))
        decoded = {}
        for t, (_, rest) in tables.continuations.items():
            texts[t], decoded[t] = _decode(rest)
        body = np.fromiter((len(t) for t in texts), np.int64, len(texts))
        codes = np.fromiter((ord(c) for t in texts for c in t), np.int64, int(body.sum()))
        cached = (decoded, body, codes)
        try:
            tables._pcgen_code_points = cached  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return cached


def unique_rows(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows, row of each input row): np.unique(axis=0)'s answer (rows in another order), by a
    64-bit hash of each row and a 1-D unique, checked exactly (a collision falls back to np.unique)."""
    weights = np.random.default_rng(2).integers(1, 2**61, size=padded.shape[1], dtype=np.int64) | 1
    with np.errstate(over="ignore"):
        keys = (padded.astype(np.int64) + 2) @ weights
    _, first, seq_of = np.unique(keys, return_index=True, return_inverse=True)
    seq_of = seq_of.reshape(-1)
    matrix = padded[first]
    if not np.array_equal(matrix[seq_of], padded):
        matrix, seq_of = np.unique(padded, axis=0, return_inverse=True)
    return matrix, seq_of.reshape(-1)


def _decode(data: bytes) -> tuple[str, bytes]:
    from pc_core.constraints.vocab import decode_pending

    return decode_pending(b"", data)
