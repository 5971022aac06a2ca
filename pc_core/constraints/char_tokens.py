"""Character automata (patterns.py) at the token level (docs/method.md §4, patterns).

Two ways in:
* `compile_char_only`: a constraint made only of `regex` / `pattern` / `choice` / `json_schema` nodes under
  all / any / not is one character DFA (their product). Its token DFA is computed with numpy: each token's
  text becomes a sequence of the DFA's columns, equal sequences are merged, and every reachable state runs all
  distinct sequences at once, position by position. EOS ends the text, banned tokens (vocab.py) lead to a
  sink, tokens without text change nothing; then the compiler's minimisation. When the vocabulary splits
  characters across tokens, the DFA runs on bytes (char_bytes.py): only tokens invalid after any bytes
  (`never`) are banned.
  With keywords, word_count or ends_with beside them, those leaves are character DFAs too and the token
  DFAs of the children are combined (char_fold.py, token_product.py).
* `CharMatcher` + `TextEffects`: inside any other constraint (count, ordered, suffix, stop, ...) the
  word-level compiler feeds each token's text to a CharMatcher, grouping tokens whose texts act alike on
  every character automaton (and every `ends_with`) by `TextEffects`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pc_core.constraints.affixes import _effect, token_texts
from pc_core.constraints.char_bytes import byte_char_dfa, unique_rows, uses_bytes
from pc_core.constraints.char_dfa import CharDFA, combine
from pc_core.constraints.matchers import NO, YES, Matcher
from pc_core.constraints.nodes import All, AnyOf, Not, walk
from pc_core.constraints.patterns import CHAR_NODES, char_automaton
from pc_core.errors import ConstraintTooComplex

EXPLORE_FACTOR = 8


class CharMatcher(Matcher):
    """A character DFA fed each token's text: its state, NO once dead, YES once it accepts whatever follows."""

    def __init__(self, dfa: CharDFA) -> None:
        self.dfa = dfa
        self.memo: dict[tuple[int, str], object] = {}

    def _decide(self, state: int) -> object:
        return NO if self.dfa.is_dead(state) else YES if self.dfa.is_universal(state) else state

    def init(self) -> object:
        return self._decide(self.dfa.initial)

    def text(self, state: object, text: str) -> object:
        if state in (YES, NO):
            return state
        found = self.memo.get((state, text))
        if found is None:
            found = self.memo[(state, text)] = self._decide(self.dfa.run(state, text))
        return found

    def accept(self, state: object) -> bool:
        return state is YES if state in (YES, NO) else bool(self.dfa.accept[state])


def char_only_dfa(constraint: object) -> CharDFA | None:
    """The product character DFA of a tree of character nodes under all / any / not; None otherwise."""
    if isinstance(constraint, CHAR_NODES):
        return char_automaton(constraint)
    if isinstance(constraint, Not):
        inner = char_only_dfa(constraint.child)
        return None if inner is None else combine("not", [inner])
    if isinstance(constraint, (All, AnyOf)):
        parts = [char_only_dfa(c) for c in constraint.children]
        if not parts or any(p is None for p in parts):  # all [] / any []: the word-level compiler
            return None
        return combine("all" if isinstance(constraint, All) else "any", parts)
    return None


def token_sequences(dfa: CharDFA, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seq of each token (V,), column matrix (U, max length) of the distinct non-empty sequences (padded with
    -1), their lengths (U,)). Tokens without text get -1."""
    lengths = np.fromiter((len(t) for t in texts), np.int64, len(texts))
    codes = np.fromiter((ord(c) for t in texts for c in t), np.int64, int(lengths.sum()))
    width = max(1, int(lengths.max()) if len(lengths) else 1)
    padded = np.full((len(texts), width), -1, np.int32)
    rows = np.repeat(np.arange(len(texts)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    padded[rows, np.arange(len(codes)) - np.repeat(starts, lengths)] = dfa.columns(codes)
    matrix, seq_of = unique_rows(padded)
    seq_len = (matrix >= 0).sum(axis=1)
    empty = np.flatnonzero(seq_len == 0)
    if len(empty):  # drop the empty sequence: its tokens change nothing
        keep = seq_len > 0
        renumber = np.cumsum(keep) - 1
        seq_of = np.where(lengths == 0, -1, renumber[seq_of])
        matrix, seq_len = matrix[keep], seq_len[keep]
    return seq_of, matrix, seq_len


class SequenceIndex:
    """`run_sparse`'s index of token sequences (rows of a column matrix, -1 padded): grouped by their first
    column (`order`, ascending within a group; `offsets` (C + 1,) of the groups), and each sequence's distinct
    columns (CSR: `columns`, `column_offsets`), from which `inside(loops)` says which sequences use only a
    state's self-loop columns and `leaving(loops)` indexes the others (kept per loop set: a schema's string
    states share one)."""

    def __init__(self, matrix: np.ndarray, columns: int) -> None:
        first = matrix[:, 0]
        valid = np.flatnonzero(first >= 0)
        self.order = valid[np.argsort(first[valid], kind="stable")]
        self.first = first[self.order]  # (U',) the first column of each entry of `order`
        self.num_columns = columns
        self.offsets = _offsets(self.first, columns)
        # (U, C) would be large; a sequence's distinct columns are few: one sorted row per sequence, repeats off
        ordered = np.sort(matrix, axis=1)  # -1 padding first
        distinct = ordered >= 0
        distinct[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
        self.columns = ordered[distinct]
        self.column_offsets = np.concatenate([[0], np.cumsum(distinct.sum(axis=1))])
        self._inside: dict[bytes, np.ndarray] = {}
        self._leaving: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def inside(self, loops: np.ndarray) -> np.ndarray:
        """(U,) bool: the sequences whose every column is in `loops` ((C,) bool); an empty sequence is not (no
        pair has it: its first column is none)."""
        key = loops.tobytes()
        found = self._inside.get(key)
        if found is None:
            outside = np.append((~loops[self.columns]).astype(np.int64), 0)  # the 0: a valid index at the end
            counts = np.add.reduceat(outside, self.column_offsets[:-1])  # (U,); an empty row reads one entry
            empty = self.column_offsets[1:] == self.column_offsets[:-1]
            found = self._inside[key] = ~empty & (counts == 0)
        return found

    def leaving(self, loops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(order, offsets) as the index's, of the sequences not inside `loops` only."""
        key = loops.tobytes()
        found = self._leaving.get(key)
        if found is None:
            keep = ~self.inside(loops)[self.order]
            found = self._leaving[key] = (self.order[keep], _offsets(self.first[keep], self.num_columns))
        return found


def _offsets(first: np.ndarray, columns: int) -> np.ndarray:
    offsets = np.zeros(columns + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(first, minlength=columns))
    return offsets


def _pairs(
    successors: np.ndarray, dead: int, order: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(row, sequence) of every sequence in (order, offsets) whose first column is alive from each row of
    `successors` (n, C): state by state, then by first column, then by sequence."""
    sizes = np.diff(offsets)  # (C,) sequences per first column
    pair_row, pair_column = np.nonzero((successors != dead) & (sizes > 0)[None, :])  # row-major
    count = sizes[pair_column]  # (P,) sequences of each (state, column) pair
    row = np.repeat(pair_row.astype(np.int64), count)
    # pair p's sequences are order[offsets[c_p] : offsets[c_p] + count_p], the pairs laid out one after the
    # other: output position k of pair p reads order[k + offsets[c_p] - (where pair p starts in the output)]
    shift = offsets[pair_column] - (np.cumsum(count) - count)  # (P,)
    return row, order[np.repeat(shift, count) + np.arange(len(row))]


def run_sparse(dfa: CharDFA, states: np.ndarray, matrix: np.ndarray, lengths: np.ndarray,
               index: SequenceIndex, staying: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:  # fmt: skip
    """(row in `states`, sequence, end state) of every sequence that does not die, from each of `states`
    (in no particular order), and the sequences that stay: per loop set, (its rows, (U,) bool of the sequences
    made only of its columns). Only sequences whose first character is alive from a state are run at all,
    and only those that leave their state are walked: a sequence made of a state's self-loop columns ends
    where it started (inside a JSON string, most tokens). `staying`: include those in the triples too (else
    only in the list: the compile adds their signatures per loop set, without a pair for each)."""
    dead = min(dfa.dead) if dfa.dead else -1
    successors = dfa.trans[states]  # (n, C)
    loops = (successors == states[:, None]) & (states != dead)[:, None]  # (n, C)
    looping = loops.any(axis=1)
    rows, seqs, walk, stayed = [], [], [], []  # walk: per part, whether its pairs are walked
    plain = np.flatnonzero(~looping)
    if len(plain):
        row, seq = _pairs(successors[plain], dead, index.order, index.offsets)
        rows.append(plain[row])
        seqs.append(seq)
        walk.append(True)
    if looping.any():
        members = np.flatnonzero(looping)
        sets, group = np.unique(loops[members], axis=0, return_inverse=True)
        group = group.reshape(-1)
        for g, loop_set in enumerate(sets):
            chosen = members[group == g]
            row, seq = _pairs(successors[chosen], dead, *index.leaving(loop_set))
            rows.append(chosen[row])
            seqs.append(seq)
            walk.append(True)
            inside = index.inside(loop_set)
            stayed.append((chosen, inside))
            if staying:  # from each chosen state, every sequence inside its loops ends on that state
                stay = np.flatnonzero(inside)
                rows.append(np.repeat(chosen, len(stay)))
                seqs.append(np.tile(stay, len(chosen)))
                walk.append(False)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), stayed
    row, seq = np.concatenate(rows), np.concatenate(seqs)
    cur = states[row].astype(np.int32)
    alive = np.flatnonzero(np.repeat(walk, [len(r) for r in rows]))
    for pos in range(matrix.shape[1]):  # only sequences still running and not yet dead move on
        alive = alive[(lengths[seq[alive]] > pos) & (cur[alive] != dead)]
        if not len(alive):
            break
        cur[alive] = dfa.trans[cur[alive], matrix[seq[alive], pos]]
    keep = cur != dead
    return row[keep], seq[keep], cur[keep], stayed


def compile_char_only(dfa: CharDFA, tables: object, max_states: int, check_deadline: Callable) -> object:
    """The minimal TokenDFA of a character DFA over `tables` (vocab.VocabTables). Sequences are classed by a
    64-bit hash of their successors over all reachable states (dead ones contribute nothing), then the
    successor table is computed for one sequence per class."""
    from pc_core.constraints.minimise import _minimise

    banned = np.asarray(tables.banned, bool)
    deep = getattr(dfa, "deep", None)  # (S,) skeleton states of a json_schema's deep values (json_syntax.py)
    whitespace = getattr(dfa, "deep_whitespace", "compact")
    if uses_bytes(tables):  # tokens that split characters: the DFA runs on bytes (char_bytes.py)
        dfa, seq_of, matrix, lengths, banned = byte_char_dfa(dfa, tables)
        if deep is not None:  # a pending state is deep where the state it continues is
            deep = np.where(dfa.base >= 0, deep[np.maximum(dfa.base, 0)], False)
    else:
        seq_of, matrix, lengths = token_sequences(dfa, token_texts(tables))
    sequences = SequenceIndex(matrix, dfa.trans.shape[1])
    order, index = [dfa.initial], {dfa.initial: 0}
    weights = np.random.default_rng(1).integers(1, 2**61, size=8 * max_states + 1, dtype=np.int64) | 1
    signature = np.zeros(len(matrix), np.int64)
    cap = max_states * EXPLORE_FACTOR
    done = 0
    while done < len(order):
        check_deadline()
        batch = np.array(order[done:], np.int64)
        row, seq, end, stayed = run_sparse(dfa, batch, matrix, lengths, sequences, staying=False)
        for s in np.unique(end).tolist():
            if s not in index:
                index[s] = len(order)
                order.append(s)
        if len(order) > cap:
            raise ConstraintTooComplex("constraint", f"more than {cap} automaton states before minimisation (cap "
                                       f"{max_states} after); simplify the constraint", states=len(order),
                                       limit=max_states)  # fmt: skip
        lookup = np.full(dfa.num_states, -1, np.int64)
        lookup[order] = np.arange(len(order))
        ids = lookup[end]
        with np.errstate(over="ignore"):
            np.add.at(signature, seq, weights[(row + done) % len(weights)] * (ids + 1))
            # a sequence that stays on its state adds that state's term; per loop set their sum (mod 2^64,
            # as add.at's own sums), once for every sequence inside it, instead of one pair per state
            for rows, inside in stayed:
                signature[inside] += (weights[(rows + done) % len(weights)] * (lookup[batch[rows]] + 1)).sum()
        done += len(batch)
    _, reps, seq_class = np.unique(signature, return_index=True, return_inverse=True)
    n_cls = len(reps)
    token_class = np.where(seq_of >= 0, seq_class.reshape(-1)[np.maximum(seq_of, 0)], n_cls + 2)
    token_class[banned] = n_cls + 1
    token_class[tables.eos_token_id] = n_cls
    delta, accepting, ended = _successors(dfa, order, matrix[reps], lengths[reps])
    flags = None if deep is None else np.concatenate([deep[order], np.zeros(3, bool)])  # sink, ended: exact
    out = _minimise(
        delta,
        token_class.astype(np.int32),
        0,
        accepting,
        ended,
        tables,
        max_states,
        check_deadline,
        banned=banned,
        flags=flags,
    )
    if flags is None:
        return out
    token_dfa, deep_states = out
    if deep_states.any():
        from pc_core.constraints.json_syntax import DeepValues

        token_dfa.deep_values = DeepValues(deep_states, whitespace, tables.fingerprint, tables.vocab_size)
    return token_dfa


def _successors(
    dfa: CharDFA, order: list[int], rep_matrix: np.ndarray, rep_lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(successor table over (sequence classes, EOS, banned, empty) for the reachable states then the sink
    and the two ended states, accepting, ended)."""
    n, n_cls = len(order), len(rep_matrix)
    sink, end_yes, end_no = n, n + 1, n + 2
    eos_col, empty_col = n_cls, n_cls + 2
    delta = np.full((n + 3, n_cls + 3), sink, np.int32)
    sequences = SequenceIndex(rep_matrix, dfa.trans.shape[1])
    row, seq, end, _ = run_sparse(dfa, np.array(order, np.int64), rep_matrix, rep_lengths, sequences)
    remap = np.full(dfa.num_states, sink, np.int64)
    remap[order] = np.arange(n)
    delta[row, seq] = remap[end]
    accept = dfa.accept[order]
    delta[:n, eos_col] = np.where(accept, end_yes, end_no)
    delta[:n, empty_col] = np.arange(n)
    delta[sink, eos_col] = end_no
    delta[end_yes], delta[end_no] = end_yes, end_no
    accepting = np.concatenate([accept, [False, True, False]])
    ended = np.concatenate([np.zeros(n + 1, bool), [True, True]])
    return delta, accepting, ended


class TextEffects:
    """Token texts grouped by what they do to every `ends_with` pattern and character automaton of a
    constraint: `signatures(texts)` (V,) int64 for the compiler's partition, and `__call__(text)` one
    representative text per group (texts of a group act alike, so memo keys can use the representative)."""

    def __init__(self, patterns: Sequence[str], constraint: object) -> None:
        self.patterns = list(patterns)
        self.dfas = [char_automaton(node) for node in walk(constraint) if isinstance(node, CHAR_NODES)]
        self.active = bool(self.patterns or self.dfas)
        self.reps: dict[tuple, str] = {}
        self.by_text: dict[str, str] = {}

    def key(self, text: str) -> tuple:
        if not text:
            return ("identity",)
        effects = tuple(_effect(p, text) for p in self.patterns)
        return effects + tuple(tuple(d.column_of(c) for c in text) for d in self.dfas)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        ids: dict[tuple, int] = {}
        return np.fromiter((ids.setdefault(self.key(t), len(ids)) for t in texts), np.int64, len(texts))

    def __call__(self, text: str) -> str | None:
        if not self.active:
            return None
        found = self.by_text.get(text)  # the compiler asks per token and state: the key once per text
        if found is None:
            found = self.by_text[text] = self.reps.setdefault(self.key(text), text)
        return found
