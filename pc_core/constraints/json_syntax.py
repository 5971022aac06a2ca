"""JSON syntax beside the automaton, for the values nested past a schema's exact levels (docs/method.md §7.1).

The values of properties an object does not list ("tails") are exact in the character automaton to `max_depth`
levels; an opening bracket one level deeper enters a *skeleton* (json_values.deep_tail) that respects strings
and counts brackets up to TAIL_LEVELS levels but forgets which bracket opened which, and what comes between
them. An exact automaton of the deeper levels would need a state per stack of bracket kinds (2^levels copies of
every value state); instead this module's pushdown checker, run on the text beside the automaton, supplies what
the skeleton forgets: `JsonSyntax` reads bytes and accepts the prefixes of one JSON document written with the
schema's layout (no whitespace, or with "flexible" an optional space after `:` and `,`), followed by anything
once the document is complete. Every text the exact part of the automaton accepts is such a document, so the
product "automaton and syntax" is exactly: the schema's language with tails nested up to TAIL_LEVELS levels.

Decoding (`DeepValues`, used by pc_core.search.DeepMask): a beam's syntax state advances with its tokens; at a
step, a token that enters, stays in, leaves or passes through a skeleton is allowed only if the syntax accepts
its bytes *and* the document can still be finished in the tokens left: the syntax's own shortest completion
(`JsonSyntax.next_char`, character by character: close the string, the key with `:0`, the number, then every
open bracket), written as one-character tokens, takes the automaton out of the skeleton in j tokens to a state
x, and the guide's exact feasibility table must say x can finish in the rest (feasible[r - j, x]). That
completion is itself allowed at every step after it (its first character passes the same test with one token
fewer), so the guarantee of the exact guide carries over: every output is complete and valid within
max_new_tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pc_core.cache import LRUCache

TAIL_LEVELS = 8  # levels an undeclared property's value may nest (counted from the value)
MOVES_KEPT = 50_000  # (syntax state, token) -> syntax state, memoised per tokenizer, then started over
WALKS_KEPT = 4_096  # (automaton state, syntax state) -> the completion's way out, per DFA, then started over
LOOKS_KEPT = 8  # (automaton state, syntax state) -> DeepValues.look (<= 8 bytes per token), per search

# modes of the syntax state (mode, stack, aux): stack is the open brackets, aux the mode's detail
VALUE, VALUE_OR_CLOSE, KEY_OR_CLOSE, KEY, COLON, AFTER = range(6)  # aux of VALUE / KEY: a space may come
STRING, ESCAPE, UNICODE = 6, 7, 8  # aux: 1 for a key, 0 for a value (UNICODE: + 2 * hex digits left)
MINUS, ZERO, INT, DOT, FRACTION, EXP_MARK, EXP_SIGN, EXP = range(9, 17)
LITERAL = 17  # aux: the literal's letters still to come
DONE = 18  # the document is complete: anything may follow
PAST = 19  # something followed the complete document (not one whole document any more)

State = tuple  # (mode, stack: str of "[" / "{", aux)
INITIAL: State = (VALUE, "", 0)
_NUMBER_DONE = (ZERO, INT, FRACTION, EXP)
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_LITERALS = {ord("t"): "rue", ord("f"): "alse", ord("n"): "ull"}
_ESCAPES = frozenset(b'"\\/bfnrt')


def complete(state: State | None) -> bool:
    """Whether a syntax state ends a whole document."""
    return state is not None and (state[0] == DONE or (state[0] in _NUMBER_DONE and not state[1]))


class JsonSyntax:
    """The prefixes of one JSON document in a layout ("compact" or "flexible"), then anything."""

    def __init__(self, whitespace: str = "compact") -> None:
        self.space = 1 if whitespace == "flexible" else 0

    def step(self, state: State, byte: int) -> State | None:  # noqa: C901 - one branch per mode, on purpose
        mode, stack, aux = state
        if mode == STRING:
            if byte == 0x22:
                return (COLON, stack, 0) if aux else self._after(stack)
            if byte == 0x5C:
                return (ESCAPE, stack, aux)
            return None if byte < 0x20 else state
        if mode >= DONE:
            return (PAST, "", 0)
        if mode == ESCAPE:
            if byte == 0x75:
                return (UNICODE, stack, aux + 8)
            return (STRING, stack, aux) if byte in _ESCAPES else None
        if mode == UNICODE:
            if byte not in _HEX:
                return None
            left = (aux >> 1) - 1
            return (UNICODE, stack, (aux & 1) + 2 * left) if left else (STRING, stack, aux & 1)
        if mode == VALUE:
            if byte == 0x20 and aux:
                return (VALUE, stack, 0)
            return self._value(stack, byte)
        if mode == AFTER:
            top = stack[-1]
            if byte == 0x2C:
                return (VALUE, stack, self.space) if top == "[" else (KEY, stack, self.space)
            if (byte == 0x5D and top == "[") or (byte == 0x7D and top == "{"):
                return self._after(stack[:-1])
            return None
        if mode == VALUE_OR_CLOSE:
            return self._after(stack[:-1]) if byte == 0x5D else self._value(stack, byte)
        if mode == KEY_OR_CLOSE:
            if byte == 0x7D:
                return self._after(stack[:-1])
            return (STRING, stack, 1) if byte == 0x22 else None
        if mode == KEY:
            if byte == 0x20 and aux:
                return (KEY, stack, 0)
            return (STRING, stack, 1) if byte == 0x22 else None
        if mode == COLON:
            return (VALUE, stack, self.space) if byte == 0x3A else None
        if mode == LITERAL:
            if byte != ord(aux[0]):
                return None
            return (LITERAL, stack, aux[1:]) if len(aux) > 1 else self._after(stack)
        return self._number(state, byte)

    def _value(self, stack: str, byte: int) -> State | None:
        if byte == 0x22:
            return (STRING, stack, 0)
        if byte == 0x5B:
            return (VALUE_OR_CLOSE, stack + "[", 0)
        if byte == 0x7B:
            return (KEY_OR_CLOSE, stack + "{", 0)
        if byte == 0x2D:
            return (MINUS, stack, 0)
        if byte == 0x30:
            return (ZERO, stack, 0)
        if byte in _DIGITS:
            return (INT, stack, 0)
        rest = _LITERALS.get(byte)
        return None if rest is None else (LITERAL, stack, rest)

    def _after(self, stack: str) -> State:
        return (AFTER, stack, 0) if stack else (DONE, "", 0)

    def _number(self, state: State, byte: int) -> State | None:
        mode, stack, _ = state
        digit = byte in _DIGITS
        if mode == MINUS:
            return (ZERO if byte == 0x30 else INT, stack, 0) if digit else None
        if mode in (DOT, EXP_SIGN):
            return (FRACTION if mode == DOT else EXP, stack, 0) if digit else None
        if mode == EXP_MARK:
            if byte in (0x2B, 0x2D):
                return (EXP_SIGN, stack, 0)
            return (EXP, stack, 0) if digit else None
        if digit and mode != ZERO:
            return state
        if byte == 0x2E and mode in (ZERO, INT):
            return (DOT, stack, 0)
        if byte in (0x45, 0x65) and mode in (ZERO, INT, FRACTION):
            return (EXP_MARK, stack, 0)
        return self.step(self._after(stack), byte)  # the number ended before this byte

    def run(self, state: State | None, data: bytes) -> State | None:
        for byte in data:
            if state is None:
                return None
            state = self.step(state, byte)
        return state

    def accepts(self, text: str) -> bool:
        """A whole text: one complete document (the automaton's judgement of a finished text)."""
        return complete(self.run(INITIAL, text.encode()))

    def next_char(self, state: State) -> str | None:
        """The first character of the shortest way to complete the document (None: complete)."""
        mode, stack, aux = state
        if mode in (STRING, KEY, COLON) or mode == LITERAL:
            return '"' if mode != COLON and mode != LITERAL else (":" if mode == COLON else aux[0])
        if mode in (VALUE, MINUS, DOT, EXP_MARK, EXP_SIGN, UNICODE):
            return "0"
        if mode == ESCAPE:
            return "n"
        if mode == VALUE_OR_CLOSE:
            return "]"
        if mode == KEY_OR_CLOSE:
            return "}"
        if mode >= DONE or not stack:  # a complete top-level number, or done
            return None
        return "]" if stack[-1] == "[" else "}"  # AFTER, or a complete number inside a container


class DeepValues:
    """The syntax beside one TokenDFA whose skeleton states are `deep` (S,) bool, for one tokenizer's bytes
    (see the module docstring). Pickled with the DFA; the per-tokenizer tables are found again by the
    tokenizer the search decodes with."""

    def __init__(self, deep: np.ndarray, whitespace: str, fingerprint: str, vocab_size: int) -> None:
        self.deep, self.whitespace, self.fingerprint = deep, whitespace, fingerprint
        self._vocab_size = vocab_size
        self.syntax = JsonSyntax(whitespace)
        self._walks: dict[tuple[int, State], tuple[int, int]] = {}
        self._by_class: tuple[np.ndarray, np.ndarray] | None = None  # the DFA's tokens sorted by class
        self._touches: np.ndarray | None = None  # `touches`, once looked up
        self.tokens: TokenBytes | None = None  # set by the compiler (shared per tokenizer, not pickled)
        self.checked: dict[tuple[int, int], bool] = {}  # pc_core.preparation._deep_values_hold, by horizon

    def __getstate__(self) -> dict:
        return {"deep": self.deep, "whitespace": self.whitespace, "fingerprint": self.fingerprint,
                "vocab_size": self._vocab_size}  # fmt: skip

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["deep"], state["whitespace"], state["fingerprint"], state["vocab_size"])

    @property
    def nbytes(self) -> int:
        # the flags (and `touches`), at most the memoised walks, and the tokens by class (int64, once looked up)
        return 2 * int(self.deep.nbytes) + WALKS_KEPT * 160 + 16 * self._vocab_size

    def vocab(self) -> TokenBytes:
        """The tokenizer's bytes: those it was compiled with (not pickled), else the process's cache."""
        found = self.tokens if self.tokens is not None else TOKEN_BYTES.get(self.fingerprint)
        if found is None:
            raise LookupError(
                "the tokenizer's bytes are not loaded: call json_syntax.token_bytes_for(tokenizer)"
            )
        return found

    def touches(self, dfa: Any) -> np.ndarray:
        """(S,) bool: the states that are deep or where a token leads into a deep state (computed once per
        DFA, not per search: an (S, C) gather)."""
        if self._touches is None:
            self._touches = self.deep | self.deep[dfa.transitions].any(axis=1)
        return self._touches

    def exact_part(self, dfa: Any, vocab: TokenBytes) -> Any:
        """The automaton without its deep values: edges into skeleton states, and classes made only of tokens
        that may pass through one, lead to a dead state (appended). Its feasibility on the exact states is
        what decoding can always achieve without the syntax's say (pc_core.preparation checks that the
        guide's equals it)."""
        import dataclasses

        pure = np.ones(dfa.num_classes, bool)  # classes made only of tokens that may pass through a skeleton
        pure[dfa.token_class[~vocab.is_through]] = False
        sink = dfa.num_states
        drop = self.deep[dfa.transitions] | (~self.deep[:, None] & pure[None, :])
        transitions = np.vstack([np.where(drop, sink, dfa.transitions), np.full(dfa.num_classes, sink)])
        return dataclasses.replace(
            dfa,
            transitions=transitions.astype(np.int32),
            accepting=np.append(dfa.accepting, False),
            ended=np.append(dfa.ended, False),
            deep_values=None,
        )

    def exact_ways(self, dfa: Any, vocab: TokenBytes) -> bool:
        """Whether every exact state's fewest tokens to an accepting state are as few without the deep values
        (`exact_part`): the compiler's early test, for any horizon; pc_core.preparation checks the
        feasibility table itself, per horizon and minimum length."""
        exact = ~self.deep
        plain = self.exact_part(dfa, vocab).steps_to_accept[: dfa.num_states]
        return bool(np.array_equal(dfa.steps_to_accept[exact], plain[exact]))

    def start(self) -> State:
        return INITIAL

    def advance(self, syntax: State | None, token: int, vocab: TokenBytes | None = None) -> State | None:
        data = (vocab or self.vocab()).data
        return None if syntax is None else self.syntax.run(syntax, data[token])

    def text_ok(self, token_ids: list[int], eos: int) -> bool:
        """The syntax's judgement of a finished token sequence (up to the first EOS)."""
        data = self.vocab().data
        end = token_ids.index(eos) if eos in token_ids else len(token_ids)
        return complete(self.syntax.run(INITIAL, b"".join(data[t] for t in token_ids[:end])))

    def blocked(
        self,
        dfa: Any,
        vocab: TokenBytes,
        dfa_state: int,
        syntax: State,
        left: int,
        feasible: np.ndarray,
        looks: dict,
    ) -> np.ndarray:
        """Token ids to set to -inf for a beam in (automaton state, syntax state) with `left` tokens after
        this one: the syntax refuses them, or their document could not be finished in time (feasible: (n + 1,
        S) bool). `looks`: the caller's memo of `look` (a search keeps one, bounded by LOOKS_KEPT)."""
        look = looks.get((dfa_state, syntax))
        if look is None:
            if len(looks) >= LOOKS_KEPT:
                looks.clear()
            look = looks[(dfa_state, syntax)] = self.look(dfa, vocab, dfa_state, syntax)
        refused, tokens, group, pairs = look
        if not pairs:
            return refused
        ok = np.array([self._finishes(dfa, vocab, s, after, left, feasible) for s, after in pairs])
        return np.concatenate([refused, tokens[~ok[group]]]) if not ok.all() else refused

    def look(
        self, dfa: Any, vocab: TokenBytes, dfa_state: int, syntax: State
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, State]]]:
        """What the syntax says of the tokens that need a look from this state (those entering, leaving or
        passing through a skeleton, and not dead in the automaton): (refused ids, the other ids, the group
        of each, the groups' (automaton successor, syntax state) pairs, whose completion bound `blocked`
        checks per step)."""
        row = dfa.transitions[dfa_state]  # (C,)
        if self.deep[dfa_state]:
            cand = np.arange(dfa.vocab_size)
        else:  # tokens that enter a skeleton, or may pass through one
            if self._by_class is None:
                order = np.argsort(dfa.token_class, kind="stable")
                self._by_class = (
                    order,
                    np.searchsorted(dfa.token_class[order], np.arange(dfa.num_classes + 1)),
                )
            order, bounds = self._by_class
            parts = [order[bounds[c] : bounds[c + 1]] for c in np.flatnonzero(self.deep[row]).tolist()]
            cand = np.unique(np.concatenate([*parts, vocab.through]))
        succ = row[dfa.token_class[cand]]
        keep = (dfa.steps_to_accept[succ] >= 0) & (cand != dfa.eos_token_id)  # EOS: the automaton decides
        cand, succ = cand[keep], succ[keep]
        if syntax[0] == STRING:  # plain string content leaves the syntax as it is
            simple = vocab.plain_in_string[cand]
        else:  # outside strings: only tokens whose first byte the syntax takes are run
            simple = np.zeros(len(cand), bool)
            firsts = np.array([self.syntax.step(syntax, b) is not None for b in range(256)] + [True])
            hopeless = ~firsts[vocab.first[cand]]
        pairs: dict[tuple[int, State], int] = {}
        group = np.full(len(cand), -1, np.int64)
        for s in np.unique(succ[simple]).tolist():
            group[simple & (succ == s)] = pairs.setdefault((s, syntax), len(pairs))
        run = np.flatnonzero(~simple if syntax[0] == STRING else ~hopeless)
        for i, after in zip(run.tolist(), self.moves(vocab, syntax, cand[run])):
            if after is not None:
                group[i] = pairs.setdefault((int(succ[i]), after), len(pairs))
        kept = group >= 0
        cand = cand.astype(np.int32)
        return cand[~kept], cand[kept], group[kept].astype(np.int32), list(pairs)

    def moves(self, vocab: TokenBytes, syntax: State, tokens: np.ndarray) -> list[State | None]:
        """The syntax state after each token (None: refused), memoised per tokenizer."""
        cache, out = vocab.moves, []
        for token in tokens.tolist():
            after = cache.get((syntax, token), False)
            if after is False:
                after = cache[(syntax, token)] = self.syntax.run(syntax, vocab.data[token])
            out.append(after)
        if len(cache) > MOVES_KEPT:
            cache.clear()
        return out

    def _finishes(
        self, dfa: Any, vocab: TokenBytes, state: int, syntax: State, left: int, feasible: np.ndarray
    ) -> bool:
        """Can the document still be finished in `left` tokens from (automaton state, syntax state)?"""
        if not self.deep[state]:
            return bool(feasible[left, state]) if left >= 0 else False
        key = (state, syntax)
        walk = self._walks.get(key)
        if walk is None:
            walk = self._walks[key] = self._walk_out(dfa, vocab, state, syntax)
            if len(self._walks) > WALKS_KEPT:
                self._walks.clear()
        used, out = walk
        return out >= 0 and left - used >= 0 and bool(feasible[left - used, out])

    def _walk_out(self, dfa: Any, vocab: TokenBytes, state: int, syntax: State) -> tuple[int, int]:
        """(tokens, state) where the syntax's shortest completion, as one-character tokens, leaves the
        skeleton; (0, -1) if it cannot (the automaton refuses a character: never for a skeleton)."""
        used = 0
        while self.deep[state]:
            char = self.syntax.next_char(syntax)
            token = vocab.char_token.get(char) if char is not None else None
            if token is None:
                return 0, -1
            state = int(dfa.transitions[state, dfa.token_class[token]])
            syntax = self.syntax.step(syntax, ord(char))
            used += 1
            if syntax is None or dfa.ended[state] or used > 4 * TAIL_LEVELS + 16:
                return 0, -1
        return used, state


class TokenBytes:
    """A tokenizer's token bytes as the syntax reads them: each token's bytes, which tokens are plain string
    content (no quote, backslash or control byte), and a one-character token for each character a completion
    writes."""

    COMPLETION_CHARS = '"0:]}naelrsu'

    def __init__(self, data: list[bytes], banned: np.ndarray, special: set[int]) -> None:
        self.data = data
        plain = [bool(d) and not any(b == 0x22 or b == 0x5C or b < 0x20 for b in d) for d in data]
        self.plain_in_string = np.array(plain, bool)
        self.first = np.array([d[0] if d else 256 for d in data], np.int64)  # (V,) 256: no bytes
        # an opening bracket before a closing one: the token may enter a skeleton and leave it again
        self.is_through = np.array([_opens_then_closes(d) for d in data], bool)
        self.through = np.flatnonzero(self.is_through)
        for t in special:
            self.plain_in_string[t] = False
        self.char_token: dict[str, int] = {}
        for t, d in enumerate(data):
            if len(d) == 1 and not banned[t] and t not in special:
                self.char_token.setdefault(chr(d[0]), t)
        self.moves: dict[tuple[State, int], State | None] = {}
        self.nbytes = sum(len(d) + 33 for d in data) + len(data) + MOVES_KEPT * 200  # bytes, flags, memo

    @property
    def complete(self) -> bool:
        """Whether every character a completion writes is a token of its own."""
        return all(c in self.char_token for c in self.COMPLETION_CHARS)


def _opens_then_closes(data: bytes) -> bool:
    first = min((i for i in (data.find(b"["), data.find(b"{")) if i >= 0), default=-1)
    return first >= 0 and (data.find(b"]", first) > first or data.find(b"}", first) > first)


TOKEN_BYTES: LRUCache[TokenBytes] = LRUCache("json_token_bytes", 64 * 2**20, lambda t: t.nbytes)


def token_bytes_for(tokenizer: Any) -> TokenBytes:
    """The tokenizer's TokenBytes, built once per tokenizer fingerprint."""
    from pc_core.constraints.token_bytes import token_bytes_table
    from pc_core.constraints.vocab import vocab_tables

    tables = vocab_tables(tokenizer)
    found = TOKEN_BYTES.get(tables.fingerprint)
    if found is None:
        special = set(getattr(tokenizer, "all_special_ids", ())) | {tables.eos_token_id}
        found = TokenBytes(token_bytes_table(tokenizer), np.asarray(tables.banned, bool), special)
        TOKEN_BYTES.put(tables.fingerprint, found)
    return found
