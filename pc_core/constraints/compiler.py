"""Compile a constraint into a minimal token-level DFA (method notes, section 3).

The character-level automaton is the product of
  * a *word tracker*: outside a word (NONE), inside a word that cannot become a relevant word (DEAD), or
    inside a word that is still a prefix of a relevant word (a "live" prefix, casefolded and/or exact);
  * the word-level matcher of the constraint (matchers.py), fed one symbol per finished word.
Its states at token boundaries are explored breadth-first. Tokens are never run one by one per state:
for each tracker context (NONE, DEAD, live) the vocabulary is partitioned, with numpy, into groups of
tokens that provably have the same effect (same tracker successor, same word symbols), so a state costs
one matcher step per group. Afterwards the groups of all contexts are refined into global token classes,
the DFA is minimised (Moore) and classes with identical columns merge.

Characters split across tokens. A byte-level token may end inside a multi-byte UTF-8 character; whether
the text then continues a word depends on bytes not generated yet. Tracking those pending bytes exactly
multiplies the automaton by ~300 classes of partial characters (measured on the 50,257-token BPE: 17,683
reachable partial sequences, 313 behaviourally distinct), which the guide would pay for in every table.
So pcgen never leaves a character incomplete at a token boundary: such tokens lead to a rejecting sink and
get probability zero. Every accepted token sequence is therefore judged exactly; the price is that text
needing a split character (e.g. GPT-2's two-token curly apostrophe) is written with other tokens. Tokens
that *start* with stray continuation bytes decode to U+FFFD on their own, a separator, and are exact.

TokenDFA stores a (states x classes) successor table plus the class of every token; see dfa.py.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.matchers import Matcher, build_matcher
from pc_core.constraints.spec import (
    All,
    Constraint,
    Keyword,
    Tokens,
    canonical_json,
    iter_keywords,
    parse_constraint,
)
from pc_core.constraints.vocab import KIND_EOS, KIND_SEP, KIND_SPECIAL, KIND_WORD, VocabTables, vocab_tables
from pc_core.constraints.words import is_word_char, keyword_variants
from pc_core.errors import ConstraintError, ConstraintTooComplex

DEFAULT_MAX_STATES = 2048
"""Cap on the minimised DFA. Exact keyword DFAs grow as (prefixes of unmatched keywords) x (subsets found):
measured on the 50,257-token BPE, 5 CommonGen concepts need ~730 states and 6 need ~1,750 (docs/benchmarks.md).
The guide's tables cost horizon x states x hidden floats (32 x 2048 x 4096 x 4 B = 1 GiB at production
size) and its precompute one (states x H) x (H x H) product per token of horizon, so anything bigger is a
deployment decision (the service has its own, lower, setting). Exploration before minimisation may use 8x."""
DEFAULT_TIME_BUDGET_S = 10.0
EXPLORE_FACTOR = 8

NONE, DEAD = 0, 1  # word tracker: outside a word / inside an irrelevant word; live prefixes are >= 2
OTHER = 0  # word symbol of any word the constraint does not mention
EOS_EVENT = ("eos",)


class _WordTracker:
    """Relevant words of one constraint, live-prefix ids and word-symbol ids."""

    def __init__(self, constraint: Constraint) -> None:
        cf_words, ex_words = set(), set()
        for keyword in iter_keywords(constraint):
            for variant in keyword_variants(keyword):
                (ex_words if keyword.case_sensitive else cf_words).update(variant)
        self.cf_words, self.ex_words = cf_words, ex_words
        self.cf_prefixes = {w[:i] for w in cf_words for i in range(1, len(w) + 1)}
        self.ex_prefixes = {w[:i] for w in ex_words for i in range(1, len(w) + 1)}
        self.curs: list[tuple[str | None, str | None]] = [(None, None), (None, None)]  # NONE, DEAD
        self.cur_ids: dict[tuple[str | None, str | None], int] = {}
        self.syms: dict[tuple[str | None, str | None], int] = {(None, None): OTHER}
        for cf in sorted(cf_words):
            self._sym((cf, None))
        for ex in sorted(ex_words):
            cf = ex.casefold()
            self._sym((cf if cf in cf_words else None, ex))

    def _sym(self, key: tuple[str | None, str | None]) -> int:
        if key not in self.syms:
            self.syms[key] = len(self.syms)
        return self.syms[key]

    def syms_for(self, word: str, case_sensitive: bool) -> frozenset[int]:
        if case_sensitive:
            return frozenset(i for (_, ex), i in self.syms.items() if ex == word)
        return frozenset(i for (cf, _), i in self.syms.items() if cf is not None and cf == word.casefold())

    def _live(self, cf: str | None, ex: str | None) -> int:
        if cf is None and ex is None:
            return DEAD
        key = (cf, ex)
        if key not in self.cur_ids:
            self.cur_ids[key] = len(self.curs)
            self.curs.append(key)
        return self.cur_ids[key]

    def advance(self, cur: int, text: str) -> int:
        """The tracker after appending word characters `text` (non-empty) to the current word."""
        if cur == DEAD:
            return DEAD
        if cur == NONE:
            cf, ex = "", ""
        else:
            cf, ex = self.curs[cur]
        cf = cf + text.casefold() if cf is not None else None
        ex = ex + text if ex is not None else None
        return self._live(cf if cf in self.cf_prefixes else None, ex if ex in self.ex_prefixes else None)

    def finish(self, cur: int) -> int:
        """Word symbol of the word `cur` is inside (cur must not be NONE)."""
        if cur == DEAD:
            return OTHER
        cf, ex = self.curs[cur]
        return self.syms[(cf if cf in self.cf_words else None, ex if ex in self.ex_words else None)]

    def run_text(self, cur: int, text: str) -> tuple[int, tuple[int, ...]]:
        """Character by character (the exact path for partial UTF-8 sequences)."""
        out = []
        for ch in text:
            if is_word_char(ch):
                cur = self.advance(cur, ch)
            elif cur != NONE:
                out.append(self.finish(cur))
                cur = NONE
        return cur, tuple(out)

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


class _Compiler:
    def __init__(
        self, constraint: Constraint, tables: VocabTables, max_states: int, time_budget_s: float
    ) -> None:
        self.constraint = constraint
        self.tables = tables
        self.max_states = max_states
        self.deadline = time.perf_counter() + time_budget_s
        self.time_budget_s = time_budget_s
        self.words = _WordTracker(constraint)
        self.matcher: Matcher = build_matcher(constraint, self.words.syms_for)
        self.pattern_tokens = sorted(
            {t for node in _walk(constraint) if isinstance(node, Tokens) for t in node.ids}
        )
        for t in self.pattern_tokens:
            if t >= tables.vocab_size:
                raise ConstraintError(
                    "constraint.tokens", f"token id {t} is outside the vocabulary (size {tables.vocab_size})"
                )
        self.pattern_set = set(self.pattern_tokens)
        self._prepare_static()
        self.contexts: dict[object, _Context] = {}

    # ------------------------------------------------------------------ static per-token arrays

    def _prepare_static(self) -> None:
        t, w = self.tables, self.words
        n_strings = len(t.strings)
        start_of = np.full(n_strings, DEAD, np.int64)
        start_of[0] = NONE
        sym_of = np.full(n_strings, OTHER, np.int64)
        candidates = {i for p in w.cf_prefixes for i in t.string_ids_by_casefold.get(p, ())}
        candidates.update(t.string_ids[p] for p in w.ex_prefixes if p in t.string_ids)
        for sid in candidates:
            cur = w.advance(NONE, t.strings[sid])
            start_of[sid] = cur
            sym_of[sid] = w.finish(cur)
        self.p_start = start_of[t.p_id]
        self.p_sym = sym_of[t.p_id]
        self.s_start = start_of[t.s_id]
        self.p_empty = t.p_id == 0
        inner_ids: dict[tuple[int, ...], int] = {(): 0}
        self.inner_cls = np.zeros(t.vocab_size, np.int64)
        self.inner_syms: dict[int, tuple[int, ...]] = {}
        for tok, inner in t.inner.items():
            syms = tuple(w.finish(w.advance(NONE, x)) for x in inner)
            self.inner_syms[tok] = syms
            self.inner_cls[tok] = inner_ids.setdefault(syms, len(inner_ids))
        # tokens whose leading run may extend some live prefix: singled out in live contexts
        cf_subs, ex_subs = w.substrings()
        cand = [t.p_tokens_by_casefold[s] for s in cf_subs if s in t.p_tokens_by_casefold]
        cand += [t.p_tokens_by_exact[s] for s in ex_subs if s in t.p_tokens_by_exact]
        self.live_candidates = np.unique(np.concatenate(cand)) if cand else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ events

    def token_event(self, cur: int, tok: int) -> tuple[int, tuple[int, ...]] | None:
        """(tracker, word symbols) after `tok`; None for EOS and for tokens that split a character."""
        t, w = self.tables, self.words
        kind = t.kind[tok]
        if kind == KIND_EOS or t.pend_id[tok]:
            return None
        if kind == KIND_SPECIAL:
            return cur, ()
        p = t.strings[t.p_id[tok]]
        if kind == KIND_WORD:
            return (w.advance(cur, p) if p else cur), ()
        if p:
            cur = w.advance(cur, p)
        syms = ((w.finish(cur),) if cur != NONE else ()) + self.inner_syms.get(tok, ())
        s = t.strings[t.s_id[tok]]
        return (w.advance(NONE, s) if s else NONE), syms

    def _events(self, cur: int, ctx: _Context) -> list:
        """Per group of `ctx`: (tracker, word symbols, token event), EOS_EVENT, or None (to the sink)."""
        out: list = []
        eos = self.tables.eos_token_id
        for tok in ctx.representatives.tolist():
            event = self.token_event(cur, tok)
            if event is None:
                out.append(EOS_EVENT if tok == eos else None)
            else:
                out.append((*event, tok if tok in self.pattern_set else -1))
        return out

    def _partition(self, keys: np.ndarray) -> _Context:
        keys = keys.copy()
        if self.pattern_tokens:  # raw-token patterns see token identity: one group per pattern token
            keys[self.pattern_tokens] = -1 - np.asarray(self.pattern_tokens, np.int64)
        _, reps, groups = np.unique(keys, return_index=True, return_inverse=True)
        return _Context(groups.astype(np.int32), reps)

    def _combine(self, kind: np.ndarray, a: np.ndarray, s: np.ndarray) -> np.ndarray:
        n_inner = int(self.inner_cls.max()) + 1
        a = a + 4  # room for markers -1..-3
        key = kind.astype(np.int64)
        for col, size in ((a, int(a.max()) + 1), (self.inner_cls, n_inner), (s, int(s.max()) + 1)):
            key = key * size + col
        key[self.tables.pend_id != 0] = -(3 * 10**12)  # split-character tokens: one group, to the sink
        return key

    def context(self, name: object) -> _Context:
        """Token partition for tracker NONE, DEAD or 'live' (the base partition of every live prefix)."""
        if name in self.contexts:
            return self.contexts[name]
        t = self.tables
        kind = t.kind.astype(np.int64)
        word, sep = kind == KIND_WORD, kind == KIND_SEP
        SELF, NOSYM, PLACEHOLDER = -1, -2, -3
        a = np.zeros(t.vocab_size, np.int64)
        s = np.where(sep, self.s_start, 0)
        if name == NONE:
            a[word] = np.where(self.p_empty, SELF, self.p_start)[word]
            a[sep] = np.where(self.p_empty, NOSYM, self.p_sym)[sep]
        elif name == DEAD:
            a[word] = DEAD
            a[sep] = OTHER
        else:  # live base: non-candidate tokens break the prefix
            a[word] = np.where(self.p_empty, SELF, DEAD)[word]
            a[sep] = np.where(self.p_empty, PLACEHOLDER, OTHER)[sep]
        keys = self._combine(kind, a, s)
        if name == "live":
            keys[self.live_candidates] = -(10**12) - self.live_candidates
        ctx = self._partition(keys)
        self.contexts[name] = ctx
        return ctx

    # ------------------------------------------------------------------ exploration

    def run(self) -> TokenDFA:
        _check_static_size(self.constraint, self.max_states)
        t = self.tables
        matcher = self.matcher
        q_ids: dict[object, int] = {}
        q_list: list[object] = []

        def qid(q: object) -> int:
            if q not in q_ids:
                q_ids[q] = len(q_list)
                q_list.append(q)
            return q_ids[q]

        step_memo: dict[tuple[int, tuple[int, ...], int], int] = {}

        def step_q(q: int, syms: tuple[int, ...], tok: int) -> int:
            key = (q, syms, tok)
            out = step_memo.get(key)
            if out is None:
                state = q_list[q]
                for sym in syms:
                    state = matcher.word(state, sym)
                state = matcher.token(state, tok)
                out = step_memo[key] = qid(state)
            return out

        accept_memo: dict[tuple[int, int], bool] = {}

        def accepting(q: int, cur: int) -> bool:
            key = (q, cur)
            if key not in accept_memo:
                state = q_list[q]
                if cur != NONE:
                    state = matcher.word(state, self.words.finish(cur))
                accept_memo[key] = bool(matcher.accept(state))
            return accept_memo[key]

        state_ids: dict[tuple, int] = {}
        keys: list[tuple] = []
        END_ACCEPT, END_REJECT, SINK = ("end", True), ("end", False), ("sink",)

        def sid(key: tuple) -> int:
            out = state_ids.get(key)
            if out is None:
                out = state_ids[key] = len(keys)
                keys.append(key)
                queue.append(out)
            return out

        queue: deque[int] = deque()
        explore_cap = self.max_states * EXPLORE_FACTOR
        initial = sid((NONE, qid(matcher.init())))
        sid(END_ACCEPT)
        sid(END_REJECT)
        sink = sid(SINK)
        rows: dict[int, tuple[object, np.ndarray]] = {}  # state -> (context name, successor per group)
        cur_events: dict[int, list] = {}
        eos = t.eos_token_id
        iterations = 0
        while queue:
            state = queue.popleft()
            key = keys[state]
            if key[0] == "end":
                continue
            iterations += 1
            if len(keys) > explore_cap:
                raise ConstraintTooComplex(
                    "constraint",
                    f"more than {explore_cap} automaton states before minimisation (cap {self.max_states} "
                    "after); simplify the constraint",
                    states=len(keys),
                    limit=self.max_states,
                )
            if iterations % 64 == 0 and time.perf_counter() > self.deadline:
                raise ConstraintTooComplex(
                    "constraint",
                    f"compilation exceeded its time budget of {self.time_budget_s:.1f}s "
                    f"({len(keys)} states explored)",
                    states=len(keys),
                    limit=self.max_states,
                )
            if key == SINK:
                ctx = self.context(NONE)
                succ = np.full(len(ctx.representatives), sink, np.int32)
                succ[ctx.group_of_token[eos]] = state_ids[END_REJECT]
                rows[state] = (NONE, succ)
                continue
            cur, q = key
            name = cur if cur in (NONE, DEAD) else "live"
            ctx = self.context(name)
            events = cur_events.get(cur)
            if events is None:
                events = cur_events[cur] = self._events(cur, ctx)
            succ = np.empty(len(events), np.int32)
            end = state_ids[END_ACCEPT if accepting(q, cur) else END_REJECT]
            for g, event in enumerate(events):
                if event is None:
                    succ[g] = sink
                elif event is EOS_EVENT:
                    succ[g] = end
                else:
                    new_cur, syms, tok_event = event
                    succ[g] = sid((new_cur, step_q(q, syms, tok_event)))
            rows[state] = (name, succ)

        accepting_flags = np.zeros(len(keys), bool)
        ended = np.zeros(len(keys), bool)
        for i, key in enumerate(keys):
            if key[0] == "end":
                ended[i] = True
                accepting_flags[i] = key[1]
            elif key != SINK:
                accepting_flags[i] = accepting(key[1], key[0])
        return self._finish(rows, initial, accepting_flags, ended)

    # ------------------------------------------------------------------ classes and minimisation

    def _finish(self, rows: dict, initial: int, accepting: np.ndarray, ended: np.ndarray) -> TokenDFA:
        t = self.tables
        used = sorted({name for name, _ in rows.values()}, key=str)
        token_class = np.zeros(t.vocab_size, np.int64)
        for name in used:
            groups = self.contexts[name].group_of_token.astype(np.int64)
            token_class = token_class * (int(groups.max()) + 1) + groups
            _, token_class = np.unique(token_class, return_inverse=True)
        _, reps, token_class = np.unique(token_class, return_index=True, return_inverse=True)
        n = len(accepting)
        delta = np.empty((n, len(reps)), np.int32)
        group_of_class = {name: self.contexts[name].group_of_token[reps] for name in used}
        for state in range(n):
            if ended[state]:
                delta[state] = state  # absorbing
            else:
                name, succ = rows[state]
                delta[state] = succ[group_of_class[name]]
        return _minimise(delta, token_class.astype(np.int32), initial, accepting, ended, t, self.max_states)


def _minimise(
    delta: np.ndarray,
    token_class: np.ndarray,
    initial: int,
    accepting: np.ndarray,
    ended: np.ndarray,
    tables: VocabTables,
    max_states: int,
) -> TokenDFA:
    """Moore partition refinement. Rows are hashed for speed, then blocks are verified exactly."""
    n, c = delta.shape
    block = (accepting.astype(np.int64) * 2 + ended).astype(np.int64)
    _, block = np.unique(block, return_inverse=True)
    rng = np.random.default_rng(0)
    weights = rng.integers(1, 2**62, size=c + 1, dtype=np.int64) | 1
    exact = False
    while True:
        if exact:
            sig = np.concatenate([block[:, None], block[delta]], axis=1)
            _, new = np.unique(sig, axis=0, return_inverse=True)
        else:
            with np.errstate(over="ignore"):
                sig = block * weights[0] + (block[delta] * weights[1:]).sum(axis=1)
            _, new = np.unique(sig, return_inverse=True)
        new = new.reshape(-1)
        if new.max() == block.max():
            # refinement is stable; verify no hash collision merged different rows
            reps = np.zeros(new.max() + 1, np.int64)
            reps[new] = np.arange(n)
            same_rows = np.array_equal(new[delta], new[delta[reps[new]]])
            if exact or (same_rows and np.array_equal(block, block[reps[new]])):
                block = new
                break
            exact = True
        block = new
    # renumber blocks in order of first appearance; the initial state is explored first, so it becomes 0
    assert initial == 0
    first_seen = np.unique(block, return_index=True)[1]
    remap = np.empty(len(first_seen), np.int64)
    remap[np.argsort(first_seen)] = np.arange(len(first_seen))
    block = remap[block]
    m = int(block.max()) + 1
    reps = np.zeros(m, np.int64)
    reps[block] = np.arange(n)
    min_delta = block[delta[reps]]  # (m, c)
    if m > max_states:
        raise ConstraintTooComplex(
            "constraint",
            f"the minimal automaton has {m} states, above the cap of {max_states}; simplify the constraint",
            states=m,
            limit=max_states,
        )
    # merge token classes with identical columns
    _, col_reps, col_of_class = np.unique(min_delta.T, axis=0, return_index=True, return_inverse=True)
    return TokenDFA(
        transitions=np.ascontiguousarray(min_delta[:, col_reps]).astype(np.int32),
        token_class=col_of_class.reshape(-1)[token_class].astype(np.int32),
        accepting=accepting[reps].copy(),
        ended=ended[reps].copy(),
        initial_state=0,
        eos_token_id=tables.eos_token_id,
        tokenizer_fingerprint=tables.fingerprint,
        banned_tokens=np.asarray(tables.pend_id) != 0,
        token_block=(np.asarray(tables.p_id) == 0).astype(np.int8),  # p_id 0 is the empty leading run
    )


def _walk(node: Constraint):  # noqa: ANN202
    yield node
    for child in getattr(node, "children", ()):
        yield from _walk(child)
    if hasattr(node, "child"):
        yield from _walk(node.child)


def _check_static_size(constraint: Constraint, max_states: int) -> None:
    """Fail fast on conjunctions that provably need more states than allowed.

    k keywords that share no word are independent: every subset of them can be the set found so far, and
    those 2^k situations are pairwise distinguishable, so the minimal DFA has at least 2^k states.
    """
    for node in _walk(constraint):
        if not isinstance(node, All):
            continue
        seen: set[str] = set()
        independent = 0
        for child in node.children:
            if not isinstance(child, Keyword):
                continue
            words = {w.casefold() for v in keyword_variants(child) for w in v}
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


# ---------------------------------------------------------------------------------------------- cache

_CACHE: OrderedDict[tuple, TokenDFA] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 256


def compile_constraint(
    spec: Any,
    tokenizer: Any,
    max_states: int = DEFAULT_MAX_STATES,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
) -> TokenDFA:
    """Compile a constraint spec (JSON-compatible or parsed) for `tokenizer` into a minimal TokenDFA.

    Results are cached per (canonical constraint, tokenizer fingerprint, max_states), LRU-bounded.
    Raises ConstraintError for malformed specs and ConstraintTooComplex beyond `max_states` / the budget.
    """
    constraint = parse_constraint(spec)
    tables = vocab_tables(tokenizer)
    key = (canonical_json(constraint), tables.fingerprint, max_states)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    started = time.perf_counter()
    dfa = _Compiler(constraint, tables, max_states, time_budget_s).run()
    dfa.compile_seconds = time.perf_counter() - started
    with _CACHE_LOCK:
        _CACHE[key] = dfa
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return dfa
