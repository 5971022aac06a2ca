"""The explicit word-level compiler (docs/method.md §4): the product of the tracker (tracker.py) and the
constraint's word-level matcher (matchers.py), explored breadth-first at token boundaries (exploration.py)
over the vocabulary partition (token_contexts.py); then global token classes, the successor table and
minimisation (minimise.py). compiler.py chooses between it, the character-only compiler and the lazy
automaton, and caches the result.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np

from pc_core.constraints.affixes import Affixes, prefix_tables, token_texts
from pc_core.constraints.blocklist import Blocklist
from pc_core.constraints.char_tokens import TextEffects
from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.exploration import Rows, _Exploration
from pc_core.constraints.frontier_exploration import FrontierExploration
from pc_core.constraints.matcher_tree import build_matcher
from pc_core.constraints.matchers import Matcher
from pc_core.constraints.minimise import _minimise
from pc_core.constraints.nodes import All, Constraint, EndsWith, Keyword, Tokens, canonical_json, walk
from pc_core.constraints.pending_chars import PendingChars
from pc_core.constraints.spec import split_affixes
from pc_core.constraints.token_contexts import TokenContexts, _Context
from pc_core.constraints.tracker import DEAD, _Tracker
from pc_core.constraints.vocab import VocabTables
from pc_core.errors import ConstraintError, ConstraintTooComplex

# Test-only hook: a constraint that mentions this word compiles, spending CPU, until its time budget (or the
# request's deadline) stops it, so tests of deadlines do not depend on how fast the machine compiles.
STALL_WORD = os.environ.get("PCGEN_TEST_STALL_WORD", "")
# Test-only hook: a constraint that mentions this word spends SLOW_COMPILE_S of CPU (stopped by its budget like
# real work), then compiles: a compile of known least duration, for tests of where its time is reported.
SLOW_WORD = os.environ.get("PCGEN_TEST_SLOW_WORD", "")
SLOW_COMPILE_S = 0.5


def stalls(constraint: Constraint) -> bool:
    """Does the constraint mention STALL_WORD (test-only): no form of it compiles."""
    return bool(STALL_WORD) and STALL_WORD in canonical_json(constraint)


class _Compiler(TokenContexts):
    """One constraint over one vocabulary: the tracker, the matcher, the per-token arrays (TokenContexts), and
    `run`, which explores the product and returns the minimal TokenDFA."""

    def __init__(
        self,
        constraint: Constraint,
        tables: VocabTables,
        max_states: int,
        time_budget_s: float,
        blocklist: Blocklist | None = None,
    ) -> None:
        constraint, suffix, stop = split_affixes(constraint)
        self.constraint = constraint
        self.blocklist = blocklist
        self.tables = tables
        self.max_states = max_states
        self.deadline = time.perf_counter() + time_budget_s
        self.time_budget_s = time_budget_s
        self.explored = 0
        self.words = _Tracker(constraint, blocklist)
        self.matcher: Matcher = build_matcher(constraint, self.words.syms_for, self.words.gap_sym)
        self.pattern_tokens = sorted(
            {t for node in walk(constraint) if isinstance(node, Tokens) for t in node.ids}
        )
        for t in self.pattern_tokens:
            if t >= tables.vocab_size:
                raise ConstraintError(
                    "constraint.tokens", f"token id {t} is outside the vocabulary (size {tables.vocab_size})"
                )
        self.pattern_set = set(self.pattern_tokens)
        if self.pattern_tokens and (suffix is not None or stop):
            raise ConstraintError(
                "suffix" if suffix is not None else "stop",
                "cannot be combined with a `tokens` constraint (the span's token ids are not defined when the "
                "suffix or a stop string starts inside a token)",
            )
        self.text_patterns = sorted({node.text for node in walk(constraint) if isinstance(node, EndsWith)})
        self.text_effects = TextEffects(self.text_patterns, constraint)  # ends_with + regex / JSON nodes
        needs_texts = self.text_effects.active or suffix is not None or stop
        self.texts = token_texts(tables) if needs_texts else []
        self.text_sig = self.text_effects.signatures(self.texts) if self.text_effects.active else None
        self.affixes = (
            Affixes(suffix, stop, self.texts, tables.banned) if suffix is not None or stop else None
        )
        self.text_reps = self.text_effects
        # characters split across tokens: tracker states inside a character (pending_chars.py); with a suffix,
        # stop strings or a blocklist mask such tokens stay banned
        self.bytes = (
            PendingChars.build(tables, self.words, self.text_effects, self.texts)
            if self.affixes is None and blocklist is None
            else None
        )
        self.plain_groups: dict[object, np.ndarray] = {}
        self.contexts: dict[object, _Context] = {}
        self._prepare_static()
        self.prefix_compiler = self._prefix_compiler()

    def _prefix_compiler(self) -> _Compiler | None:
        """The same compiler over a vocabulary of the prefix strings (affixes.py), sharing the tracker and
        the matcher: its contexts group the prefix strings that act alike from every tracker state."""
        if self.affixes is None or not self.affixes.prefixes:
            return None
        pseudo = copy.copy(self)
        strings = list(self.affixes.prefixes)
        pseudo.tables = prefix_tables(strings)
        pseudo.texts = [*strings, ""]
        pseudo.text_sig = self.text_effects.signatures(pseudo.texts) if self.text_effects.active else None
        pseudo.contexts, pseudo.affixes, pseudo.plain_groups = {}, None, {}
        pseudo._prepare_static()
        return pseudo

    def run(self, frontier: bool | None = None) -> TokenDFA:
        """Explore the product breadth-first, then classes, minimisation and (beside a blocklist) the classes
        that are safe at each state. `frontier`: explore a level at a time (the default without a suffix or stop
        strings, which need the state-at-a-time exploration); both give the same automaton."""
        _check_static_size(self.constraint, self.max_states)
        if stalls(self.constraint):
            while True:  # test-only (see STALL_WORD): busy until the budget or deadline stops it
                self.check_deadline()
        if SLOW_WORD and SLOW_WORD in canonical_json(self.constraint):
            until = time.perf_counter() + SLOW_COMPILE_S
            while time.perf_counter() < until:  # test-only (see SLOW_WORD)
                self.check_deadline()
        if frontier is None:
            frontier = self.affixes is None
        if frontier:  # a breadth-first level at a time, with numpy (frontier_exploration.FrontierExploration)
            wide = FrontierExploration(self)
            wide.run()
            blocks, initial, accepting, ended, affix_memo = wide.blocks, 0, wide.accepting, wide.ended, None
        else:  # a state at a time (suffix / stop strings: their partial matches are stepped in Python)
            explored = _Exploration(self)
            while explored.queue:
                explored.expand(explored.queue.popleft())
            keys = explored.keys
            ended = np.array([key[0] == "end" for key in keys], bool)
            accepting = np.array([explored.accepting_key(key) for key in keys], bool)
            blocks = [
                Rows(np.array([state]), name, keys[state][0] if isinstance(keys[state][0], int) else None,
                     succ[None].astype(np.int64), np.arange(len(succ)), affix)
                for state, (name, succ, affix) in explored.rows.items()
            ]  # fmt: skip
            initial, affix_memo = explored.initial, explored.affix_memo
        safe = self._safe_groups(blocks) if self.blocklist is not None else None
        return self._finish(blocks, initial, accepting, ended, safe, affix_memo)

    def _safe_groups(self, blocks: list[Rows]) -> list[np.ndarray]:
        """Per block of explored states, per group of its context: does the group hold a token that the
        blocklist allows in every text the states' tracker stands for? (All true where masking never lets a
        text reach it.)"""
        by_cur: dict[int, np.ndarray] = {}
        out = []
        for block in blocks:
            groups = len(block.inverse)
            cur = block.cur
            if cur is None:  # the sink: never part of a feasible path
                out.append(np.ones(groups, bool))
                continue
            if cur not in by_cur:
                self.check_deadline()
                if self.words.is_gap(cur):
                    tokens = self.blocklist.safe_tokens("gap")
                elif cur == DEAD:
                    tokens = self.blocklist.safe_tokens("dead")
                else:
                    tokens = self.blocklist.safe_tokens("word", self.words.curs[cur][1:])
                of_token = self.contexts[block.name].group_of_token
                by_cur[cur] = (
                    np.ones(groups, bool)
                    if tokens is None
                    else np.bincount(of_token[tokens], minlength=groups) > 0
                )
            out.append(by_cur[cur])
        return out

    def _finish(
        self,
        blocks: list[Rows],
        initial: int,
        accepting: np.ndarray,
        ended: np.ndarray,
        safe: list[np.ndarray] | None,
        affix_keys: dict[object, tuple[np.ndarray, list]] | None = None,
    ) -> TokenDFA:
        """Token classes (the groups of every context used, and for the tokens with a suffix / stop role their
        key per context), the successor table over them, then minimisation."""
        t = self.tables
        used = sorted({block.name for block in blocks}, key=str)
        columns = [self.contexts[name].group_of_token.astype(np.int64) for name in used]
        relevant = self.affixes.relevant if self.affixes is not None else np.zeros(0, np.int64)
        key_of_token = {}
        if len(relevant):
            role = np.zeros(t.vocab_size, np.int64)
            role[relevant] = 1
            columns.append(role)
            for name, (keymap, _) in (affix_keys or {}).items():
                key_of_token[name] = np.full(t.vocab_size, -1, np.int64)
                key_of_token[name][relevant] = keymap
                columns.append(key_of_token[name] + 1)
        token_class = np.zeros(t.vocab_size, np.int64)
        for groups in columns:
            token_class = token_class * (int(groups.max()) + 1) + groups
            _, token_class = np.unique(token_class, return_inverse=True)
            token_class = token_class.reshape(-1)
        self.check_deadline()
        _, reps, token_class = np.unique(token_class, return_index=True, return_inverse=True)
        n = len(accepting)
        delta = np.empty((n, len(reps)), np.int32)
        safe_pre = np.ones((n, len(reps)), bool) if safe is not None else None  # (states, classes)
        group_of_class = {name: self.contexts[name].group_of_token[reps] for name in used}
        role_classes = np.flatnonzero(np.isin(reps, relevant))  # classes of tokens with a suffix / stop role
        key_of_class = {name: keys[reps[role_classes]] for name, keys in key_of_token.items()}
        delta[ended] = np.flatnonzero(ended)[:, None]  # absorbing
        # for minimisation: states whose classes fall into the same events (each event, one successor)
        row_groups: dict[tuple, tuple[list[np.ndarray], np.ndarray]] = {}
        for i, block in enumerate(blocks):
            class_event = block.inverse[group_of_class[block.name]]
            delta[block.states] = np.take(block.succ, class_event, axis=1)
            if block.affix is not None:
                affix_name, key_succ = block.affix
                delta[block.states[:, None], role_classes] = key_succ[key_of_class[affix_name]]
            else:
                key = (block.name, block.inverse.tobytes())
                row_groups.setdefault(key, ([], class_event))[0].append(block.states)
            if safe is not None:
                safe_pre[block.states] = safe[i][group_of_class[block.name]]
        groups = [(np.concatenate(states), class_event) for states, class_event in row_groups.values()]
        dfa = _minimise(
            delta, token_class.reshape(-1).astype(np.int32), initial, accepting, ended, t, self.max_states,
            self.check_deadline, safe_pre, None if self.bytes is None else self.bytes.unusable, groups,
        )  # fmt: skip
        dfa.blocklist = self.blocklist
        return dfa


def _check_static_size(constraint: Constraint, max_states: int) -> None:
    """Fail fast on conjunctions that provably need more states than allowed.

    k keywords that share no word are independent: every subset of them can be the set found so far, and
    those 2^k situations are pairwise distinguishable, so the minimal DFA has at least 2^k states.
    """
    for node in walk(constraint):
        if not isinstance(node, All):
            continue
        seen: set[str] = set()
        independent = 0
        for child in node.children:
            if not isinstance(child, Keyword):
                continue
            words = {w.casefold() for form in child.forms() for w in form.words}
            if words.isdisjoint(seen):
                independent += 1
                seen |= words
        if independent > 62 or 2**independent > max_states:
            raise ConstraintTooComplex(
                "constraint",
                f"a conjunction of {independent} independent keywords needs at least 2^{independent} automaton "
                f"states, above the cap of {max_states}",
                states=2 ** min(independent, 62),
                limit=max_states,
            )
