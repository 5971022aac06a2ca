"""Character-level DFAs from the regex IR (regex.py): char_nfa.py builds the Thompson NFA and runs the subset
construction over atom classes; here Moore minimisation, products (`combine`) and the DFA itself.

The alphabet is partitioned into *atoms*: maximal code-point intervals that no character set of the pattern
splits (`starts[i]` is the first code point of atom i). Atoms that every state treats alike merge into one
column (`column[atom]`), so a JSON schema's automaton has a few dozen columns, not 1.1 million characters.
The markers BOS / EOS (regex.py) are read once when the automaton is built: `initial` is the state after BOS
and `accept` says whether EOS would lead to acceptance, so the automaton runs on the text alone."""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from pc_core.constraints.char_nfa import MAX_CHAR_STATES, NFA, atom_starts, subsets
from pc_core.constraints.regex import BOS, DEEP_MARK, EOS, Node
from pc_core.errors import ConstraintError


class CharDFA:
    """A minimal DFA over characters: `trans` (S, columns) int32, `accept` (S,) bool, `initial`."""

    def __init__(self, starts: np.ndarray, column: np.ndarray, trans: np.ndarray, accept: np.ndarray,
                 initial: int) -> None:  # fmt: skip
        self.starts, self.column = starts, column  # (atoms,) int64, (atoms,) int32
        self.trans, self.accept, self.initial = trans, accept, initial
        # tuples, not lists: as fast to index in `run`, and the garbage collector stops tracking a tuple of
        # ints at its first pass, where it would traverse every list of every automaton the compile caches
        # keep (up to 256 per cache) in each full collection, holding the GIL (json_values, patterns)
        self.rows = tuple(map(tuple, trans.tolist()))
        self.starts_list = tuple(starts.tolist())
        self.column_list = tuple(column.tolist())
        self.col_memo: dict[str, int] = {}  # character -> column, filled as characters are met
        loops = (trans == np.arange(len(trans))[:, None]).all(axis=1)
        self.dead = set(np.flatnonzero(loops & ~accept).tolist())  # at most one after minimisation
        self.universal = set(np.flatnonzero(loops & accept).tolist())  # accepts whatever follows

    @property
    def num_states(self) -> int:
        return int(self.trans.shape[0])

    def column_of(self, ch: str) -> int:
        found = self.col_memo.get(ch)
        if found is None:
            found = self.col_memo[ch] = self.column_list[bisect_right(self.starts_list, ord(ch)) - 1]
        return found

    def columns(self, codes: np.ndarray) -> np.ndarray:
        """(n,) column of each code point."""
        return self.column[np.searchsorted(self.starts, codes, side="right") - 1]

    def run(self, state: int, text: str) -> int:
        rows, memo = self.rows, self.col_memo
        for ch in text:
            c = memo.get(ch)
            state = rows[state][self.column_of(ch) if c is None else c]
        return state

    def accepts(self, text: str) -> bool:
        return bool(self.accept[self.run(self.initial, text)])

    def is_dead(self, state: int) -> bool:
        return state in self.dead

    def is_universal(self, state: int) -> bool:
        return state in self.universal

    def shortest(self) -> str | None:
        """A shortest accepted text (breadth-first), or None: for error messages and the length check."""
        parent = {self.initial: None}
        frontier = [self.initial]
        reps = {c: int(self.starts[np.flatnonzero(self.column == c)[0]]) for c in set(self.column_list)}
        while frontier:
            nxt = []
            for s in frontier:
                if self.accept[s]:
                    out = []
                    while parent[s] is not None:
                        s, ch = parent[s]
                        out.append(ch)
                    return "".join(reversed(out))
                for c, t in enumerate(self.rows[s]):
                    if t not in parent and c in reps and reps[c] < BOS:
                        parent[t] = (s, chr(reps[c]))
                        nxt.append(t)
            frontier = nxt
        return None


def build_char_dfa(node: Node, path: str) -> CharDFA:
    """The minimal DFA of an IR node (which must contain its own BOS / EOS handling, as parse_regex's)."""
    starts = atom_starts(node)
    nfa = NFA(starts, path)
    final = nfa.build(node, 0)
    trans, accept = subsets(nfa, final, path)
    klass = np.array(nfa.klass, np.int32)  # (atoms,) column of trans for each atom
    bos, eos = (int(klass[np.searchsorted(starts, m, side="right") - 1]) for m in (BOS, EOS))
    initial = int(trans[0, bos])
    accept = accept[trans[:, eos]]
    keep = np.arange(int(np.searchsorted(starts, BOS)))  # atoms below the markers
    mark = int(np.searchsorted(starts, DEEP_MARK))
    if mark < len(starts) and starts[mark] == DEEP_MARK:  # json_values' skeleton: its mark stays
        keep = np.append(keep, mark)
    used, column = np.unique(klass[keep], return_inverse=True)  # the other markers' classes dropped
    return minimise(starts[keep], column.reshape(-1).astype(np.int32), trans[:, used], accept, initial)


def minimise(starts: np.ndarray, column: np.ndarray, trans: np.ndarray, accept: np.ndarray,
             initial: int) -> CharDFA:  # fmt: skip
    """Reachable part, Moore partition refinement, then identical columns merged. State 0 is the initial."""
    order = _reachable(trans, initial)
    remap = np.full(len(trans), -1, np.int64)
    remap[order] = np.arange(len(order))
    trans, accept = remap[trans[order]], accept[order]
    col_keep, col_of_atom = _unique_columns(trans)
    column = col_of_atom[column]
    trans = trans[:, col_keep]  # identical atom columns merged before refining
    block = _refine(trans, accept)
    first = np.unique(block, return_index=True)[1]  # number blocks by first appearance: initial is 0
    renumber = np.empty(len(first), np.int64)
    renumber[np.argsort(first)] = np.arange(len(first))
    block = renumber[block]
    reps = np.zeros(len(first), np.int64)
    reps[block[::-1]] = np.arange(len(block))[::-1]
    small = block[trans[reps]]  # (m, columns)
    col_reps, col_of = _unique_columns(small)
    return CharDFA(starts, col_of[column].astype(np.int32), small[:, col_reps].astype(np.int32),
                   accept[reps], 0)  # fmt: skip


def _reachable(trans: np.ndarray, initial: int) -> np.ndarray:
    """States reachable from `initial`, breadth-first (initial first)."""
    seen = np.zeros(len(trans), bool)
    seen[initial] = True
    layers = [np.array([initial], np.int64)]
    while len(layers[-1]):
        nxt = np.unique(trans[layers[-1]])
        nxt = nxt[~seen[nxt]]
        seen[nxt] = True
        layers.append(nxt.astype(np.int64))
    return np.concatenate(layers)


def _unique_columns(trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the first of each distinct column, (columns,) which distinct column each one is)."""
    ids: dict[bytes, int] = {}
    keep, of = [], []
    for c, col in enumerate(np.ascontiguousarray(trans.T)):
        key = col.tobytes()
        if key not in ids:
            ids[key] = len(keep)
            keep.append(c)
        of.append(ids[key])
    return np.array(keep, np.int64), np.array(of, np.int64)


def _refine(trans: np.ndarray, accept: np.ndarray) -> np.ndarray:
    """(S,) block of each state in the coarsest stable partition that separates accepting states: Moore's
    refinement on hashed signatures (one 1-D sort a round), checked exactly once it stops changing; a hash
    collision that breaks stability falls back to exact row comparison."""
    block = accept.astype(np.int64)
    weights = np.random.default_rng(0).integers(1, 2**61, size=trans.shape[1] + 1, dtype=np.int64) | 1
    count = len(np.unique(block))
    while True:
        with np.errstate(over="ignore"):
            signature = block * weights[0] + (block[trans] * weights[1:]).sum(axis=1)
        new = np.unique(signature, return_inverse=True)[1].reshape(-1)
        if new.max() + 1 == count:
            reps = np.zeros(count, np.int64)
            reps[new] = np.arange(len(new))
            stable = np.array_equal(new[trans], new[trans[reps[new]]])
            if stable and np.array_equal(accept, accept[reps[new]]):
                return new
            new = np.unique(np.concatenate([block[:, None], block[trans]], axis=1), axis=0,
                            return_inverse=True)[1].reshape(-1)  # fmt: skip
            if new.max() + 1 == count:
                return block
        block, count = new, int(new.max()) + 1


def combine(kind: str, dfas: list[CharDFA]) -> CharDFA:
    """The product automaton of `all` / `any` of several DFAs, or `not` of one."""
    if kind == "not":
        (d,) = dfas
        return minimise(d.starts, d.column, d.trans, ~d.accept, d.initial)
    starts = np.unique(np.concatenate([d.starts for d in dfas]))
    cols = [d.columns(starts) for d in dfas]  # (atoms,) column of each common atom in each DFA
    ids: dict[tuple, int] = {}
    order: list[tuple] = []
    ids[tuple(d.initial for d in dfas)] = 0
    order.append(tuple(d.initial for d in dfas))
    rows = []
    i = 0
    while i < len(order):
        states = order[i]
        succ = np.stack([d.trans[s][c] for d, s, c in zip(dfas, states, cols)], axis=1)  # (atoms, k)
        row = np.empty(len(starts), np.int32)
        for a, key in enumerate(map(tuple, succ.tolist())):
            if key not in ids:
                if len(order) >= MAX_CHAR_STATES:
                    raise ConstraintError(
                        "constraint", f"the product needs more than {MAX_CHAR_STATES} states"
                    )
                ids[key] = len(order)
                order.append(key)
            row[a] = ids[key]
        rows.append(row)
        i += 1
    found = np.array([[d.accept[s] for d, s in zip(dfas, key)] for key in order], bool)
    accept = found.all(axis=1) if kind == "all" else found.any(axis=1)
    return minimise(starts, np.arange(len(starts), dtype=np.int32), np.stack(rows), accept, 0)
