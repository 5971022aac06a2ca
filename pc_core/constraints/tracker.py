"""The word / gap tracker of the word-level compiler (docs/method.md §3-4): which words and gaps of the text
the constraint mentions, as tracker states at token boundaries and word / gap symbols for the matcher.

The text is inside a word or inside a gap (the separator text between words). A word is DEAD when it cannot
become a word the constraint mentions, else a live prefix (casefolded and/or exact); a gap is NONE when it
cannot become a gap the constraint's phrases mention, else a live gap prefix.
"""

from __future__ import annotations

from pc_core.constraints.blocklist import Blocklist
from pc_core.constraints.nodes import Constraint, iter_keywords
from pc_core.constraints.words import is_space_char, is_word_char

NONE, DEAD = 0, 1  # tracker: inside a gap no phrase mentions (or at the start) / an irrelevant word
OTHER = 0  # word / gap symbol of anything the constraint does not mention


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
