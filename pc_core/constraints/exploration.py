"""Breadth-first exploration of the character-level product at token boundaries (docs/method.md §4): the
states (tracker, matcher state, partial suffix / stop matches) and, per state, the successor of each group of
its tracker context. The hot loop of the explicit compiler: without a suffix or stop strings it runs a
breadth-first level at a time with numpy (frontier_exploration.py: ~0.1 s per 10,000 states on the 50,257-token BPE,
benchmarks/big_compile.py), else a state at a time (_Exploration); both number the states alike. The lazy
automaton (pc_core/lazy_dfa.py) expands the same states on demand, a state at a time."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from pc_core.constraints.affixes import EMPTY, END
from pc_core.constraints.token_contexts import EOS_EVENT, TokenContexts
from pc_core.constraints.tracker import NONE
from pc_core.errors import ConstraintTooComplex

EXPLORE_FACTOR = 4
"""Exploration before minimisation may reach EXPLORE_FACTOR x the cap on minimal states."""

END_ACCEPT, END_REJECT, SINK = ("end", True), ("end", False), ("sink",)


class _Exploration:
    """The states of the character-level product met at token boundaries: keys (tracker, matcher-state id)
    plus the two ended states and the sink, numbered in breadth-first order (the initial state is 0), and per
    explored state its context and successor per group (`rows`)."""

    def __init__(self, compiler: TokenContexts) -> None:
        self.compiler, self.matcher, self.words = compiler, compiler.matcher, compiler.words
        self.q_ids: dict[object, int] = {}  # matcher states, interned
        self.q_list: list[object] = []
        self.step_memo: dict[tuple[int, tuple[int, ...], int], int] = {}
        self.accept_memo: dict[tuple[int, int], bool] = {}
        self.state_ids: dict[tuple, int] = {}
        self.keys: list[tuple] = []
        self.queue: deque[int] = deque()
        # state -> (context name, successor per group, None or (context name, successor per affix key))
        self.rows: dict[int, tuple[object, np.ndarray, tuple | None]] = {}
        self.cur_events: dict[
            int, tuple[list, np.ndarray]
        ] = {}  # tracker -> (distinct events, group -> event)
        self.explore_cap = compiler.max_states * EXPLORE_FACTOR
        self.affixes = compiler.affixes
        self.suffix_mode = self.affixes is not None and self.affixes.suffix_mode
        self.affix_memo: dict[object, tuple[np.ndarray, list[tuple]]] = {}  # per context name
        self.prefix_events: dict[int, list] = {}  # per tracker: the event of each group of prefix strings
        self.event_plans: dict[int, tuple] = {}  # per tracker: its events sorted for `successors`
        self.event_ids: dict[tuple, int] = {}  # (syms, token event, text) -> id, for the int-keyed step memo
        self.step_ids: dict[int, int] = {}  # (matcher state << 24 | event id) -> matcher state
        self.accept_by_sym: dict[tuple, bool] = {}  # (matcher state, finished word symbol or None) -> accepts
        self.plain_ids: dict[int, int] = {}  # (tracker << 32 | matcher state) -> id of (tracker, q, EMPTY)
        self.initial = self.sid((NONE, self.qid(self.matcher.init()), EMPTY))
        self.end_accept, self.end_reject, self.sink = (
            self.sid(END_ACCEPT),
            self.sid(END_REJECT),
            self.sid(SINK),
        )

    def qid(self, q: object) -> int:
        if q not in self.q_ids:
            self.q_ids[q] = len(self.q_list)
            self.q_list.append(q)
        return self.q_ids[q]

    def sid(self, key: tuple) -> int:
        out = self.state_ids.get(key)
        if out is None:
            out = self.state_ids[key] = len(self.keys)
            self.keys.append(key)
            self.queue.append(out)
        return out

    def step_q(self, q: int, events: tuple[int, ...], tok: int, text: str | None = None) -> int:
        """The matcher state after a token's word / gap events, its raw-token event and its text event."""
        key = (q, events, tok, text)
        out = self.step_memo.get(key)
        if out is None:
            state = self.q_list[q]
            for event in events:
                state = self.matcher.word(state, event) if event >= 0 else self.matcher.gap(state, -1 - event)
            state = self.matcher.token(state, tok)
            if text is not None:
                state = self.matcher.text(state, text)
            out = self.step_memo[key] = self.qid(state)
        return out

    def accepting(self, q: int, cur: int) -> bool:
        key = (q, cur)
        found = self.accept_memo.get(key)
        if found is None and self.compiler.bytes is not None and self.compiler.bytes.is_pending(cur):
            found = self.accept_memo[key] = False  # inside a character: never accepting
        if found is None:  # it depends on q and the symbol the end of the text finishes (none in a gap)
            sym = None if self.words.is_gap(cur) else self.words.finish(cur)
            found = self.accept_by_sym.get((q, sym))
            if found is None:
                state = self.q_list[q] if sym is None else self.matcher.word(self.q_list[q], sym)
                found = self.accept_by_sym[(q, sym)] = bool(self.matcher.accept(state))
            self.accept_memo[key] = found
        return found

    def accepting_key(self, key: tuple) -> bool:
        """Accepted if the text ended here (EOS or the horizon): never before a required suffix."""
        if key[0] == "end":
            return key[1]
        return key != SINK and not self.suffix_mode and self.accepting(key[1], key[0])

    def flag(self, cur: int, q: int, prefix_group: int) -> bool:
        """Does the constraint hold on the text so far, plus a prefix string of `prefix_group` (-1: nothing)?"""
        if prefix_group < 0:
            return self.accepting(q, cur)
        found = self.prefix_events.get(cur)
        if found is None:
            pseudo = self.compiler.prefix_compiler
            found = self.prefix_events[cur] = pseudo._events(cur, pseudo.context(pseudo.context_name(cur)))
        new_cur, events, _, text = found[prefix_group]
        return self.accepting(self.step_q(q, events, -1, text), new_cur)

    def affix_keys(self, name: object) -> tuple[np.ndarray, list[tuple]]:
        """For the relevant tokens (those that can start, continue or complete the suffix or a stop string)
        in context `name`: (key index per token, keys). A key is (the token's group in the context, what it
        does to partial matches: Affixes.structure); tokens with equal keys act alike in every state of the
        context."""
        found = self.affix_memo.get(name)
        if found is None:
            compiler = self.compiler
            compiler.check_deadline()
            groups = compiler.context(name).group_of_token
            pseudo = compiler.prefix_compiler
            prefix_groups = (
                pseudo.context(name).group_of_token if pseudo is not None else np.zeros(0, np.int32)
            )
            index: dict[tuple, int] = {}
            keymap = np.empty(len(self.affixes.relevant), np.int64)
            for j, tok in enumerate(self.affixes.relevant.tolist()):
                key = (int(groups[tok]), self.affixes.structure(tok, prefix_groups))
                keymap[j] = index.setdefault(key, len(index))
            found = self.affix_memo[name] = (keymap, list(index))
        return found

    def expand(self, state: int) -> None:
        """The successors of one state, per group of its tracker context."""
        key, compiler = self.keys[state], self.compiler
        if key[0] == "end":
            return
        compiler.explored = len(self.keys)
        if len(self.keys) > self.explore_cap:
            raise ConstraintTooComplex(
                "constraint",
                f"more than {self.explore_cap} automaton states before minimisation (cap {compiler.max_states} "
                "after); simplify the constraint",
                states=len(self.keys),
                limit=compiler.max_states,
            )
        if len(self.rows) % 64 == 0:
            compiler.check_deadline()
        if key == SINK:
            ctx = compiler.context(NONE)
            succ = np.full(len(ctx.representatives), self.sink, np.int32)
            succ[ctx.group_of_token[compiler.tables.eos_token_id]] = self.end_reject
            self.rows[state] = (NONE, succ, None)
            return
        cur, q, matches = key
        name = compiler.context_name(cur)
        events, inverse = self.distinct_events(cur, name)
        accepted = not self.suffix_mode and self.accepting(q, cur)
        end = self.end_accept if accepted else self.end_reject
        out, moved = self.successors(cur, name, q, events, inverse, end)
        affix = None
        if self.affixes is not None:  # the tokens that can start, continue or complete a suffix / stop string
            _, keys = self.affix_keys(name)
            key_succ = np.empty(len(keys), np.int32)
            for j, (group, structure) in enumerate(keys):
                u = inverse[group]
                if moved[u] is None:  # banned
                    key_succ[j] = out[u]
                    continue
                kind, value = self.affixes.step(structure, matches, lambda prefix: self.flag(cur, q, prefix))
                if kind == END:
                    key_succ[j] = self.end_accept if value else self.end_reject
                else:
                    key_succ[j] = self.sid((events[u][0], moved[u], value))
            affix = (name, key_succ)
        self.rows[state] = (name, out[inverse], affix)

    def successors(
        self, cur: int, name: object, q: int, events: list, inverse: np.ndarray, end: int
    ) -> tuple[np.ndarray, list[int | None]]:
        """(successor per distinct event (E,) int32, matcher state after each event): the hot loop of the
        compiler, over lists prepared once per tracker state (_event_plan) and integer-keyed memos."""
        plan = self.event_plans.get(cur)
        if plan is None:
            plan = self.event_plans[cur] = self._event_plan(cur, name, events, inverse)
        sink_events, eos_events, still, moving = plan
        out = [-1] * len(events)
        moved: list[int | None] = [None] * len(events)
        for u in sink_events:
            out[u] = self.sink
        for u in eos_events:
            out[u] = end
        ids, memo = self.plain_ids, self.step_ids  # int keys: cheaper to build and hash than tuples
        for u, new_cur, plain in still:  # the matcher sees nothing: same q
            moved[u] = q
            if plain:  # no partial match survives an inert token
                found = ids.get((new_cur << 32) | q)
                out[u] = found if found is not None else self._plain_sid(new_cur, q)
        for u, new_cur, plain, event_id, step in moving:
            m = memo.get((q << 24) | event_id)
            if m is None:
                m = memo[(q << 24) | event_id] = self.step_q(q, *step)
            moved[u] = m
            if plain:
                found = ids.get((new_cur << 32) | m)
                out[u] = found if found is not None else self._plain_sid(new_cur, m)
        return np.array(out, np.int32), moved

    def _plain_sid(self, cur: int, q: int) -> int:
        found = self.plain_ids[(cur << 32) | q] = self.sid((cur, q, EMPTY))
        return found

    def _event_plan(self, cur: int, name: object, events: list, inverse: np.ndarray) -> tuple:
        """A tracker state's distinct events sorted for `successors`: to the sink, EOS, inert for the matcher
        (u, new tracker, plain), moving it (u, new tracker, plain, event id, (syms, token event, text))."""
        compiler = self.compiler
        plain = compiler.plain_events(name, inverse, len(events))  # events some inert token has
        sink_events, eos_events, others = split_events(events, compiler.pattern_tokens)
        still, moving = [], []
        for u, new_cur, step in others:
            if step is None:
                still.append((u, new_cur, bool(plain[u])))
            else:
                event_id = self.event_ids.setdefault(step, len(self.event_ids))
                moving.append((u, new_cur, bool(plain[u]), event_id, step))
        return sink_events, eos_events, still, moving

    def distinct_events(self, cur: int, name: object) -> tuple[list, np.ndarray]:
        """The distinct events of the context's groups from tracker `cur`, and each group's: groups of a
        shared context often do the same from one tracker state."""
        found = self.cur_events.get(cur)
        if found is None:
            events = self.compiler._events(cur, self.compiler.context(name))
            index: dict[object, int] = {}
            inverse = np.array([index.setdefault(e, len(index)) for e in events], np.int64)
            found = self.cur_events[cur] = (list(index), inverse)
        return found


def split_events(events: list, raw_tokens: object) -> tuple[list[int], list[int], list[tuple]]:
    """A tracker state's distinct events: those to the sink, those to EOS, and the others as (u, new tracker,
    step), where step = (symbols, token event, text) when the event moves the matcher (over raw tokens every
    event does), else None."""
    sink, eos, others = [], [], []
    for u, event in enumerate(events):
        if event is None:
            sink.append(u)
        elif event is EOS_EVENT:
            eos.append(u)
        else:
            new_cur, syms, tok_event, text = event
            moves = syms or raw_tokens or text is not None
            others.append((u, new_cur, (syms, tok_event, text) if moves else None))
    return sink, eos, others


@dataclass
class Rows:
    """The successors of explored states that share a tracker state: `succ[i, inverse[g]]` is the successor of
    `states[i]` for group g of context `name`. `cur` is the tracker state (None for the sink); `affix`, for a
    single state beside a suffix / stop strings, is (context name, successor per affix key)."""

    states: np.ndarray  # (k,) int64
    name: object
    cur: int | None
    succ: np.ndarray  # (k, distinct events) int64
    inverse: np.ndarray  # (groups,) the distinct event of each group
    affix: tuple | None = None
