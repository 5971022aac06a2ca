"""The vocabulary partition of the word-level compiler (docs/method.md §4): tokens are never run one by one
per product state. For each tracker context (NONE, DEAD, a live gap, any live word, inside a character) the
vocabulary is partitioned, with numpy, into groups of tokens that provably have the same effect (same tracker
successor, same events), so a state costs one matcher step per group.

TokenContexts holds the static per-token arrays and the partitions; the explicit compiler (explicit.py)
builds on it and fills in the fields declared here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pc_core.constraints.affixes import Affixes
from pc_core.constraints.blocklist import Blocklist
from pc_core.constraints.char_tokens import TextEffects
from pc_core.constraints.matchers import Matcher
from pc_core.constraints.nodes import Constraint
from pc_core.constraints.pending_chars import PendingChars
from pc_core.constraints.tracker import DEAD, NONE, OTHER, _Tracker
from pc_core.constraints.vocab import KIND_EOS, KIND_SEP, KIND_SPECIAL, KIND_WORD, VocabTables
from pc_core.errors import ConstraintTooComplex

EOS_EVENT = ("eos",)
SELF, NOSYM, PLACEHOLDER = -1, -2, -3  # partition markers (see TokenContexts.context)


@dataclass
class _Context:
    """A partition of the vocabulary for one tracker situation, with one event per group."""

    group_of_token: np.ndarray  # (V,) int32
    representatives: np.ndarray  # (G,) a token of each group


class TokenContexts:
    """The token partitions of one constraint's product, per tracker context, and the events of each group."""

    constraint: Constraint
    blocklist: Blocklist | None
    tables: VocabTables
    max_states: int
    deadline: float  # time.perf_counter() past which check_deadline raises
    time_budget_s: float
    explored: int  # product states explored so far (reported when the budget runs out)
    words: _Tracker
    matcher: Matcher
    pattern_tokens: list[int]  # token ids of `tokens` nodes (raw-token patterns)
    pattern_set: set[int]
    text_effects: TextEffects
    text_reps: TextEffects
    texts: list[str]  # each token's text, where some node or affix reads it
    text_sig: np.ndarray | None
    affixes: Affixes | None
    bytes: PendingChars | None
    plain_groups: dict[object, np.ndarray]
    contexts: dict[object, _Context]
    prefix_compiler: TokenContexts | None

    def check_deadline(self) -> None:
        if time.perf_counter() > self.deadline:
            raise ConstraintTooComplex(
                "constraint",
                f"compilation exceeded its time budget of {self.time_budget_s:g}s "
                f"({self.explored} states explored)",
                states=self.explored,
                limit=self.max_states,
                out_of_time=True,
            )

    # ------------------------------------------------------------------ static per-token arrays

    def _prepare_static(self) -> None:
        t, w = self.tables, self.words
        n_strings = len(t.strings)
        start_of = np.full(n_strings, DEAD, np.int64)
        sym_of = np.full(n_strings, OTHER, np.int64)
        candidates = {i for p in w.cf_prefixes for i in t.string_ids_by_casefold.get(p, ())}
        candidates.update(t.string_ids[p] for p in w.ex_prefixes if p in t.string_ids)
        for sid in candidates:
            start_of[sid] = w.start_word(t.strings[sid])
            sym_of[sid] = w.finish(int(start_of[sid]))
        self.gap_start_of = np.full(n_strings, NONE, np.int64)
        self.sep_strings = np.unique(t.sep_id[t.sep_id > 0])
        if w.gap_prefixes:
            for sid in self.sep_strings.tolist():
                self.gap_start_of[sid] = w.start_gap(t.strings[sid])
        self.p_start, self.p_sym = start_of[t.p_id], sym_of[t.p_id]
        self.p_empty = t.p_id == 0
        self.g0 = self.gap_start_of[t.sep_id]
        # what a token does after its first separator run, given the gap that run leaves: nothing more (0),
        # start its trailing word (1 + that word's state), or inner words then the rest (interned, after those)
        tail = np.where(t.s_id > 0, 1 + start_of[t.s_id], 0)
        offset = 2 + len(w.curs) + 1
        interned: dict[tuple, int] = {}
        for i, tok in enumerate(t.inner):
            if i % 256 == 0:
                self.check_deadline()
            runs = t.runs(tok)
            first = 1 if t.p_id[tok] else 0
            cur, events = w.run(NONE, runs[first + 1 :])  # from after the first separator run
            key = (cur, events[1:] if w.gap_syms else events)  # the first word's gap event depends on the gap
            tail[tok] = offset + interned.setdefault(key, len(interned))
        self.tail = tail
        # tokens whose leading run may extend some live prefix: singled out in live contexts
        cf_subs, ex_subs = w.substrings()
        cand = [t.p_tokens_by_casefold[s] for s in cf_subs if s in t.p_tokens_by_casefold]
        cand += [t.p_tokens_by_exact[s] for s in ex_subs if s in t.p_tokens_by_exact]
        self.live_candidates = np.unique(np.concatenate(cand)) if cand else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ events

    def token_event(self, cur: int, tok: int) -> tuple[int, tuple[int, ...]] | None:
        """(tracker, events) after `tok`; None for EOS and banned tokens."""
        if self.bytes is not None:
            return self.bytes.event(cur, tok)
        t = self.tables
        kind = t.kind[tok]
        if kind == KIND_EOS or t.banned[tok]:
            return None
        if kind == KIND_SPECIAL:
            return cur, ()
        return self.words.run(cur, t.runs(tok))

    def _events(self, cur: int, ctx: _Context) -> list:
        """Per group of `ctx`: (tracker, events, token event, text event), EOS_EVENT, or None (to the sink).
        The text event is the token's text when the constraint has `ends_with` nodes (None otherwise)."""
        out: list = []
        eos = self.tables.eos_token_id
        for i, tok in enumerate(ctx.representatives.tolist()):
            if i % 512 == 511:
                self.check_deadline()
            event = self.token_event(cur, tok)
            if event is None:
                out.append(EOS_EVENT if tok == eos else None)
            else:
                text = None
                if self.text_effects.active:  # (inside a character: the completed one and the rest)
                    text = self.text_reps(
                        self.texts[tok] if self.bytes is None else self.bytes.text(cur, tok)
                    )
                out.append((*event, tok if tok in self.pattern_set else -1, text))
        return out

    def _partition(self, keys: np.ndarray) -> _Context:
        keys = keys.copy()
        if self.pattern_tokens:  # raw-token patterns see token identity: one group per pattern token
            keys[self.pattern_tokens] = -1 - np.asarray(self.pattern_tokens, np.int64)
        _, reps, groups = np.unique(keys, return_index=True, return_inverse=True)
        return _Context(groups.astype(np.int32).reshape(-1), reps)

    def _combine(self, columns: list[np.ndarray]) -> np.ndarray:
        """One int64 key per token from non-negative columns (mixed radix), banned tokens in one group."""
        key = np.zeros(self.tables.vocab_size, np.int64)
        if self.text_sig is not None:  # what the token does to the `ends_with` automata
            columns = [*columns, self.text_sig]
        if self.bytes is not None:  # the incomplete character a token ends with
            columns = [*columns, self.bytes.tail_class]
        for col in columns:
            key = key * (int(col.max()) + 1) + col
        key[self.tables.banned if self.bytes is None else self.bytes.boundary_banned] = -(3 * 10**12)
        return key

    def gap_extension(self, gap_state: int) -> np.ndarray:
        """(strings,) the gap after a separator run extends the live gap `gap_state` (NONE elsewhere)."""
        t, w = self.tables, self.words
        out = np.full(len(t.strings), NONE, np.int64)
        for sid in self.sep_strings.tolist():
            out[sid] = w.extend_gap(gap_state, t.strings[sid])
        return out

    def context(self, name: object) -> _Context:
        """Token partition for tracker NONE, DEAD, a live gap (its state id), or 'live' (the base partition of
        every live word prefix, with the tokens that may extend one singled out)."""
        if name in self.contexts:
            return self.contexts[name]
        self.check_deadline()
        if isinstance(name, tuple):  # inside a character (pending_chars.py)
            ctx = self.contexts[name] = self._partition(self.bytes.context_keys(name))
            return ctx
        t = self.tables
        kind = t.kind.astype(np.int64)
        word, sep = kind == KIND_WORD, kind == KIND_SEP
        a = np.zeros(t.vocab_size, np.int64)
        gap = np.where(sep, self.g0, 0)
        if name == DEAD:
            a[word] = DEAD
            a[sep] = OTHER
        elif name == "live":  # non-candidate tokens break the prefix
            a[word] = np.where(self.p_empty, SELF, DEAD)[word]
            a[sep] = np.where(self.p_empty, PLACEHOLDER, OTHER)[sep]
        else:  # a gap: a leading word run starts a word, a leading separator run extends the gap
            a[word] = np.where(self.p_empty, SELF, self.p_start)[word]
            a[sep] = np.where(self.p_empty, NOSYM, self.p_sym)[sep]
            if name != NONE:
                extended = self.gap_extension(name)[t.sep_id]
                gap = np.where(sep & self.p_empty, extended, gap)
        keys = self._combine([kind, a + 4, gap, np.where(sep, self.tail, 0)])
        if name == "live":
            keys[self.live_candidates] = -(10**12) - self.live_candidates
        ctx = self._partition(keys)
        self.contexts[name] = ctx
        return ctx

    def plain_events(self, name: object, inverse: np.ndarray, count: int) -> np.ndarray:
        """(events,) bool: which of a state's distinct events some token without a suffix / stop role has
        (the others are only ever reached through Affixes, and are not interned)."""
        if self.affixes is None:
            return np.ones(count, bool)
        found = self.plain_groups.get(name)
        if found is None:
            groups = self.context(name).group_of_token
            inert = np.ones(self.tables.vocab_size, bool)
            inert[self.affixes.relevant] = False
            found = self.plain_groups[name] = np.bincount(groups[inert], minlength=len(inverse)) > 0
        out = np.zeros(count, bool)
        out[inverse[found]] = True
        return out

    def context_name(self, cur: int) -> object:
        if cur in (NONE, DEAD):
            return cur
        if self.bytes is not None and self.bytes.is_pending(cur):
            return self.bytes.context_name(cur)
        return cur if self.words.curs[cur][0] == "g" else "live"
