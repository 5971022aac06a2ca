"""Compile a constraint into a minimal token-level DFA (docs/method.md §4).

The character-level automaton is the product of
  * a *tracker*: the text is inside a word or inside a gap (the separator text between words). A word is
    DEAD when it cannot become a word the constraint mentions, else a live prefix (casefolded and/or exact);
    a gap is NONE when it cannot become a gap the constraint's phrases mention, else a live gap prefix;
  * the word-level matcher of the constraint (matchers.py), fed one symbol per finished word and, when the
    constraint has phrases, one gap symbol before each word.
Its states at token boundaries are explored breadth-first. Tokens are never run one by one per state: for
each tracker context (NONE, DEAD, a live gap, any live word) the vocabulary is partitioned, with numpy, into
groups of tokens that provably have the same effect (same tracker successor, same events), so a state costs
one matcher step per group. Afterwards the groups of all contexts are refined into global token classes, the
DFA is minimised (Moore) and classes with identical columns merge.

Characters at the byte level: a byte-level token may end inside a multi-byte UTF-8 character. Where the
constraint mentions non-ASCII characters, the tracker has states inside a character (pending_chars.py): a
token may end inside a character that starts like one the constraint mentions, and only tokens completing
it follow. Elsewhere (all-ASCII constraints, a suffix, stop strings, a blocklist mask) tracking every
partial character would multiply the automaton by ~300 classes (measured on the 50,257-token BPE: 17,683
reachable partial sequences, 313 behaviourally distinct), so tokens that split a character lead to the
sink, as do tokens with invalid bytes: every accepted token sequence is valid text with complete characters
and is judged exactly (vocab.py, byte_chars.py).

With a suffix or stop strings (`spec.Affixed`) the product gets a third part, the partial matches of those
texts with a flag each (affixes.py): a state is (tracker, matcher state, partial matches). Completing a stop
string or the suffix leads to an ended state, like EOS. `ends_with` nodes read each token's text
(matchers.EndsWithMatcher); tokens are grouped by what they do to it.

TokenDFA stores a (states x classes) successor table plus the class of every token; see dfa.py.
"""

from __future__ import annotations

import copy
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from pc_core.cache import LRUCache
from pc_core.constraints.affixes import (
    EMPTY,
    END,
    Affixes,
    prefix_tables,
    token_texts,
)
from pc_core.constraints.blocklist import Blocklist, split_blocklist
from pc_core.constraints.char_tokens import TextEffects, char_only_dfa, compile_char_only
from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.matchers import Matcher, build_matcher
from pc_core.constraints.pending_chars import PendingChars
from pc_core.constraints.spec import (
    Affixed,
    All,
    Constraint,
    EndsWith,
    Keyword,
    Tokens,
    canonical_json,
    iter_keywords,
    keywords_by_polarity,
    parse_constraint,
    split_affixes,
    walk,
)
from pc_core.constraints.vocab import (
    KIND_EOS,
    KIND_SEP,
    KIND_SPECIAL,
    KIND_WORD,
    VocabTables,
    vocab_tables,
)
from pc_core.constraints.words import is_space_char, is_word_char
from pc_core.errors import ConstraintError, ConstraintTooComplex

DEFAULT_MAX_STATES = 250_000
"""Cap on the minimised DFA: what the compiler and the exact feasibility tables hold in memory, not what the
guide costs. The guide's cost depends on the model and device (H, bytes per value, live (step, state) pairs)
and is budgeted where the guide is built (pc_core.guide_budget); past that budget the factored guide runs
(pc_core.factored_guide). Exploration before minimisation may use 4x."""
DEFAULT_TIME_BUDGET_S = 10.0
LAZY_AFTER_STATES = 5_000
"""compile_constraint(lazy=True): the explicit automaton's state cap (so EXPLORE_FACTOR x that explored) before
the lazy one is used: a count, not a time, so the choice does not depend on the machine's speed."""
EXPLORE_FACTOR = 4
CACHE_BYTES = 256 * 2**20

NONE, DEAD = 0, 1  # tracker: inside a gap no phrase mentions (or at the start) / an irrelevant word
OTHER = 0  # word / gap symbol of anything the constraint does not mention
EOS_EVENT = ("eos",)
SELF, NOSYM, PLACEHOLDER = -1, -2, -3  # partition markers (see _Compiler.context)


class _Tracker:
    """Relevant words and gaps of one constraint, tracker-state ids and word / gap symbol ids.

    States: NONE, DEAD, ("w", casefolded prefix, exact prefix) for a live word, ("g", gap prefix) for a live
    gap. Events are ints: a word symbol (>= 0), or -1 - a gap symbol.

    Words the matcher cannot tell apart (every pattern it tests holds both or neither: "field", "Field",
    "fields" of one keyword) share a symbol, and live prefixes with the same completions (the same remaining
    suffixes to the same symbols: "Fie" and "fie") share a state, one of them representing the others; beside
    a blocklist, only prefixes the blocklist treats alike too. The minimal DFA is the same either way; the
    exploration before minimisation is several times smaller."""

    def __init__(self, constraint: Constraint, blocklist: Blocklist | None = None) -> None:
        cf_words, ex_words, gaps = set(), set(), set()
        patterns: list[
            set[tuple[str, bool]]
        ] = []  # the word patterns build_matcher tests, as (word, casefolded)
        for keyword in iter_keywords(constraint):
            casefolded = keyword.case == "any"
            forms = keyword.forms()
            patterns.append({(f.words[0], casefolded) for f in forms if len(f.words) == 1})
            patterns += [{(w, casefolded)} for f in forms if len(f.words) > 1 for w in f.words]
            for form in forms:
                (cf_words if casefolded else ex_words).update(form.words)
                gaps.update(form.gaps)
        self.cf_words, self.ex_words = cf_words, ex_words
        self.cf_prefixes = {w[:i] for w in cf_words for i in range(1, len(w) + 1)}
        self.ex_prefixes = {w[:i] for w in ex_words for i in range(1, len(w) + 1)}
        self.gap_prefixes = {g[:i] for g in gaps for i in range(1, len(g) + 1)}
        self.gap_syms = {g: i + 1 for i, g in enumerate(sorted(gaps))}
        self.curs: list[tuple | None] = [None, None]  # NONE, DEAD
        self.cur_ids: dict[tuple, int] = {}
        self.blocklist = blocklist
        keys = [(cf, None) for cf in sorted(cf_words)]
        keys += [(ex.casefold() if ex.casefold() in cf_words else None, ex) for ex in sorted(ex_words)]
        signatures: dict[frozenset, int] = {}
        self.syms: dict[tuple[str | None, str | None], int] = {(None, None): OTHER}
        for cf, ex in keys:
            member = frozenset(i for i, p in enumerate(patterns) if (cf, True) in p or (ex, False) in p)
            self.syms[(cf, ex)] = signatures.setdefault(member, len(signatures) + 1)
        self._residuals: dict[tuple[bool, str], frozenset] = {}

    def syms_for(self, word: str, casefolded: bool) -> frozenset[int]:
        if casefolded:
            return frozenset(i for (cf, _), i in self.syms.items() if cf is not None and cf == word)
        return frozenset(i for (_, ex), i in self.syms.items() if ex == word)

    def gap_sym(self, gap: str) -> int:
        return self.gap_syms[gap]

    def _intern(self, key: tuple) -> int:
        if key not in self.cur_ids:
            self.cur_ids[key] = len(self.curs)
            self.curs.append(key)
        return self.cur_ids[key]

    def is_gap(self, cur: int) -> bool:
        return cur == NONE or (cur != DEAD and self.curs[cur][0] == "g")

    def start_word(self, text: str) -> int:
        return self._word("", "", text)

    def advance(self, cur: int, text: str) -> int:
        """The word state after appending word characters `text` to the word `cur` is inside."""
        if cur == DEAD:
            return DEAD
        _, cf, ex = self.curs[cur]
        return self._word(cf, ex, text)

    def _word(self, cf: str | None, ex: str | None, text: str) -> int:
        cf = cf + text.casefold() if cf is not None else None
        ex = ex + text if ex is not None else None
        cf = cf if cf in self.cf_prefixes else None
        ex = ex if ex in self.ex_prefixes else None
        if cf is None and ex is None:
            return DEAD
        if cf is not None and ex is not None:
            return self._intern(("w", cf, ex))
        folded = ex is None
        prefix = cf if folded else ex
        key = ("w*", folded, self._residual(folded, prefix))
        if self.blocklist is not None:
            key += (self.blocklist.prefix_signature(prefix, folded),)
        if key not in self.cur_ids:  # the first prefix with these completions represents them
            self.cur_ids[key] = len(self.curs)
            self.curs.append(("w", cf, ex))
        return self.cur_ids[key]

    def _residual(self, folded: bool, prefix: str) -> frozenset:
        """What completes a one-sided live prefix: (remaining suffix, word symbol) pairs."""
        found = self._residuals.get((folded, prefix))
        if found is None:
            words = self.cf_words if folded else self.ex_words
            found = frozenset(
                (w[len(prefix) :], self.syms[(w, None) if folded else (None, w)])
                for w in words
                if w.startswith(prefix)
            )
            self._residuals[(folded, prefix)] = found
        return found

    def finish(self, cur: int) -> int:
        """Word symbol of the word `cur` is inside (a word state)."""
        if cur == DEAD:
            return OTHER
        _, cf, ex = self.curs[cur]
        return self.syms[(cf if cf in self.cf_words else None, ex if ex in self.ex_words else None)]

    def start_gap(self, text: str) -> int:
        return self._gap("", text)

    def extend_gap(self, cur: int, text: str) -> int:
        return NONE if cur == NONE else self._gap(self.curs[cur][1], text)

    def _gap(self, gap: str, text: str) -> int:
        if not self.gap_prefixes:
            return NONE
        for ch in text:  # whitespace runs collapse to one space, as words.normalise_gap does
            if not is_space_char(ch):
                gap += ch
            elif not gap.endswith(" "):
                gap += " "
        return self._intern(("g", gap)) if gap in self.gap_prefixes else NONE

    def gap_symbol(self, cur: int) -> int:
        return OTHER if cur == NONE else self.gap_syms.get(self.curs[cur][1], OTHER)

    def run(self, cur: int, runs: list[str]) -> tuple[int, tuple[int, ...]]:
        """(tracker, events) after the alternating word / separator runs of a token's text."""
        events = []
        for text in runs:
            if is_word_char(text[0]):
                if self.is_gap(cur):
                    if self.gap_syms:
                        events.append(-1 - self.gap_symbol(cur))
                    cur = self.start_word(text)
                else:
                    cur = self.advance(cur, text)
            elif self.is_gap(cur):
                cur = self.extend_gap(cur, text)
            else:
                events.append(self.finish(cur))
                cur = self.start_gap(text)
        return cur, tuple(events)

    def substrings(self) -> tuple[set[str], set[str]]:
        """Casefolded / exact substrings of relevant words: every leading run that can extend a live prefix."""
        cf = {w[i:j] for w in self.cf_words for i in range(len(w)) for j in range(i + 1, len(w) + 1)}
        ex = {w[i:j] for w in self.ex_words for i in range(len(w)) for j in range(i + 1, len(w) + 1)}
        return cf, ex


@dataclass
class _Context:
    """A partition of the vocabulary for one tracker situation, with one event per group."""

    group_of_token: np.ndarray  # (V,) int32
    representatives: np.ndarray  # (G,) a token of each group


# Test-only hook: a constraint that mentions this word compiles, spending CPU, until its time budget (or the
# request's deadline) stops it, so tests of deadlines do not depend on how fast the machine compiles.
STALL_WORD = os.environ.get("PCGEN_TEST_STALL_WORD", "")
# Test-only hook: a constraint that mentions this word spends SLOW_COMPILE_S of CPU (stopped by its budget like
# real work), then compiles: a compile of known least duration, for tests of where its time is reported.
SLOW_WORD = os.environ.get("PCGEN_TEST_SLOW_WORD", "")
SLOW_COMPILE_S = 0.5


class _Compiler:
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

    # ------------------------------------------------------------------ exploration

    def run(self) -> TokenDFA:
        """Explore the product breadth-first, then classes, minimisation and (beside a blocklist) the classes
        that are safe at each state."""
        _check_static_size(self.constraint, self.max_states)
        if STALL_WORD and STALL_WORD in canonical_json(self.constraint):
            while True:  # test-only (see STALL_WORD): busy until the budget or deadline stops it
                self.check_deadline()
        if SLOW_WORD and SLOW_WORD in canonical_json(self.constraint):
            until = time.perf_counter() + SLOW_COMPILE_S
            while time.perf_counter() < until:  # test-only (see SLOW_WORD)
                self.check_deadline()
        explored = _Exploration(self)
        while explored.queue:
            explored.expand(explored.queue.popleft())
        keys = explored.keys
        ended = np.array([key[0] == "end" for key in keys], bool)
        accepting = np.array([explored.accepting_key(key) for key in keys], bool)
        safe = self._safe_groups(keys, explored.rows) if self.blocklist is not None else None
        return self._finish(explored.rows, explored.initial, accepting, ended, safe, explored.affix_memo)

    def _safe_groups(self, keys: list[tuple], rows: dict) -> dict[int, np.ndarray]:
        """Per explored state, per group of its context: does the group hold a token that the blocklist allows
        in every text the state's tracker stands for? (All true where masking never lets a text reach it.)"""
        by_cur: dict[int, np.ndarray] = {}
        out = {}
        for state, (name, succ, _) in rows.items():
            key = keys[state]
            if not isinstance(key[0], int):  # the sink: never part of a feasible path
                out[state] = np.ones(len(succ), bool)
                continue
            cur = key[0]
            if cur not in by_cur:
                self.check_deadline()
                if self.words.is_gap(cur):
                    tokens = self.blocklist.safe_tokens("gap")
                elif cur == DEAD:
                    tokens = self.blocklist.safe_tokens("dead")
                else:
                    tokens = self.blocklist.safe_tokens("word", self.words.curs[cur][1:])
                groups = self.contexts[name].group_of_token
                by_cur[cur] = (
                    np.ones(len(succ), bool)
                    if tokens is None
                    else np.bincount(groups[tokens], minlength=len(succ)) > 0
                )
            out[state] = by_cur[cur]
        return out

    # ------------------------------------------------------------------ classes and minimisation

    def _finish(
        self,
        rows: dict,
        initial: int,
        accepting: np.ndarray,
        ended: np.ndarray,
        safe: dict | None,
        affix_keys: dict[object, tuple[np.ndarray, list]] | None = None,
    ) -> TokenDFA:
        """Token classes (the groups of every context used, and for the tokens with a suffix / stop role their
        key per context), the successor table over them, then minimisation."""
        t = self.tables
        used = sorted({row[0] for row in rows.values()}, key=str)
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
        for state in range(n):
            if ended[state]:
                delta[state] = state  # absorbing
            else:
                name, succ, affix = rows[state]
                delta[state] = succ[group_of_class[name]]
                if affix is not None:
                    affix_name, key_succ = affix
                    delta[state, role_classes] = key_succ[key_of_class[affix_name]]
                if safe is not None:
                    safe_pre[state] = safe[state][group_of_class[name]]
        dfa = _minimise(
            delta, token_class.reshape(-1).astype(np.int32), initial, accepting, ended, t, self.max_states,
            self.check_deadline, safe_pre, None if self.bytes is None else self.bytes.unusable,
        )  # fmt: skip
        dfa.blocklist = self.blocklist
        return dfa


END_ACCEPT, END_REJECT, SINK = ("end", True), ("end", False), ("sink",)


class _Exploration:
    """The states of the character-level product met at token boundaries: keys (tracker, matcher-state id)
    plus the two ended states and the sink, numbered in breadth-first order (the initial state is 0), and per
    explored state its context and successor per group (`rows`)."""

    def __init__(self, compiler: _Compiler) -> None:
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
        sink_events, eos_events, still, moving = [], [], [], []
        for u, event in enumerate(events):
            if event is None:
                sink_events.append(u)
            elif event is EOS_EVENT:
                eos_events.append(u)
            else:
                new_cur, syms, tok_event, text = event
                if syms or compiler.pattern_tokens or text is not None:  # raw tokens: every token moves
                    step = (syms, tok_event, text)
                    event_id = self.event_ids.setdefault(step, len(self.event_ids))
                    moving.append((u, new_cur, bool(plain[u]), event_id, step))
                else:
                    still.append((u, new_cur, bool(plain[u])))
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


def _minimise(
    delta: np.ndarray,
    token_class: np.ndarray,
    initial: int,
    accepting: np.ndarray,
    ended: np.ndarray,
    tables: VocabTables,
    max_states: int,
    check_deadline: Any = None,
    safe: np.ndarray | None = None,
    banned: np.ndarray | None = None,
) -> TokenDFA:
    """The minimal DFA: Moore blocks of states, then token classes with identical columns merged.

    `safe` (states, classes), for a DFA beside a blocklist mask: whether the class holds a token the mask allows
    in the state's situation. A merged class is safe where one of its classes is; a merged state where all of
    its states are (TokenDFA.safe_classes)."""
    assert initial == 0  # explored first: block 0 below
    block = _moore_blocks(delta, accepting, ended, check_deadline)  # (n,) block of each state
    m = int(block.max()) + 1
    if m > max_states:
        raise ConstraintTooComplex(
            "constraint",
            f"the minimal automaton has {m} states, above the cap of {max_states}; simplify the constraint",
            states=m,
            limit=max_states,
        )
    reps = np.zeros(m, np.int64)
    reps[block] = np.arange(len(block))
    min_delta = block[delta[reps]]  # (m, classes)
    _, col_reps, col_of_class = np.unique(min_delta.T, axis=0, return_index=True, return_inverse=True)
    col_of_class = col_of_class.reshape(-1)
    safe_classes = None
    if safe is not None:
        per_column = _reduce_groups(safe.T, col_of_class, np.logical_or).T  # (n, merged classes)
        safe_classes = _reduce_groups(per_column, block, np.logical_and)  # (m, merged classes)
    return TokenDFA(
        transitions=np.ascontiguousarray(min_delta[:, col_reps]).astype(np.int32),
        token_class=col_of_class[token_class].astype(np.int32),
        accepting=accepting[reps].copy(),
        ended=ended[reps].copy(),
        initial_state=0,
        eos_token_id=tables.eos_token_id,
        tokenizer_fingerprint=tables.fingerprint,
        banned_tokens=np.asarray(tables.banned if banned is None else banned, bool).copy(),  # byte_chars.py
        token_block=(np.asarray(tables.p_id) == 0).astype(np.int8),  # p_id 0 is the empty leading run
        safe_classes=safe_classes,
    )


def _moore_blocks(
    delta: np.ndarray, accepting: np.ndarray, ended: np.ndarray, check_deadline: Any = None
) -> np.ndarray:
    """Moore partition refinement: rows are hashed for speed, then the stable partition is verified exactly.
    Blocks are numbered in order of first appearance."""
    n, c = delta.shape
    block = np.unique(accepting.astype(np.int64) * 2 + ended, return_inverse=True)[1].reshape(-1)
    rng = np.random.default_rng(0)
    starts, dst, edge_weight = _weighted_edges(delta, rng.integers(1, 2**62, size=c, dtype=np.int64) | 1)
    exact = False
    while True:
        if check_deadline is not None:
            check_deadline()
        if exact:
            new = np.unique(
                np.concatenate([block[:, None], block[delta]], axis=1), axis=0, return_inverse=True
            )[1]
        else:  # a random linear hash of (own block, class -> successor's block), over distinct successors
            own, of_block = rng.integers(1, 2**62, size=(2, int(block.max()) + 1), dtype=np.int64) | 1
            signature = own[block] + np.add.reduceat(edge_weight * of_block[block[dst]], starts)  # wraps
            new = np.unique(signature, return_inverse=True)[1]
        new = new.reshape(-1)
        if new.max() == block.max():  # stable; verify no hash collision merged different rows
            reps = np.zeros(new.max() + 1, np.int64)
            reps[new] = np.arange(n)
            same_rows = np.array_equal(new[delta], new[delta[reps[new]]])
            if exact or (same_rows and np.array_equal(block, block[reps[new]])):
                block = new
                break
            exact = True
        block = new
    first_seen = np.unique(block, return_index=True)[1]
    remap = np.empty(len(first_seen), np.int64)
    remap[np.argsort(first_seen)] = np.arange(len(first_seen))
    return remap[block]


def _weighted_edges(delta: np.ndarray, weights: np.ndarray, chunk: int = 2**16) -> tuple[np.ndarray, ...]:
    """Each state's distinct successors with the (wrapping) sum of the weights of the classes leading there:
    (first edge of each state (n,), destinations (E,), weights (E,)). A round of Moore's refinement then
    costs O(E), a few successors per state, instead of O(n x classes); rows are sorted in chunks."""
    n, c = delta.shape
    parts_dst, parts_w, counts = [], [], []
    for lo in range(0, n, chunk):
        rows = delta[lo : lo + chunk]
        order = np.argsort(rows, axis=1)
        succ = np.take_along_axis(rows, order, axis=1)  # (m, c) each row sorted
        first = np.ones(succ.shape, bool)
        first[:, 1:] = succ[:, 1:] != succ[:, :-1]
        runs = np.flatnonzero(first.reshape(-1))
        parts_dst.append(succ.reshape(-1)[runs].astype(np.int64))
        parts_w.append(np.add.reduceat(weights[order].reshape(-1), runs))
        counts.append(first.sum(axis=1))
    counts = np.concatenate(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return starts, np.concatenate(parts_dst), np.concatenate(parts_w)


def _reduce_groups(rows: np.ndarray, group: np.ndarray, op: np.ufunc) -> np.ndarray:
    """(groups, ...) op-reduction of the rows of each group (group ids 0..G-1, each present)."""
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.diff(group[order], prepend=-1))
    return op.reduceat(rows[order], starts, axis=0)


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


def _deadline_check(deadline: float, budget_s: float) -> Any:
    def check() -> None:
        if time.perf_counter() > deadline:
            raise ConstraintTooComplex(
                "constraint", f"compilation exceeded its time budget of {budget_s:g}s", out_of_time=True
            )

    return check


def explain_unsatisfiable(constraint: Any, tokenizer: Any) -> str:
    """Why no text satisfies a constraint whose DFA cannot accept: a keyword it requires that this tokenizer
    cannot write (no token sequence spells it), else the logic itself."""
    body = split_affixes(constraint)[0]
    for keyword in keywords_by_polarity(body)[0]:
        dfa = compile_constraint(keyword, tokenizer)
        if dfa.steps_to_accept[dfa.initial_state] < 0:
            return (
                f"the keyword {keyword.text!r} cannot be written with this tokenizer: no sequence of its tokens "
                "spells it as valid UTF-8 (docs/method.md §3)"
            )
    return "no text satisfies it"


# ---------------------------------------------------------------------------------------------- cache

COMPILED: LRUCache[TokenDFA | ConstraintTooComplex] = LRUCache(
    "dfa", CACHE_BYTES, lambda v: v.nbytes if isinstance(v, TokenDFA) else 1024
)
"""Compiled DFAs and rejections, by (canonical constraint, tokenizer, cap, budget): a rejected constraint
costs a dictionary lookup the second time."""


def compile_key(
    spec: Any, tokenizer: Any, max_states: int, time_budget_s: float, blocklist_mask: bool = True
) -> tuple:
    """The cache key of compile_constraint's result: equal keys, equal DFAs (or equal rejections)."""
    fingerprint = vocab_tables(tokenizer).fingerprint
    return (canonical_json(parse_constraint(spec)), fingerprint, max_states, time_budget_s, blocklist_mask)


def compile_constraint(
    spec: Any,
    tokenizer: Any,
    max_states: int = DEFAULT_MAX_STATES,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    blocklist_mask: bool = True,
    lazy: bool = False,
) -> TokenDFA:
    """Compile a constraint spec (JSON-compatible or parsed) for `tokenizer` into a minimal TokenDFA.

    With `lazy`, the explicit automaton gets at most LAZY_AFTER_STATES states; past them (or the budget) a
    word-level constraint comes back as a LazyDFA (pc_core.lazy_dfa: explored as decoding goes, the same
    language, `accepts` and `step` alike; a fresh one per call, never cached).

    With `blocklist_mask`, a long list of forbidden single words inside a top-level `all` is left out of the
    DFA and enforced beside it (`dfa.blocklist`, see blocklist.py); the guide falls back to
    `blocklist_mask=False` (one exact product) where the two interact. Results (and ConstraintTooComplex
    rejections) are cached per (canonical constraint, tokenizer fingerprint, max_states, time budget, mode),
    LRU-bounded in bytes. Raises ConstraintError for malformed specs and ConstraintTooComplex beyond
    `max_states` / the budget.
    """
    constraint = parse_constraint(spec)
    if lazy:
        return _explicit_or_lazy(constraint, tokenizer, max_states, time_budget_s, blocklist_mask)
    tables = vocab_tables(tokenizer)
    key = compile_key(constraint, tokenizer, max_states, time_budget_s, blocklist_mask)
    cached = COMPILED.get(key)
    if isinstance(cached, ConstraintTooComplex):
        raise cached.fresh()
    if cached is not None:
        return cached
    started = time.perf_counter()
    # with a suffix or stop strings the blocklist stays in the product (the mask would judge the suffix too)
    split = split_blocklist(constraint) if blocklist_mask and not isinstance(constraint, Affixed) else None
    try:
        char_dfa = char_only_dfa(constraint)  # regex / choice / JSON nodes alone: vectorised (char_tokens.py)
        if char_dfa is not None:
            deadline = time.perf_counter() + time_budget_s
            dfa = compile_char_only(char_dfa, tables, max_states, _deadline_check(deadline, time_budget_s))
        elif split is None:
            dfa = _Compiler(constraint, tables, max_states, time_budget_s).run()
        else:
            rest, blocked = split
            blocklist = Blocklist(blocked, tables)
            dfa = _Compiler(rest, tables, max_states, time_budget_s, blocklist).run()
    except ConstraintTooComplex as err:
        COMPILED.put(key, err.fresh())
        raise
    dfa.compile_seconds = time.perf_counter() - started
    COMPILED.put(key, dfa)
    return dfa


def _explicit_or_lazy(
    constraint: Constraint, tokenizer: Any, max_states: int, time_budget_s: float, blocklist_mask: bool
) -> Any:
    """compile_constraint(lazy=True): the explicit automaton within min(max_states, LAZY_AFTER_STATES) states
    and the time budget, else lazy."""
    from pc_core.lazy_dfa import LazyDFA  # (it builds on this module's compiler)

    try:
        cap = min(max_states, LAZY_AFTER_STATES)
        return compile_constraint(constraint, tokenizer, cap, time_budget_s, blocklist_mask)
    except ConstraintTooComplex as err:
        if char_only_dfa(constraint) is not None:  # regex / JSON: no lazy form
            raise
        if STALL_WORD and STALL_WORD in canonical_json(constraint):  # test-only: no form of it compiles
            raise
        started = time.perf_counter()
        dfa = LazyDFA(constraint, vocab_tables(tokenizer))
        dfa.note = f"explicit automaton: {err.message}"
        dfa.compile_seconds = time.perf_counter() - started
        return dfa
