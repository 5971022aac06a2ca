"""From the regex IR (regex.py) to a DFA over atoms: Thompson NFA, then subset construction (char_dfa.py
minimises the result).

The alphabet is partitioned into *atoms* (`starts[i]` is the first code point of atom i): maximal intervals
that no character set of the IR splits. Every NFA state is deterministic (at most one target per atom): a
Thompson state reads one character set, and an embedded DFA (a ("dfa" | "sub", CharDFA) node) is copied
state for state, its escapes written through a trie. So a state's moves are one row over the atoms
(`row(s)`, target or -1), and a DFA state's row is computed from its NFA states' rows with a few array
operations. Embedded DFAs are copied as whole arrays, not edge by edge.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from pc_core.constraints.regex import BOS, DEEP_MARK, EOS, Node, negate, subtract
from pc_core.errors import ConstraintError

MAX_NFA_STATES = 400_000
MAX_CHAR_STATES = 60_000
SURROGATES = ((0xD800, 0xDFFF),)
RAW = subtract(negate(((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C))), SURROGATES)  # unescaped string characters
SPECIAL = [*range(0x20), 0x22, 0x5C]  # characters a JSON string writes escaped


def atom_starts(node: Node) -> np.ndarray:
    """(atoms,) first code point of each atom: every set boundary of the IR, the markers, and for embedded
    DFAs their own atoms, ASCII (for the escapes they may write) and the surrogates' edges."""
    points = {0, BOS, EOS, EOS + 1}
    stack, seen = [node], set()
    while stack:
        item = stack.pop()
        if item[0] == "set":
            for lo, hi in item[1]:
                points.update((lo, hi + 1))
        elif item[0] == "rep":
            stack.append(item[1])
        elif item[0] == "list":
            stack.extend(item[1:])
        elif item[0] in ("dfa", "sub"):
            if (item[0], id(item[1])) not in seen:
                seen.add((item[0], id(item[1])))
                points.update(item[1].starts.tolist())
                if item[0] == "dfa":  # ASCII for the escapes it writes, and RAW's edges
                    points.update([*range(129), 0xD800, 0xE000])
        else:
            stack.extend(item[1])
    return np.array(sorted(points), np.int64)


class NFA:
    """Thompson construction: state 0 is the start; `moves[s]` [(first atom, end atom, target)] or a dense
    row `dense[s]` (atoms,) of targets (-1: none); `eps[s]` epsilon targets."""

    def __init__(self, starts: np.ndarray, path: str) -> None:
        self.starts, self.path = starts, path
        self.moves: list[list[tuple[int, int, int]]] = [[]]
        self.eps: list[list[int]] = [[]]
        self.dense: dict[int, list[int]] = {}  # state -> (classes,) target or -1, once compressed
        self.atom_ranges: dict[tuple, list[tuple[int, int]]] = {}
        self.blocks: list[tuple[int, np.ndarray, np.ndarray]] = []  # embedded: (first, (n, atoms), sig)
        self.klass: list[int] = []  # (atoms,) class of each atom, once compressed
        self.spans: dict[tuple[int, int], list[int]] = {}
        self.tries: dict[tuple, int] = {}  # escaped texts and their targets -> root

    def new(self, count: int = 1) -> int:
        """The first of `count` fresh states."""
        first = len(self.eps)
        if first + count > MAX_NFA_STATES:
            raise ConstraintError(
                self.path, f"the pattern expands to more than {MAX_NFA_STATES} automaton states"
            )
        self.moves.extend([] for _ in range(count))
        self.eps.extend([] for _ in range(count))
        return first

    def atoms(self, ranges: tuple) -> list[tuple[int, int]]:
        found = self.atom_ranges.get(ranges)
        if found is None:
            ss = self.starts
            found = [(int(np.searchsorted(ss, lo)), int(np.searchsorted(ss, hi + 1))) for lo, hi in ranges]
            self.atom_ranges[ranges] = found
        return found

    def compress(self) -> int:
        """Atoms that every state treats alike become one class (a schema's keys split ASCII into many
        atoms, most of which behave the same everywhere); returns the number of classes. Each character set
        used and each embedded DFA's columns refine the classes."""
        code = np.zeros(len(self.starts), np.int64)
        for spans in self.atom_ranges.values():
            member = np.zeros(len(self.starts), np.int64)
            for lo, hi in spans:
                member[lo:hi] = 1
            code = np.unique(code * 2 + member, return_inverse=True)[1].reshape(-1)
        for _, _, sig in self.blocks:
            code = np.unique(code * (int(sig.max()) + 2) + sig + 1, return_inverse=True)[1].reshape(-1)
        self.klass = code.tolist()
        reps = np.unique(code, return_index=True)[1]  # (classes,) an atom of each class
        for first, block, _ in self.blocks:
            for i, row in enumerate(block[:, reps].tolist()):
                self.dense[first + i] = row
        return len(reps)

    def row(self, s: int) -> list[int]:
        """(classes,) target of each atom class from state s, -1 where none (cached)."""
        found = self.dense.get(s)
        if found is None:
            found = [-1] * (max(self.klass) + 1)
            for lo, hi, target in self.moves[s]:
                span = self.spans.get((lo, hi))
                if span is None:
                    span = self.spans[(lo, hi)] = sorted(set(self.klass[lo:hi]))
                for c in span:
                    found[c] = target
            self.dense[s] = found
        return found

    def build(self, node: Node, start: int) -> int:
        """States for `node` from `start`; returns its end state (fresh, without moves)."""
        kind = node[0]
        if kind == "set":
            end = self.new()
            self.moves[start].extend((lo, hi, end) for lo, hi in self.atoms(node[1]))
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
        if kind == "list":  # ("list", item, separator): item (separator item)*, with one copy of item
            loop = self.new()
            self.eps[start].append(loop)
            after = self.build(node[1], loop)
            self.eps[self.build(node[2], after)].append(loop)
            end = self.new()
            self.eps[after].append(end)
            return end
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

    def embed(self, dfa: object, start: int, escape: bool = True) -> int:  # dfa: char_dfa.CharDFA
        """A copy of `dfa` (all its states at once, as dense rows); with escape, inside a JSON string: the
        characters JSON escapes are written escaped (through a trie per state, after the backslash)."""
        n = dfa.num_states
        first = self.new(n + 1)
        end = first + n
        self.eps[start].append(first + dfa.initial)
        for s in np.flatnonzero(dfa.accept).tolist():
            self.eps[first + s].append(end)
        text_atoms = int(np.searchsorted(self.starts, BOS))
        cols = dfa.columns(self.starts[:text_atoms])  # (text atoms,) dfa column of each atom
        block = np.full((n, len(self.starts)), -1, np.int64)
        block[:, :text_atoms] = dfa.trans[:, cols] + first
        dead = [first + d for d in dfa.dead]
        block[np.isin(block, dead)] = -1
        sig = np.full(len(self.starts), -1, np.int64)  # what tells the atoms apart here: dfa column
        sig[:text_atoms] = cols
        mark = int(np.searchsorted(self.starts, DEEP_MARK))
        if not escape and DEEP_MARK in dfa.starts_list:  # a sub-automaton's skeleton keeps its mark
            column = dfa.column_list[dfa.starts_list.index(DEEP_MARK)]
            block[:, mark] = np.where(
                np.isin(dfa.trans[:, column], list(dfa.dead)), -1, dfa.trans[:, column] + first
            )
            sig[mark] = column
        if escape:
            raw = np.zeros(len(self.starts), bool)
            for lo, hi in self.atoms(RAW):
                raw[lo:hi] = True
            block[:, ~raw] = -1
            sig[~raw] = -1
            ((backslash, _),) = self.atoms(((0x5C, 0x5C),))
            cols_special = [dfa.column_of(chr(cp)) for cp in SPECIAL]
            for s in range(n):
                texts = {}
                for cp, c in zip(SPECIAL, cols_special):
                    t = dfa.rows[s][c]
                    if not dfa.is_dead(t):
                        texts[json.dumps(chr(cp))[2:-1]] = first + t  # after the backslash
                if texts:  # states that escape alike share one trie
                    key = tuple(sorted(texts.items()))
                    if key not in self.tries:
                        self.tries[key] = self.trie(texts)
                    block[s, backslash] = self.tries[key]
        self.blocks.append((first, block, sig))
        return end

    def trie(self, texts: dict[str, int]) -> int:
        """A fresh state from which each text (none a prefix of another) leads to its target."""
        root = self.new()
        nodes: dict[str, int] = {"": root}
        for text, target in texts.items():
            for i, ch in enumerate(text):
                here = nodes[text[:i]]
                if i == len(text) - 1:
                    nxt = target
                elif text[: i + 1] in nodes:
                    continue
                else:
                    nxt = nodes[text[: i + 1]] = self.new()
                ((lo, hi),) = self.atoms(((ord(ch), ord(ch)),))
                self.moves[here].append((lo, hi, nxt))
        return root


def subsets(nfa: NFA, final: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Subset construction: (trans (S, classes), accept (S,)) (nfa.klass: the class of each atom); state 0 is the closure of the NFA start. A subset
    is known by its *movers* (its NFA states with moves) and whether it holds `final`: closures alike in
    both have the same future, so they are one DFA state, and a row is computed once per mover set."""
    keys: dict[frozenset, tuple] = {}  # targets -> (movers, final in closure)
    classes = nfa.compress()
    has_moves = lambda s: bool(nfa.moves[s]) or s in nfa.dense  # noqa: E731

    def key_of(states: frozenset) -> tuple:
        found = keys.get(states)
        if found is None:
            seen, stack = set(states), list(states)
            while stack:
                for t in nfa.eps[stack.pop()]:
                    if t not in seen:
                        seen.add(t)
                        stack.append(t)
            found = keys[states] = (frozenset(s for s in seen if has_moves(s)), final in seen)
        return found

    ids: dict[tuple, int] = {}
    order: list[tuple] = []

    def id_of(targets: frozenset) -> int:
        key = key_of(targets)
        found = ids.get(key)
        if found is None:
            if len(order) >= MAX_CHAR_STATES:
                raise ConstraintError(path, f"the pattern needs more than {MAX_CHAR_STATES} automaton states")
            found = ids[key] = len(order)
            order.append(key)
        return found

    id_of(frozenset([0]))
    dead = id_of(frozenset())
    rows_of: dict[frozenset, list[int]] = {}  # movers -> row
    rows = []
    i = 0
    while i < len(order):
        movers = order[i][0]
        row = rows_of.get(movers)
        if row is None:
            row = rows_of[movers] = _row(nfa, movers, id_of, dead, classes)
        rows.append(row)
        i += 1
    return np.array(rows, np.int32), np.array([key[1] for key in order], bool)


def _row(
    nfa: NFA, movers: frozenset, id_of: Callable[[frozenset], int], dead: int, classes: int
) -> list[int]:
    """(atoms,) DFA state each atom leads to from a subset with these movers (plain lists: the rows are
    short, and a list comprehension beats numpy's per-call overhead here)."""
    if not movers:
        return [dead] * classes
    rows = [nfa.row(s) for s in movers]
    if len(rows) == 1:
        (row,) = rows
        lut = {t: id_of(frozenset((t,))) if t >= 0 else dead for t in set(row)}
        return [lut[t] for t in row]
    tuples = list(zip(*rows))
    lut = {}
    for key in set(tuples):
        targets = frozenset(t for t in key if t >= 0)
        lut[key] = id_of(targets) if targets else dead
    return [lut[key] for key in tuples]
