"""The constraint's token automaton explored lazily: only the states decoding and its feasibility search reach
(docs/method.md §5.10).

The explicit compiler (constraints/explicit.py) explores every state of the character-level product at token
boundaries, then minimises. Counting constraints over many keywords have exponentially many such states
(`once` over 10 keywords: 114,946 minimal states in 42 s), although a decoding of 40 tokens visits a few
hundred. LazyDFA keeps the compiler's product (tracker x word-level matcher x partial suffix / stop matches,
the same states and the same token groups) and expands a state only when it is asked for its successors:
`step`, `run` and `accepts` give exactly the explicit automaton's answers (same language; the states are
the unminimised ones, so ids differ).

States: ints in the order they were met; the initial state is 0. Ended states (EOS, a completed suffix or
stop string) are absorbing, as in TokenDFA.
"""

from __future__ import annotations

import numpy as np

from pc_core.constraints.affixes import EMPTY
from pc_core.constraints.explicit import _Compiler
from pc_core.constraints.exploration import SINK, _Exploration
from pc_core.constraints.lazy_automaton import LazyAutomaton
from pc_core.constraints.nodes import Constraint
from pc_core.constraints.token_contexts import EOS_EVENT
from pc_core.constraints.vocab import VocabTables

LAZY_MAX_STATES = 2_000_000
"""Explored states one lazy automaton may hold (memory: a few hundred bytes each plus its successor row)."""


class LazyDFA(LazyAutomaton):
    """A token automaton explored on demand; the TokenDFA methods decoding and checking use (see module)."""

    lazy = True
    blocklist = None  # the blocked words stay inside the product (no mask beside it)
    safe_classes = None

    def __init__(
        self, constraint: Constraint, tables: VocabTables, max_states: int = LAZY_MAX_STATES
    ) -> None:
        compiler = _Compiler(constraint, tables, max_states // 4, float("inf"))  # explore cap: 4 x max_states
        self.tables, self.compiler = tables, compiler
        self.explored = _Exploration(compiler)
        self.explored.queue.clear()  # nothing is explored ahead of a request for it
        self.initial_state = self.explored.initial
        self.end_accept, self.end_reject, self.sink = (
            self.explored.end_accept,
            self.explored.end_reject,
            self.explored.sink,
        )  # the only ended states, and the rejecting sink
        self.eos_token_id = tables.eos_token_id
        self.vocab_size = tables.vocab_size
        self.tokenizer_fingerprint = tables.fingerprint
        relevant = compiler.affixes.relevant if compiler.affixes is not None else np.zeros(0, np.int64)
        self.relevant = relevant  # tokens with a suffix / stop role: their successor is per affix key
        self.relevant_index = np.full(tables.vocab_size, -1, np.int64)
        self.relevant_index[relevant] = np.arange(len(relevant))
        self._accepting: dict[int, bool] = {}
        self._children: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._options: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per tracker state: tokens, kinds
        self.compile_seconds = 0.0

    # ------------------------------------------------------------------ states

    @property
    def num_states(self) -> int:
        """States explored so far (successors of expanded states included)."""
        return len(self.explored.keys)

    def is_ended(self, state: int) -> bool:
        return state == self.end_accept or state == self.end_reject

    def is_accepting(self, state: int) -> bool:
        found = self._accepting.get(state)
        if found is None:
            found = self._accepting[state] = bool(self.explored.accepting_key(self.explored.keys[state]))
        return found

    def expand(self, state: int) -> None:
        """Compute every successor of a live state now (`step` then reads them; `peek` too)."""
        if not self.is_ended(state):
            self._row(state)

    def _row(self, state: int) -> tuple:
        """(context name, successor per group, affix part or None) of a live state, expanding it once."""
        row = self.explored.rows.get(state)
        if row is None:
            self.explored.expand(state)
            self.explored.queue.clear()
            row = self.explored.rows[state]
        return row

    # ------------------------------------------------------------------ successors

    def _successor(self, state: int, token_id: int) -> int:
        """The successor of a live state (LazyAutomaton.step has checked the token and the state)."""
        name, succ, affix = self._row(state)
        j = self.relevant_index[token_id]
        if affix is not None and j >= 0:
            keymap = self.explored.affix_memo[affix[0]][0]
            return int(affix[1][keymap[j]])
        return int(succ[self.compiler.contexts[name].group_of_token[token_id]])

    def peek(self, state: int, token_id: int) -> int:
        """`step` without expanding the state: the one token's successor alone (the search's witness replay,
        lazy_feasibility.py), the same state `step` gives. With a suffix or stop strings, or an expanded
        state: `step`."""
        explored = self.explored
        if self.is_ended(state) or state in explored.rows or self.compiler.affixes is not None:
            return self.step(state, token_id)
        key = explored.keys[state]
        if key == SINK:
            return self.end_reject if token_id == self.eos_token_id else self.sink
        cur, q, _ = key
        event = self._event(cur, token_id)
        if event is None:
            return self.sink
        if event is EOS_EVENT:
            return self.end_accept if explored.accepting(q, cur) else self.end_reject
        new_cur, syms, tok_event, text = event
        if syms or self.compiler.pattern_tokens or text is not None:  # as _Exploration.successors
            q = explored.step_q(q, syms, tok_event, text)
        if len(explored.keys) > explored.explore_cap:
            self._row(state)  # raises ConstraintTooComplex, as expanding would
        out = explored.sid((new_cur, q, EMPTY))
        explored.queue.clear()
        return out

    def _event(self, cur: int, token_id: int) -> object:
        """The event of `token_id`'s group from tracker state `cur`, as _Exploration.distinct_events has it
        (TokenContexts._events for the group's representative alone, when `cur` has not met every group)."""
        compiler, explored = self.compiler, self.explored
        name = compiler.context_name(cur)
        ctx = compiler.context(name)
        group = ctx.group_of_token[token_id]
        found = explored.cur_events.get(cur)
        if found is not None:
            return found[0][found[1][group]]
        rep = int(ctx.representatives[group])
        event = compiler.token_event(cur, rep)
        if event is None:
            return EOS_EVENT if rep == self.eos_token_id else None
        text = None
        if compiler.text_effects.active:
            text = compiler.text_reps(
                compiler.texts[rep] if compiler.bytes is None else compiler.bytes.text(cur, rep)
            )
        return (*event, rep if rep in compiler.pattern_set else -1, text)

    def successors(self, state: int) -> np.ndarray:
        """(V,) int64: the state after each token."""
        if self.is_ended(state):
            return np.full(self.vocab_size, state, np.int64)
        name, succ, affix = self._row(state)
        out = succ[self.compiler.contexts[name].group_of_token].astype(np.int64)
        if affix is not None:
            keymap = self.explored.affix_memo[affix[0]][0]
            out[self.relevant] = affix[1][keymap]
        return out

    def children(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """(distinct successor states (K,), a token leading to each (K,)), cached per state."""
        found = self._children.get(state)
        if found is None:
            if self.is_ended(state):
                found = (np.array([state]), np.array([self.eos_token_id]))
            elif self._row(state)[2] is None:  # per group of the context: one representative each
                name, succ, _ = self._row(state)
                children, first = np.unique(succ, return_index=True)
                found = (children.astype(np.int64), self.compiler.contexts[name].representatives[first])
            else:
                children, first = np.unique(self.successors(state), return_index=True)
                found = (children, first)
            self._children[state] = found
        return found

    def options(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """`children` without expanding the state: (successor or -1 where not computed yet (E,), a token for
        each (E,)), one per distinct event of its tracker state; the sink and the ends are filled in, a -1
        is `peek(state, token)` (the search computes only the successors it descends into). Expanded states,
        ended ones and those with a suffix / stop strings: `children`."""
        explored = self.explored
        if self.is_ended(state) or state in explored.rows or self.compiler.affixes is not None:
            return self.children(state)
        key = explored.keys[state]
        if key == SINK:
            return self.children(state)
        cur, q, _ = key
        found = self._options.get(cur)
        if found is None:
            name = self.compiler.context_name(cur)
            events, inverse = explored.distinct_events(cur, name)
            first = np.unique(inverse, return_index=True)[1]  # the first group of each event
            tokens = self.compiler.context(name).representatives[first].astype(np.int64)
            kind = np.array([0 if e is None else 1 if e is EOS_EVENT else -1 for e in events], np.int64)
            found = self._options[cur] = (tokens, kind)
        tokens, kind = found
        end = self.end_accept if explored.accepting(q, cur) else self.end_reject
        return np.choose(kind + 1, [-1, self.sink, end]).astype(np.int64), tokens
