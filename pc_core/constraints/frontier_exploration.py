"""The explicit compiler's exploration a breadth-first level at a time, with numpy (without a suffix or stop
strings; docs/method.md §4): the states of a level that share a tracker state are expanded together. It numbers
the states exactly as exploration._Exploration does, so the automaton and its minimal form are identical
(tests/pc_core/constraints/test_big_compile.py)."""

from __future__ import annotations

import numpy as np

from pc_core.constraints.exploration import Rows, _Exploration, split_events
from pc_core.constraints.token_contexts import TokenContexts
from pc_core.constraints.tracker import NONE
from pc_core.errors import ConstraintTooComplex


class _SortedMap:
    """int64 keys -> int64 values in sorted arrays: lookups and inserts a whole array at a time."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.values = np.zeros(0, np.int64)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, -1 where absent."""
        if not len(self.keys):
            return np.full(keys.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, self.values[pos], -1)

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add distinct keys that are absent."""
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        pos = np.searchsorted(self.keys, keys)
        self.keys, self.values = np.insert(self.keys, pos, keys), np.insert(self.values, pos, values)


class _PairMap:
    """(a, b) -> int64 for non-negative a < 2^31, b < 2^32: a dense table while it stays small (lookups are
    one gather), else a _SortedMap of a << 32 | b. Absent pairs read -1."""

    DENSE = 1 << 22  # most table entries (32 MiB)

    def __init__(self) -> None:
        self.table: np.ndarray | None = np.full((16, 16), -1, np.int64)
        self.sorted = _SortedMap()

    def get(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.broadcast_arrays(a, b)
        if self.table is None:
            return self.sorted.get((a << 32) | b)
        rows, cols = self.table.shape
        inside = (a < rows) & (b < cols)
        if inside.all():
            return self.table[a, b]
        out = np.full(a.shape, -1, np.int64)
        out[inside] = self.table[a[inside], b[inside]]
        return out

    def insert(self, a: np.ndarray, b: np.ndarray, values: np.ndarray) -> None:
        """Add absent pairs (distinct)."""
        if self.table is not None:
            rows, cols = self.table.shape
            need_rows, need_cols = int(a.max()) + 1, int(b.max()) + 1
            if need_rows > rows or need_cols > cols:
                rows = rows if need_rows <= rows else max(need_rows, 2 * rows)  # doubling
                cols = cols if need_cols <= cols else max(need_cols, 2 * cols)
                if rows * cols > self.DENSE:  # too big: every pair into the sorted map
                    old_a, old_b = np.nonzero(self.table >= 0)
                    self.sorted.insert((old_a << 32) | old_b, self.table[old_a, old_b])
                    self.table = None
                else:
                    grown = np.full((rows, cols), -1, np.int64)
                    grown[: self.table.shape[0], : self.table.shape[1]] = self.table
                    self.table = grown
        if self.table is not None:
            self.table[a, b] = values
        else:
            self.sorted.insert((a << 32) | b, values)


class FrontierExploration:
    """The explicit compiler's exploration without a suffix or stop strings, a breadth-first level at a time:
    the states of a level that share a tracker state are expanded together with numpy (successor keys
    (tracker << 32 | matcher state) computed as arrays, looked up and deduplicated in sorted arrays); only the
    matcher steps not met before run in Python (_Exploration.step_q). States are numbered exactly as
    _Exploration numbers them (in order of first appearance: by expanded state, then by its events as
    `successors` visits them), so the automaton, and its minimal form, are identical.

    After `run`: `blocks` (Rows, each a tracker state's share of a level, plus the sink's), `accepting` and
    `ended` per state."""

    CHUNK = 32_768  # most states expanded between two checks of the caps and the deadline

    def __init__(self, compiler: TokenContexts) -> None:
        assert compiler.affixes is None
        self.compiler = compiler
        self.base = base = _Exploration(compiler)  # the memos, the interned matcher states, the first states
        assert (base.initial, base.end_accept, base.end_reject, base.sink) == (0, 1, 2, 3)
        base.queue.clear()
        self.explore_cap = base.explore_cap
        self.plans: dict[int, tuple] = {}
        self.event_ids: dict[tuple, int] = {}  # (syms, token event, text) -> event id
        self.steps: list[tuple] = []  # event id -> (syms, token event, text)
        self.step_map, self.state_map = _PairMap(), _PairMap()  # (q, event id) -> q; (cur, q) -> state
        self.accept_tables: dict[object, np.ndarray] = {}  # per symbol the end finishes: q -> 0/1, -1 unknown
        cur0, q0, _ = base.keys[0]
        self.state_map.insert(np.array([cur0]), np.array([q0]), np.zeros(1, np.int64))
        self.curs, self.qs = [np.array([cur0, -1, -1, -1], np.int64)], [np.array([q0, -1, -1, -1], np.int64)]
        self.count = 4
        self.blocks: list[Rows] = []
        self.accept_parts: list[tuple[np.ndarray, np.ndarray]] = []

    def run(self) -> None:
        base, compiler = self.base, self.compiler
        ctx = compiler.context(NONE)  # the sink: to itself, EOS to the rejecting end
        succ = np.full(len(ctx.representatives), base.sink, np.int64)
        succ[ctx.group_of_token[compiler.tables.eos_token_id]] = base.end_reject
        self.blocks.append(Rows(np.array([base.sink]), NONE, None, succ[None], np.arange(len(succ))))
        level = np.array([base.initial], np.int64)
        while len(level):
            curs, qs = np.concatenate(self.curs), np.concatenate(self.qs)
            self.curs, self.qs = [curs], [qs]
            first_new, lo = self.count, 0
            while lo < len(level):
                compiler.explored = self.count
                if self.count > self.explore_cap:  # as _Exploration.expand (after the chunk that passed it)
                    raise ConstraintTooComplex(
                        "constraint",
                        f"more than {self.explore_cap} automaton states before minimisation (cap "
                        f"{compiler.max_states} after); simplify the constraint",
                        states=self.count,
                        limit=compiler.max_states,
                    )
                compiler.check_deadline()
                size = min(self.CHUNK, max(64, (self.explore_cap - self.count) // 64))  # small near the cap
                chunk = level[lo : lo + size]
                self._expand(chunk, curs[chunk], qs[chunk])
                lo += size
            level = np.arange(first_new, self.count, dtype=np.int64)
        compiler.explored = self.count
        self.accepting = np.zeros(self.count, bool)
        self.accepting[base.end_accept] = True
        for states, flags in self.accept_parts:
            self.accepting[states] = flags
        self.ended = np.zeros(self.count, bool)
        self.ended[[base.end_accept, base.end_reject]] = True

    def _expand(self, states: np.ndarray, curs: np.ndarray, qs: np.ndarray) -> None:
        """Expand states (ascending ids, none ended or the sink): successors per tracker state's group, new
        states numbered in order of first appearance."""
        base = self.base
        order = np.argsort(curs, kind="stable")
        bounds = np.flatnonzero(np.diff(curs[order])) + 1
        parts = []  # (Rows, candidate columns, candidate keys (k, n), visiting order (k, n))
        for seg in np.split(order, bounds):
            cur = int(curs[seg[0]])
            name, inverse, sink_cols, eos_cols, still, moving, new_cur, event_id = self._plan(cur)
            s, q = states[seg], qs[seg]
            accept = self._accepting(cur, q)
            self.accept_parts.append((s, accept))
            out = np.empty((len(s), len(new_cur)), np.int64)
            out[:, sink_cols] = base.sink
            out[:, eos_cols] = np.where(accept, base.end_accept, base.end_reject)[:, None]
            cols = np.concatenate([still, moving])  # as `successors` visits them: inert events, then moving
            matcher = np.empty((len(s), len(cols)), np.int64)
            matcher[:, : len(still)] = q[:, None]
            if len(moving):
                matcher[:, len(still) :] = self._steps(q[:, None], event_id[moving][None, :])
            keys = (new_cur[cols][None, :] << 32) | matcher
            visit = (s[:, None] << 32) | np.arange(len(cols), dtype=np.int64)[None, :]
            block = Rows(s, name, cur, out, inverse)
            self.blocks.append(block)
            parts.append((block, cols, keys, visit))
        if not parts:
            return
        keys = np.concatenate([p[2].reshape(-1) for p in parts])
        found = self.state_map.get(keys >> 32, keys & 0xFFFFFFFF)
        missing = found < 0
        if missing.any():
            visit = np.concatenate([p[3].reshape(-1) for p in parts])[missing]
            new = keys[missing][np.argsort(visit)]  # in visiting order
            distinct, first = np.unique(new, return_index=True)
            fresh = distinct[np.argsort(first)]  # in order of first appearance
            ids = np.arange(self.count, self.count + len(fresh), dtype=np.int64)
            self.state_map.insert(fresh >> 32, fresh & 0xFFFFFFFF, ids)
            self.curs.append(fresh >> 32)
            self.qs.append(fresh & 0xFFFFFFFF)
            self.count += len(fresh)
            lost = keys[missing]
            found[missing] = self.state_map.get(lost >> 32, lost & 0xFFFFFFFF)
        at = 0
        for block, cols, part_keys, _ in parts:
            block.succ[:, cols] = found[at : at + part_keys.size].reshape(part_keys.shape)
            at += part_keys.size

    def _steps(self, q: np.ndarray, event_id: np.ndarray) -> np.ndarray:
        """The matcher state after each (matcher state, event id) (broadcast), new ones stepped in Python."""
        found = self.step_map.get(q, event_id)
        missing = found < 0
        if missing.any():
            q, event_id = (np.broadcast_to(x, found.shape)[missing] for x in (q, event_id))
            todo = np.unique((q << 24) | event_id)
            base = self.base
            done = [base.step_q(k >> 24, *self.steps[k & 0xFFFFFF]) for k in todo.tolist()]
            if len(base.q_list) >= 2**31 or len(self.steps) >= 2**24:  # the packed keys' widths
                raise ConstraintTooComplex(
                    "constraint", "too many matcher states or events; simplify the constraint"
                )
            self.step_map.insert(todo >> 24, todo & 0xFFFFFF, np.array(done, np.int64))
            found[missing] = self.step_map.get(q, event_id)
        return found

    def _accepting(self, cur: int, q: np.ndarray) -> np.ndarray:
        """(k,) bool: does the text end accepted in each (cur, q) (as _Exploration.accepting)? It depends on q
        and on the symbol the end finishes, so it is kept per symbol as a table over matcher states."""
        base, compiler = self.base, self.compiler
        if compiler.bytes is not None and compiler.bytes.is_pending(cur):
            return np.zeros(len(q), bool)  # inside a character: never accepting
        sym = None if base.words.is_gap(cur) else base.words.finish(cur)
        table = self.accept_tables.get(sym)
        if table is None or len(table) < len(base.q_list):
            grown = np.full(2 * len(base.q_list), -1, np.int8)
            if table is not None:
                grown[: len(table)] = table
            table = self.accept_tables[sym] = grown
        found = table[q]
        for v in np.unique(q[found < 0]).tolist():
            table[v] = base.accepting(v, cur)
        return table[q] == 1

    def _plan(self, cur: int) -> tuple:
        """Per tracker state: its context, the event of each group, and per distinct event what it does: the
        columns to the sink, to EOS, inert for the matcher, moving it; each event's tracker successor and
        step id (as _Exploration._event_plan)."""
        found = self.plans.get(cur)
        if found is None:
            compiler, base = self.compiler, self.base
            name = compiler.context_name(cur)
            events, inverse = base.distinct_events(cur, name)
            new_cur = np.zeros(len(events), np.int64)
            event_id = np.zeros(len(events), np.int64)
            sink_cols, eos_cols, others = split_events(events, compiler.pattern_tokens)
            still, moving = [], []
            for u, cur_u, step in others:
                new_cur[u] = cur_u
                if step is None:
                    still.append(u)
                    continue
                if step not in self.event_ids:
                    self.event_ids[step] = len(self.steps)
                    self.steps.append(step)
                event_id[u] = self.event_ids[step]
                moving.append(u)
            found = self.plans[cur] = (
                name, np.asarray(inverse, np.int64),
                *(np.array(c, np.int64) for c in (sink_cols, eos_cols, still, moving)), new_cur, event_id,
            )  # fmt: skip
        return found
