"""Character-level DFAs from the regex IR (regex.py): Thompson NFA, subset construction, Moore minimisation.

The alphabet is partitioned into *atoms*: maximal code-point intervals that no character set of the pattern
splits (`starts[i]` is the first code point of atom i). Atoms that every state treats alike merge into one
column (`column[atom]`), so a JSON schema's automaton has a few dozen columns, not 1.1 million characters.
The markers BOS / EOS (regex.py) are read once when the automaton is built: `initial` is the state after BOS
and `accept` says whether EOS would lead to acceptance, so the automaton runs on the text alone.
"""

from __future__ import annotations

import json
from bisect import bisect_right

import numpy as np

from pc_core.constraints.regex import BOS, EOS, Node
from pc_core.errors import ConstraintError

MAX_NFA_STATES = 400_000
MAX_CHAR_STATES = 60_000


class CharDFA:
    """A minimal DFA over characters: `trans` (S, columns) int32, `accept` (S,) bool, `initial`."""

    def __init__(self, starts: np.ndarray, column: np.ndarray, trans: np.ndarray, accept: np.ndarray,
                 initial: int) -> None:  # fmt: skip
        self.starts, self.column = starts, column  # (atoms,) int64, (atoms,) int32
        self.trans, self.accept, self.initial = trans, accept, initial
        self.rows = trans.tolist()
        self.starts_list = starts.tolist()
        self.column_list = column.tolist()
        loops = (trans == np.arange(len(trans))[:, None]).all(axis=1)
        self.dead = set(np.flatnonzero(loops & ~accept).tolist())  # at most one after minimisation
        self.universal = set(np.flatnonzero(loops & accept).tolist())  # accepts whatever follows

    @property
    def num_states(self) -> int:
        return int(self.trans.shape[0])

    def column_of(self, ch: str) -> int:
        return self.column_list[bisect_right(self.starts_list, ord(ch)) - 1]

    def columns(self, codes: np.ndarray) -> np.ndarray:
        """(n,) column of each code point."""
        return self.column[np.searchsorted(self.starts, codes, side="right") - 1]

    def run(self, state: int, text: str) -> int:
        rows, starts, column = self.rows, self.starts_list, self.column_list
        for ch in text:
            state = rows[state][column[bisect_right(starts, ord(ch)) - 1]]
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
    starts = _atom_starts(node)
    nfa = _NFA(starts, path)
    final = nfa.build(node, 0)
    trans, accept = _subsets(nfa, final, path)
    bos, eos = (int(np.searchsorted(starts, m, side="right") - 1) for m in (BOS, EOS))
    initial = int(trans[0, bos])
    accept = accept[trans[:, eos]]
    text_atoms = int(np.searchsorted(starts, BOS))  # atoms below the markers
    return minimise(starts[:text_atoms], np.arange(text_atoms, dtype=np.int32), trans[:, :text_atoms], accept,
                    initial)  # fmt: skip


def _atom_starts(node: Node) -> np.ndarray:
    points = {0, BOS, EOS, EOS + 1}
    stack = [node]
    while stack:
        item = stack.pop()
        if item[0] == "set":
            for lo, hi in item[1]:
                points.update((lo, hi + 1))
        elif item[0] == "rep":
            stack.append(item[1])
        elif item[0] in ("dfa", "sub"):  # its atoms, and ASCII for the escapes it may write
            points.update(item[1].starts.tolist())
            points.update(range(129))
        else:
            stack.extend(item[1])
    return np.array(sorted(points), np.int64)


class _NFA:
    """Thompson construction: state 0 is the start; `moves[s]` (atom ids, target), `eps[s]` targets."""

    def __init__(self, starts: np.ndarray, path: str) -> None:
        self.starts, self.path = starts, path
        self.moves: list[list[tuple[range, int]]] = [[]]
        self.eps: list[list[int]] = [[]]
        self.atom_ranges: dict[tuple, list[range]] = {}

    def new(self) -> int:
        if len(self.eps) >= MAX_NFA_STATES:
            raise ConstraintError(
                self.path, f"the pattern expands to more than {MAX_NFA_STATES} automaton states"
            )
        self.moves.append([])
        self.eps.append([])
        return len(self.eps) - 1

    def atoms(self, ranges: tuple) -> list[range]:
        found = self.atom_ranges.get(ranges)
        if found is None:
            ss = self.starts
            found = [
                range(int(np.searchsorted(ss, lo)), int(np.searchsorted(ss, hi + 1))) for lo, hi in ranges
            ]
            self.atom_ranges[ranges] = found
        return found

    def build(self, node: Node, start: int) -> int:
        kind = node[0]
        if kind == "set":
            end = self.new()
            for atoms in self.atoms(node[1]):
                self.moves[start].append((atoms, end))
            return end
        if kind == "seq":
            for item in node[1]:
                start = self.build(item, start)
            return start
        if kind == "alt":
            end = self.new()
            for branch in node[1]:
                entry = self.new()
                self.eps[start].append(entry)
                self.eps[self.build(branch, entry)].append(end)
            return end
        if kind in ("dfa", "sub"):  # a DFA inside a JSON string (escaping) / as it is
            return self.embed(node[1], start, escape=kind == "dfa")
        _, body, lo, hi = node
        for _ in range(lo):
            start = self.build(body, start)
        if hi is None:  # a fresh loop state, so that edges added after it do not leak into the body
            loop = self.new()
            self.eps[start].append(loop)
            self.eps[self.build(body, loop)].append(loop)
            end = self.new()
            self.eps[loop].append(end)
            return end
        exits = []
        for _ in range(hi - lo):
            exits.append(start)
            start = self.build(body, start)
        for state in exits:
            self.eps[state].append(start)
        return start

    def embed(self, dfa: CharDFA, start: int, escape: bool = True) -> int:
        """A string-content DFA inside a JSON string: characters that JSON escapes are written escaped."""
        states = [self.new() for _ in range(dfa.num_states)]
        end = self.new()
        self.eps[start].append(states[dfa.initial])
        ranges_of = column_ranges(dfa)
        for s in range(dfa.num_states):
            if dfa.accept[s]:
                self.eps[states[s]].append(end)
            for c, t in enumerate(dfa.rows[s]):
                if dfa.is_dead(t):
                    continue
                plain, escaped = split_escapes(ranges_of[c]) if escape else (ranges_of[c], [])
                for atoms in self.atoms(plain):
                    self.moves[states[s]].append((atoms, states[t]))
                for text in escaped:
                    here = states[s]
                    for i, ch in enumerate(text):
                        nxt = states[t] if i == len(text) - 1 else self.new()
                        for atoms in self.atoms(((ord(ch), ord(ch)),)):
                            self.moves[here].append((atoms, nxt))
                        here = nxt
        return end


def column_ranges(dfa: CharDFA) -> list[tuple]:
    """Per column of `dfa`, its code-point ranges (within Unicode)."""
    out: list[list] = [[] for _ in range(int(dfa.column.max()) + 1)]
    bounds = dfa.starts.tolist() + [BOS]
    for i, c in enumerate(dfa.column.tolist()):
        if bounds[i] < BOS:
            out[c].append((bounds[i], min(bounds[i + 1], BOS) - 1))
    return [tuple(r) for r in out]


def split_escapes(ranges: tuple) -> tuple[tuple, list[str]]:
    """(ranges written as they are inside a JSON string, the escaped texts of the other characters)."""
    from pc_core.constraints.json_values import RAW
    from pc_core.constraints.regex import intersect

    special = [cp for cp in [*range(0x20), 0x22, 0x5C] if any(lo <= cp <= hi for lo, hi in ranges)]
    return intersect(ranges, RAW), [json.dumps(chr(cp))[1:-1] for cp in special]


def _segments(nfa: _NFA, states: frozenset) -> list[tuple[int, int, frozenset]]:
    """Sweep over the atom ranges of the moves out of `states`: maximal runs of atoms with one target set."""
    events: dict[int, list[tuple[int, int]]] = {}
    for s in states:
        for atoms, target in nfa.moves[s]:
            events.setdefault(atoms.start, []).append((1, target))
            events.setdefault(atoms.stop, []).append((-1, target))
    out = []
    active: dict[int, int] = {}
    points = sorted(events)
    for k, point in enumerate(points):
        for delta, target in events[point]:
            active[target] = active.get(target, 0) + delta
            if not active[target]:
                del active[target]
        if active and k + 1 < len(points):
            out.append((point, points[k + 1], frozenset(active)))
    return out


def _subsets(nfa: _NFA, final: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Subset construction: (trans (S, atoms), accept (S,)); state 0 is the closure of the NFA start, state 1
    the empty set (dead)."""
    n_atoms = len(nfa.starts)
    closure_memo: dict[frozenset, frozenset] = {}

    def closure(states: frozenset) -> frozenset:
        found = closure_memo.get(states)
        if found is None:
            seen, stack = set(states), list(states)
            while stack:
                for t in nfa.eps[stack.pop()]:
                    if t not in seen:
                        seen.add(t)
                        stack.append(t)
            found = closure_memo[states] = frozenset(seen)
        return found

    ids: dict[frozenset, int] = {}
    order: list[frozenset] = []
    for key in (closure(frozenset([0])), frozenset()):
        ids.setdefault(key, len(order))
        if len(order) < len(ids):
            order.append(key)
    rows = []
    i = 0
    while i < len(order):
        row = np.full(n_atoms, ids[frozenset()], np.int32)
        for lo, hi, targets in _segments(nfa, order[i]):  # atoms lo..hi-1 all lead to `targets`
            key = closure(targets)
            if key not in ids:
                if len(order) >= MAX_CHAR_STATES:
                    raise ConstraintError(
                        path, f"the pattern needs more than {MAX_CHAR_STATES} automaton states"
                    )
                ids[key] = len(order)
                order.append(key)
            row[lo:hi] = ids[key]
        rows.append(row)
        i += 1
    accept = np.array([final in key for key in order], bool)
    return np.stack(rows), accept


def minimise(starts: np.ndarray, column: np.ndarray, trans: np.ndarray, accept: np.ndarray,
             initial: int) -> CharDFA:  # fmt: skip
    """Reachable part, Moore partition refinement, then identical columns merged. State 0 is the initial."""
    reach = [initial]
    seen = {initial}
    for s in reach:
        for t in set(trans[s].tolist()):
            if t not in seen:
                seen.add(t)
                reach.append(t)
    order = np.array(reach, np.int64)
    remap = np.full(len(trans), -1, np.int64)
    remap[order] = np.arange(len(order))
    trans, accept = remap[trans[order]], accept[order]
    _, col_keep, col_of_atom = np.unique(trans.T, axis=0, return_index=True, return_inverse=True)
    column = col_of_atom.reshape(-1)[column]
    trans = trans[:, col_keep]  # identical atom columns merged before refining
    block = accept.astype(np.int64)
    weights = np.random.default_rng(0).integers(1, 2**61, size=trans.shape[1] + 1, dtype=np.int64) | 1
    while True:  # Moore refinement with hashed rows, checked exactly once stable
        with np.errstate(over="ignore"):
            signature = block * weights[0] + (block[trans] * weights[1:]).sum(axis=1)
        new = np.unique(np.stack([block, signature], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
        if new.max() == block.max():
            reps = np.zeros(new.max() + 1, np.int64)
            reps[new] = np.arange(len(new))
            if np.array_equal(new[trans], new[trans[reps[new]]]):
                break
            new = np.unique(np.concatenate([block[:, None], block[trans]], axis=1), axis=0,
                            return_inverse=True)[1].reshape(-1)  # fmt: skip
            if new.max() == block.max():
                break
        block = new
    first = np.unique(block, return_index=True)[1]  # number blocks by first appearance: initial is 0
    renumber = np.empty(len(first), np.int64)
    renumber[np.argsort(first)] = np.arange(len(first))
    block = renumber[block]
    reps = np.zeros(len(first), np.int64)
    reps[block[::-1]] = np.arange(len(block))[::-1]
    small = block[trans[reps]]  # (m, columns)
    _, col_reps, col_of = np.unique(small.T, axis=0, return_index=True, return_inverse=True)
    return CharDFA(starts, col_of.reshape(-1)[column].astype(np.int32), small[:, col_reps].astype(np.int32),
                   accept[reps], 0)  # fmt: skip


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
