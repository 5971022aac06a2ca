"""`regex`, `pattern` and `choice`: the character automaton against Python's `re`, and the token automaton
against the independent checker (which uses `re.fullmatch` / `re.search`)."""

import random
import re

import numpy as np
import pytest
from byte_support import has_banned_token

from pc_core import check_ids, compile_constraint, parse_constraint
from pc_core.constraints.char_dfa import build_char_dfa
from pc_core.constraints.regex import parse_regex
from pc_core.errors import ConstraintError

PATTERNS = [
    r"a|b",
    r"[a-c]+x?",
    r"\d{2,4}",
    r"(ab|cd)*e",
    r"^a.b$",
    r"a$",
    r"\w+\s\w+",
    r"[^a]*",
    r"(a|)+b",
    r"x{0,3}y{2}",
    r"(?:é|e)\W?",
    r"[\d_-]+(\.\d+)?",
    r"(?s)a.*b",
    r"a*?b+?",
    r"\Aab\Z",
    r"(a|b)*a(a|b){3}",  # the classic DFA blow-up (2^4 states)
    r"[^\n\d]{1,3}",
    r"\S\D",
    r"x|^y|z$",
]
ALPHABET = "abcdexy0129 _-.\n\té€"


def _strings(rng, n=1500):
    out = ["", "a", "ab", "a\n", "\n", "aaab", "yy", "abab", "1.5", "é"]
    for _ in range(n):
        out.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 7))))
    return out


@pytest.mark.parametrize("search", [False, True])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_char_automaton_agrees_with_re(pattern, search):
    dfa = build_char_dfa(parse_regex(pattern, "r", search), "r")
    rng = random.Random(hash(pattern) % 1000)
    for text in _strings(rng):
        expected = bool((re.search if search else re.fullmatch)(pattern, text))
        assert dfa.accepts(text) == expected, (pattern, search, text)


def test_unicode_classes_follow_python():
    for pattern in (r"\d", r"\w", r"\s", r"\D", r"\W", r"\S", r"."):
        dfa = build_char_dfa(parse_regex(pattern, "r"), "r")
        for cp in list(range(0, 0x3000, 7)) + [0x0660, 0x00A0, 0x2028, 0x3000, 0x1D7CE, 0x10FFFF]:
            ch = chr(cp)
            assert dfa.accepts(ch) == bool(re.fullmatch(pattern, ch)), (pattern, hex(cp))


@pytest.mark.parametrize(
    "pattern, construct",
    [
        (r"(a)\1", "backreferences"),
        (r"a(?=b)", "lookahead"),
        (r"(?<!a)b", "lookbehind"),
        (r"\bword\b", "word boundaries"),
        (r"(?i)abc", "ignore case"),
        (r"(?m)^a", "multiline"),
        (r"(a)?(?(1)b|c)", "conditional"),
        (r"(?>ab)", "atomic"),
        (r"[", "invalid regular expression"),
    ],
)
def test_unsupported_constructs_are_named(pattern, construct):
    with pytest.raises(ConstraintError) as err:
        parse_constraint({"all": [{"regex": pattern}]})
    assert err.value.path == "constraint.all[0].regex"
    assert construct in err.value.message


def test_choice_and_canonical_forms():
    node = parse_constraint({"choice": ["yes", "no", "yes"]})
    assert node.to_json() == {"choice": ["no", "yes"]}
    assert parse_constraint({"pattern": "a+"}).to_json() == {"pattern": "a+"}
    with pytest.raises(ConstraintError, match=r"constraint.choice\[1\]"):
        parse_constraint({"choice": ["a", 3]})


SPECS = [
    {"regex": r"[a-z]+( [a-z]+)*\."},
    {"regex": r"(dog|cat)s? \d+"},
    {"pattern": r"\d\d"},
    {"choice": ["yes", "no", "maybe not"]},
    {"not": {"pattern": "dog"}},
    {"all": [{"regex": r"[a-z ]+"}, {"keyword": "dog"}]},
    {"all": [{"pattern": "cat"}, {"word_count": {"min": 2, "max": 4}}]},
    {"any": [{"choice": ["a dog"]}, {"regex": r"\d+"}]},
]
TEXTS = ["dog", "cat 12", "dogs 3", "a dog.", "yes", "no", "maybe not", "maybe", "the cat sat", "12", "a1 2",
         "the dog ran.", "cat", "a dog", "x"]  # fmt: skip


def _sequences(tokenizer, seed):
    rng = random.Random(seed)
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    out = []
    for text in TEXTS:
        out.append(encode(text))
        i = rng.randint(0, len(text))
        out.append(encode(text[:i]) + encode(text[i:]))
    for _ in range(60):
        out.append([rng.randrange(len(tokenizer)) for _ in range(rng.randint(0, 5))])
    return out


@pytest.mark.parametrize("index", range(len(SPECS)))
def test_token_automaton_agrees_with_checker(tokenizer, index):
    spec = SPECS[index]
    dfa = compile_constraint(spec, tokenizer)
    for ids in _sequences(tokenizer, index):
        expected = check_ids(spec, tokenizer, ids) and not has_banned_token(tokenizer, ids)
        assert dfa.accepts(ids) == expected, (spec, ids, tokenizer.decode(ids))


def test_suffix_and_stop_compose(tokenizer):
    from pc_core.constraints import with_affixes

    for spec in (
        with_affixes({"regex": r"[a-z ]+"}, stop=("\n",)),
        with_affixes({"choice": ["yes", "no"]}, suffix="."),
    ):
        dfa = compile_constraint(spec, tokenizer)
        for ids in _sequences(tokenizer, 7) + [tokenizer.encode("yes.", add_special_tokens=False)]:
            expected = check_ids(spec, tokenizer, ids) and not has_banned_token(tokenizer, ids)
            assert dfa.accepts(ids) == expected, (spec, tokenizer.decode(ids))


def test_shortest_text_in_tokens(tokenizer):
    dfa = compile_constraint({"regex": r"\d{6}"}, tokenizer)
    assert 0 < dfa.steps_to_accept[dfa.initial_state] <= 6
    assert not compile_constraint({"choice": ["yes"]}, tokenizer).accepts([])


@pytest.mark.parametrize("pattern", [r'"(ab|c)*"x|[a-c]{2,3}\d?', r'\{"k":"[^"\\]*"(,"n":\d+)?\}'])
def test_run_sparse_walks_every_live_pair_like_a_plain_loop(pattern):
    """char_tokens.run_sparse (the token compile's inner walk: pairs built with array operations, sequences
    that only loop on their state not walked) against a plain loop over states, first columns and sequences:
    the same (state row, sequence, end state) triples, sequences with a dead first character or dying on the
    way left out; without the staying pairs, those and the listed staying sequences together. Sequences drawn mostly from a few columns, so that many stay in a
    looping state (inside the string, in the digits)."""
    from pc_core.constraints.char_tokens import SequenceIndex, run_sparse

    dfa = build_char_dfa(parse_regex(pattern, "regex"), "regex")
    rng = random.Random(0)
    columns = dfa.trans.shape[1]
    common = rng.sample(range(columns), min(3, columns))
    lengths = np.array([rng.randint(1, 5) for _ in range(300)])
    matrix = np.full((300, 5), -1, np.int32)
    for i, n in enumerate(lengths):
        matrix[i, :n] = [
            rng.choice(common) if rng.random() < 0.8 else rng.randrange(columns) for _ in range(n)
        ]
    matrix = np.vstack([matrix, np.full((1, 5), -1, np.int32)])  # and an empty sequence, never paired
    lengths = np.append(lengths, 0)
    dead = min(dfa.dead) if dfa.dead else -1
    states = np.arange(dfa.num_states)
    want = []
    for i, s in enumerate(states.tolist()):
        for c in range(columns):
            if dfa.trans[s, c] == dead:
                continue
            for q in np.flatnonzero(matrix[:, 0] == c).tolist():
                cur = s
                for pos in range(lengths[q]):
                    cur = int(dfa.trans[cur, matrix[q, pos]])
                    if cur == dead:
                        break
                if cur != dead:
                    want.append((i, q, cur))
    index = SequenceIndex(matrix, columns)
    row, seq, end, stayed = run_sparse(dfa, states, matrix, lengths, index)
    assert sorted(zip(row.tolist(), seq.tolist(), end.tolist())) == sorted(want)
    assert stayed  # some states loop (the string, the digits, the dead state excluded)
    # without the staying pairs: the same triples less those, which `stayed` lists per loop set
    row, seq, end, again = run_sparse(dfa, states, matrix, lengths, index, staying=False)
    stays = {
        (r, q, int(states[r]))
        for rows, inside in again
        for r in rows.tolist()
        for q in np.flatnonzero(inside).tolist()
    }
    assert sorted(set(zip(row.tolist(), seq.tolist(), end.tolist())) | stays) == sorted(want)
    assert not stays & set(zip(row.tolist(), seq.tolist(), end.tolist()))
    assert want and len(want) < dfa.num_states * len(matrix)  # some pairs live, some dead
