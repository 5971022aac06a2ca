"""Infilling (a suffix after the span), stop strings and `ends_with`: the guide against brute-force
enumeration, the DFA against the independent checker (checker.judge_ids), decoding end to end, and bad inputs.

The micro vocabulary (tests/tiny_models.py): 0 " dog", 1 " cat", 2 " the", 3 " pan", 4 "dog", 5 "s", 6 " ", 7 ".",
8 " do", 9 "g", 10 " cats", 11 "Ã" and 12 "©" (the two halves of "é", banned), 13 EOS. " dogs." can be written
as " dog"+"s"+".", " do"+"g"+"s"+"." or " "+"dog"+"s"+".", and " dog" can carry the end of a span " d"
followed by a suffix "og.".
"""

import itertools
import random

import numpy as np
import pytest
from brute_force_guide import Brute, _close
from byte_support import has_banned_token
from tiny_models import build_micro_tokenizer, random_text

from pc_core import compile_constraint
from pc_core.constraints.checker import check_ids, check_text, decode_continuation, judge_ids, judge_text
from pc_core.constraints.nodes import Affixed
from pc_core.constraints.spec import MAX_AFFIX_CHARS, MAX_SUFFIX_CHARS, parse_constraint, with_affixes
from pc_core.decoding import generate
from pc_core.errors import ConstraintError, UnsatisfiableConstraint
from pc_core.guide import ConstraintGuide
from pc_core.hmm import HMM
from pc_core.infill import split_suffix
from pc_core.params import DecodeParams, DecodingError


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return build_micro_tokenizer(tmp_path_factory.mktemp("micro"))


def expected(tokenizer, constraint, ids, min_new_tokens=0) -> bool:
    """The definition the DFA and the guide must follow: the checker's judgement, and no banned token up to
    the token that ended the generation (none may end it before `min_new_tokens` tokens)."""
    found = judge_ids(constraint, tokenizer, ids)
    cut = ids if found.reason == "length" else ids[: found.end + 1]
    if found.reason != "length" and found.end < min_new_tokens:
        return False
    return found.satisfied and not has_banned_token(
        tokenizer, [t for t in cut if t != tokenizer.eos_token_id]
    )


class AffixBrute(Brute):
    """Brute with the suffix / stop strings: a sequence counts when its generation ended accepted."""

    def _ok(self, ids):
        return expected(self.tok, self.spec, ids, self.min_new)


# ------------------------------------------------------------------------------------------ the checker


@pytest.mark.parametrize(
    "spec, text, suffix, stop, satisfied, span",
    [
        ({"keywords": ["dog"]}, " a dog.", ".", (), True, " a dog"),
        (
            {"keywords": ["dog"]},
            " a cat. a dog.",
            ".",
            (),
            True,
            " a cat. a dog",
        ),  # the first "." does not count
        ({"keywords": ["dog"]}, " a dog. more", ".", (), False, " a dog"),  # the text went past the suffix
        ({"keywords": ["dog"]}, " a dog", ".", (), False, " a dog"),  # no suffix: not finished
        ({"word_count": {"max": 1}}, " dog", "og", (), True, " d"),  # the span is judged on its own text
        ({"keywords": ["dog"]}, " the dog. Then", None, (".",), True, " the dog"),
        ({"keywords": ["dog"]}, " the. dog", None, (".",), False, " the"),
        (
            {"keywords": ["dog"]},
            " dog ab",
            None,
            ("b", "ab"),
            True,
            " dog ",
        ),  # both end at "b": cut before "ab"
        ({"keywords": ["dog"]}, " dog abc", None, ("abc", "b"), True, " dog a"),  # "b" ends first
        ({"word_count": {"min": 0}}, " xgs.", "s.", ("gs",), False, " x"),  # a stop across the junction
        ({"ends_with": "!"}, " wow!", None, (), True, " wow!"),
        ({"not": {"ends_with": "!"}}, " wow!", None, (), False, " wow!"),
        ({"all": [{"ends_with": "g"}, "dog"]}, " dogs.", "s.", (), True, " dog"),
    ],
)
def test_judge_text_semantics(spec, text, suffix, stop, satisfied, span):
    found = judge_text(spec, text, suffix=suffix, stop=stop)
    assert (found.satisfied, found.text) == (satisfied, span), found
    assert check_text(spec, text, suffix=suffix, stop=stop) == satisfied
    assert check_text(with_affixes(spec, suffix, stop), text) == satisfied


def test_judge_ids_finds_the_token_that_ended_the_generation(micro):
    ids = [1, 0, 5, 7, 2, 13]  # " cat dogs. the" EOS
    found = judge_ids({"keywords": ["cat"]}, micro, ids, suffix=" dogs.")
    assert (found.satisfied, found.reason, found.end, found.text) == (True, "suffix", 3, " cat")
    assert found.full_text == " cat dogs."
    found = judge_ids({"keywords": ["cat"]}, micro, ids, stop=["s"])
    assert (found.satisfied, found.reason, found.end, found.text) == (True, "stop", 2, " cat dog")
    found = judge_ids({"keywords": ["cat"]}, micro, [1, 2], suffix=".")
    assert (found.satisfied, found.reason, found.end) == (False, "length", 2)
    assert check_ids({"keywords": ["cat"]}, micro, [1, 7], suffix=".")


# ------------------------------------------------------------------------------------------ the guide

GUIDE_CASES = [
    # (spec, suffix, stop, horizon, min_new_tokens, prefixes)
    ({"keywords": ["cat"]}, " dogs.", (), 4, 0, [[1], [1, 8], [1, 0], [1, 6], [0]]),
    ({"keywords": ["cat"]}, " dogs.", (), 5, 0, [[1, 8], [1, 6], [1, 0, 5]]),  # " do"+"g"+"s"+"." fits in 5
    ({"word_count": {"max": 1}}, "og.", (), 3, 0, [[], [0], [8]]),  # " dog" straddles the junction
    ({"keywords": ["cat"]}, None, (".", "s"), 3, 0, [[], [1], [10]]),
    ({"ends_with": "g"}, None, (), 3, 0, [[], [8], [4]]),
    ({"all": [{"ends_with": "s"}, "dog"]}, ".", (" the",), 3, 0, [[], [0], [8, 9]]),
    ({"word_count": {"min": 1}}, ".", (), 4, 2, [[], [0]]),
    ({"word_count": {"min": 0}}, "s.", ("gs",), 3, 0, [[], [8], [4]]),  # a stop string across the junction
    ({"any": ["pan", {"ends_with": "."}]}, None, ("the",), 3, 0, [[], [3]]),
]


@pytest.mark.parametrize("case", GUIDE_CASES, ids=[str(i) for i in range(len(GUIDE_CASES))])
def test_guide_matches_brute_force(micro, case):
    spec, suffix, stop, horizon, min_new, prefixes = case
    constraint = with_affixes(spec, suffix, stop)
    dfa = compile_constraint(constraint, micro)
    for h in (2, 3):
        hmm = HMM.random(h, len(micro), seed=h * 11 + horizon, eos_token_id=micro.eos_token_id)
        guide = ConstraintGuide(hmm, dfa, horizon=horizon, min_new_tokens=min_new)
        brute = AffixBrute(hmm, micro, constraint, horizon, min_new_tokens=min_new)
        for prefix in prefixes:
            _close(guide.log_prob(prefix).item(), brute.log_prob(prefix))
            _close(guide.next_log_probs(prefix).numpy(), brute.next_log_probs(prefix))


def test_every_tokenisation_of_the_suffix_counts(micro):
    """ " dogs." after " cat": " dog"+"s"+".", " do"+"g"+"s"+"." and " "+"dog"+"s"+"." all finish the text;
    the guide sums all of them (the brute force above) and allows each first token."""
    constraint = with_affixes({"keywords": ["cat"]}, " dogs.")
    dfa = compile_constraint(constraint, micro)
    for ids in ([1, 0, 5, 7], [1, 8, 9, 5, 7], [1, 6, 4, 5, 7], [10, 2, 0, 5, 7]):
        assert dfa.accepts(ids), micro.decode(ids)
    for ids in ([1, 0, 5], [1, 0, 5, 7, 13], [1, 13], [0, 5, 7]):
        assert dfa.accepts(ids) == expected(micro, constraint, ids)
    assert not dfa.accepts([1, 0, 5]) and dfa.accepts([1, 0, 5, 7, 13])  # the text ended at ".", EOS ignored
    hmm = HMM.random(3, len(micro), seed=4, eos_token_id=micro.eos_token_id)
    q = ConstraintGuide(hmm, dfa, horizon=5).next_log_probs([1]).numpy()
    assert np.isfinite(q[[0, 8, 6]]).all() and np.isneginf(q[[micro.eos_token_id, 11]]).all()


def test_hmm_context_with_a_suffix_matches_brute_force(micro):
    constraint = with_affixes({"keywords": ["dog"]}, ".", ("the",))
    dfa = compile_constraint(constraint, micro)
    hmm = HMM.random(4, len(micro), seed=5, eos_token_id=micro.eos_token_id)
    guide = ConstraintGuide(hmm, dfa, horizon=3)
    context = [2, 3, 7]
    brute = AffixBrute(hmm, micro, constraint, 3, context=context)
    state = guide.init_state(1, hmm_context=context)
    _close(guide.log_prob(state)[0].item(), brute.log_prob([]))
    _close(guide.next_log_probs(state)[0].numpy(), brute.next_log_probs([]))


# ------------------------------------------------------------------------------------------ DFA vs checker

AFFIX_CASES = [
    # (spec, suffix, stop, a span that satisfies the constraint, for the adversarial texts)
    ({"keywords": ["dog"]}, " in the park.", (), " the dog"),
    ({"keywords": ["dog"]}, "s and cats", (), " dog"),  # starts inside a word: the junction is mid-token
    ({"word_count": {"min": 2, "max": 4}}, ".", ("\n",), " a b c"),
    ({"keywords": ["cat"]}, None, (".", " the"), " a cat"),
    ({"all": ["frisbee", {"ends_with": "."}]}, None, (), " frisbee."),
    ({"any": [{"ends_with": "!"}, {"keywords": ["pan", "coffee"]}]}, " the", ("dog",), " coffee and pan"),
    ({"not": {"ends_with": " "}}, None, ("\n\n", "ca"), " x"),
    ({"ordered": ["the", "dog"]}, "og", ("z",), " the dog"),
    ({"forbidden": ["cat", "dog", "pan", "the"]}, " the end", (), " a"),  # the blocklist stays in the product
    ({"word_count": {"max": 3}}, "dog", ("dogs",), " a"),
    ({"keyword": "New York", "inflections": False}, " is big.", (), " New York"),
]
WORDS = ["dog", "dogs", "cat", "cats", "the", "pan", "frisbee", "New", "York", "coffee", "park", "in", "og", "a",
         "end", "ca", "café", "日本"]  # fmt: skip
SEPARATORS = [" ", " ", ". ", ".", "!", "\n", "\n\n", ", ", "😀", " - "]


def _texts(rng, suffix, stop, example):
    """Random texts, and adversarial ones: a satisfying span, the suffix or a stop string where the constraint
    fails first, twice, with something after it, cut short."""
    base = random_text(rng, WORDS, SEPARATORS)
    out = [base, example, base + example]
    pieces = ([suffix] if suffix else []) + list(stop)
    for piece in pieces:
        other = random_text(rng, WORDS, SEPARATORS)
        out += [base + piece, base + piece + other, other + piece + base + piece, (base + piece)[:-1]]
        out += [example + piece, base + example + piece + rng.choice(SEPARATORS), piece + example + piece]
    return out


def _sequences(tokenizer, case, seed, n_text, n_random):
    _, suffix, stop, example = case
    rng = random.Random(seed)
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)
    eos, vocab = tokenizer.eos_token_id, len(tokenizer)
    seqs = []
    for _ in range(n_text):
        for text in _texts(rng, suffix, stop, example):
            seqs.append(encode(text))
            if len(text) > 2:  # split at random places: tokens that straddle the junction, or do not
                i, j = sorted(rng.sample(range(1, len(text)), 2))
                seqs.append(encode(text[:i]) + encode(text[i:j]) + encode(text[j:]))
            if rng.random() < 0.3:
                seqs.append(encode(text) + [eos] + [rng.randrange(vocab) for _ in range(2)])
    for _ in range(n_random):
        seqs.append([rng.randrange(vocab) for _ in range(rng.randint(0, 8))])
    return seqs


def _agree(tokenizer, spec, suffix, stop, seqs):
    constraint = with_affixes(spec, suffix, stop)
    dfa = compile_constraint(constraint, tokenizer)
    wrong, accepted = [], 0
    for ids in seqs:
        want = expected(tokenizer, constraint, ids)
        accepted += want
        if dfa.accepts(ids) != want:
            wrong.append((ids, tokenizer.decode(ids), want))
    assert not wrong, wrong[:5]
    return accepted


@pytest.mark.parametrize("case", AFFIX_CASES[:6], ids=[str(i) for i in range(6)])
def test_dfa_agrees_with_checker_on_every_short_micro_sequence(micro, case):
    spec, suffix, stop, _ = case
    micro_cases = {" in the park.": " dogs.", "s and cats": "gs."}  # suffixes the micro vocabulary can write
    suffix = micro_cases.get(suffix, suffix)
    seqs = [list(ids) for n in range(4) for ids in itertools.product(range(len(micro)), repeat=n)]
    rng = random.Random(0)
    seqs += [[rng.randrange(len(micro)) for _ in range(rng.randint(4, 8))] for _ in range(400)]
    _agree(micro, spec, suffix, stop, seqs)


@pytest.mark.parametrize("case", AFFIX_CASES, ids=[str(i) for i in range(len(AFFIX_CASES))])
def test_dfa_agrees_with_checker(tokenizer, case):
    spec, suffix, stop, _ = case
    assert _agree(tokenizer, spec, suffix, stop, _sequences(tokenizer, case, len(str(case)), 30, 60)) > 0


@pytest.mark.parametrize("case", AFFIX_CASES[:6], ids=[str(i) for i in range(6)])
def test_dfa_agrees_with_checker_on_the_big_vocabulary(big_tokenizer, case):
    spec, suffix, stop, _ = case
    assert _agree(big_tokenizer, spec, suffix, stop, _sequences(big_tokenizer, case, 7, 20, 30)) > 0


# ------------------------------------------------------------------------------------------ decoding

DECODE_WORDS = ["dog", "frisbee", "park", "snow", "coffee", "cat", "tree", "house", "lake", "field", "girl"]
SUFFIXES = [" in the park.", " and the dog ran.", "s and cats", ", said the boy.", "!", " the end", "ing."]
STOPS = [(), (), ("\n",), (".", "!"), ("o",)]
OUTPUTS: list[str] = []  # every text the decoding tests produced (the U+FFFD test reads them)


def _decode_case(index):
    rng = random.Random(index)
    keywords = rng.sample(DECODE_WORDS, rng.randint(0, 2))
    lo = rng.randint(0, 3)
    parts = [{"word_count": {"min": lo, "max": lo + rng.randint(1, 5)}}] if rng.random() < 0.6 else []
    spec = {"all": [{"keywords": keywords}] + parts} if keywords else {"all": parts or [{"word_count": {}}]}
    suffix = rng.choice(SUFFIXES) if rng.random() < 0.8 else None
    stop = rng.choice(STOPS)
    if suffix is not None:
        stop = tuple(s for s in stop if s not in suffix)
    prompt = random_text(rng, DECODE_WORDS + ["the", "a"], [" ", ". "]).strip() or "The"
    return spec, suffix, stop, prompt


@pytest.mark.parametrize("index", range(32))
def test_every_output_is_span_plus_suffix_and_satisfies_the_constraint(tiny_lm, tokenizer, tiny_hmm, index):
    spec, suffix, stop, prompt = _decode_case(index)
    max_new = 24
    kwargs = {"num_beams": 3, "num_return_sequences": 2} if index % 2 else {"do_sample": True, "seed": index,
                                                                            "num_return_sequences": 2}  # fmt: skip
    out = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt=prompt, max_new_tokens=max_new, suffix=suffix,
                   stop=stop, hmm_context_tokens=4, **kwargs)  # fmt: skip
    assert len(out.sequences) == 2
    for seq in out.sequences:
        generated = decode_continuation(tokenizer, seq.token_ids)
        OUTPUTS.extend([seq.text, seq.full_text, generated])
        assert len(seq.token_ids) <= max_new
        assert seq.constraint_satisfied, seq
        assert check_text(spec, seq.text), seq.text  # the independent checker, on the span alone
        for s in stop:
            assert s not in seq.text, (s, seq.text)
        if suffix is not None:
            junction = split_suffix(suffix)[0]  # the LM writes the suffix's first word; the rest is attached
            assert seq.full_text == seq.text + suffix
            assert generated == seq.text + junction, (generated, seq.text)  # the text ends with the junction
            assert seq.finish_reason == "eos" and tokenizer.eos_token_id not in seq.token_ids
            assert check_ids(spec, tokenizer, seq.token_ids, suffix=junction, stop=stop)
        elif seq.finish_reason == "stop":
            assert any(generated.startswith(seq.text + s) for s in stop), (generated, seq.text)
        else:
            assert seq.finish_reason in ("eos", "length") and generated == seq.text
    if suffix is not None:
        assert all(s.full_text == s.text + suffix for s in out.sequences)


def test_stop_strings_end_the_text_where_the_constraint_can_hold(tiny_lm, tokenizer, tiny_hmm):
    """With " " as a stop string the whole span is one run without spaces: the guide keeps the LM away from a
    space until "dog" is written (a stop before it would fail the constraint)."""
    for kwargs in (
        {"num_beams": 4, "num_return_sequences": 2},
        {"do_sample": True, "seed": 3, "num_return_sequences": 3},
    ):
        out = generate(tiny_lm, tokenizer, tiny_hmm, {"keywords": ["dog"]}, prompt="The", max_new_tokens=10,
                       stop=[" ", "\n"], **kwargs)  # fmt: skip
        for seq in out.sequences:
            OUTPUTS.append(seq.text)
            assert seq.constraint_satisfied and check_text({"keywords": ["dog"]}, seq.text)
            assert " " not in seq.text and "\n" not in seq.text
            assert seq.finish_reason in ("stop", "eos", "length")


def test_streaming_reassembles_the_span(tiny_lm, tokenizer, tiny_hmm):
    for kwargs in ({"num_beams": 3}, {"do_sample": True, "seed": 1, "num_return_sequences": 2}):
        for affixes in ({"suffix": " in the park."}, {"stop": ["."]}, {"suffix": "s.", "stop": ["\n"]}):
            events = []
            out = generate(tiny_lm, tokenizer, tiny_hmm, {"keywords": ["dog"]}, prompt="The", max_new_tokens=14,
                           on_stream=events.append, **affixes, **kwargs)  # fmt: skip
            for index, seq in enumerate(out.sequences):
                assert "".join(e.text for e in events if e.index == index) == seq.text
                OUTPUTS.append(seq.text)


def test_no_output_contains_a_replacement_character(tiny_lm, tokenizer, tiny_hmm):
    """Generations after prompts with characters the tokenizer can only write with split (banned) tokens, and
    eight of the decoding cases above (suffixes, stop strings, beams and sampling): valid text, never U+FFFD.
    Self-contained: it makes every text it needs (and also reads what the tests above produced, when they ran
    first in this process)."""
    texts = []
    for prompt in ("Ж😀", "日本 café €", "\ufffd"):
        out = generate(tiny_lm, tokenizer, tiny_hmm, {"keywords": ["dog"]}, prompt=prompt, max_new_tokens=12,
                       suffix="😀.", do_sample=True, seed=0, num_return_sequences=3)  # fmt: skip
        texts.extend(s.full_text for s in out.sequences)
        texts.extend(decode_continuation(tokenizer, s.token_ids) for s in out.sequences)
    for index in range(8):
        spec, suffix, stop, prompt = _decode_case(index)
        kwargs = {"num_beams": 3} if index % 2 else {"do_sample": True, "seed": index}
        out = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt=prompt, max_new_tokens=16, suffix=suffix,
                       stop=stop, num_return_sequences=2, **kwargs)  # fmt: skip
        for s in out.sequences:
            texts.extend([s.text, s.full_text or s.text, decode_continuation(tokenizer, s.token_ids)])
    assert len(texts) == 3 * 3 * 2 + 8 * 2 * 3
    assert not [text for text in texts + OUTPUTS if "\ufffd" in text]


# ------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"suffix": ""}, "suffix"),
        ({"suffix": "x" * (MAX_SUFFIX_CHARS + 1)}, "suffix"),
        ({"suffix": 3}, "suffix"),
        ({"suffix": "a\ufffd"}, "suffix"),
        ({"suffix": "a\ud800"}, "suffix"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["y" * (MAX_AFFIX_CHARS + 1)]}, "stop"),
        ({"stop": [str(i) for i in range(17)]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"stop": 1}, "stop"),
        ({"stop": ["the"], "suffix": " the end"}, "stop"),
    ],
)
def test_bad_parameters_name_the_field(kwargs, field):
    with pytest.raises(DecodingError) as info:
        DecodeParams(**kwargs)
    assert info.value.field == field


def test_stop_is_normalised():
    assert DecodeParams(stop=".").stop == (".",)
    assert DecodeParams(stop=["b", "a", "b"]).stop == ("a", "b")
    assert DecodeParams().stop == () and DecodeParams().suffix is None


@pytest.mark.parametrize(
    "spec, path",
    [
        ({"ends_with": ""}, "constraint.ends_with"),
        ({"ends_with": 5}, "constraint.ends_with"),
        ({"ends_with": "x" * (MAX_AFFIX_CHARS + 1)}, "constraint.ends_with"),
        ({"ends_with": ".", "case": "any"}, "constraint.case"),
        ({"all": [{"ends_with": "a\ufffd"}]}, "constraint.all[0].ends_with"),
    ],
)
def test_bad_ends_with(tokenizer, spec, path):
    with pytest.raises(ConstraintError) as info:
        compile_constraint(spec, tokenizer)
    assert info.value.path == path


def test_unsatisfiable_combinations_name_the_culprit(tiny_lm, tokenizer, tiny_hmm):
    cases = [
        ({"keywords": ["dog"]}, {"suffix": " catdogcatdogcatdog in the park", "max_new_tokens": 4}, "suffix",
         "at least"),  # the LM writes the first word (the junction): it alone takes more than 4 tokens
        ({"keywords": ["dog"]}, {"suffix": " Жук"}, "suffix", "cannot be written"),
        ({"keywords": ["dog"]}, {"stop": ["o", "O"]}, "stop", "contains a stop string"),
        ({"keywords": ["celebrated", "vegetable"]}, {"suffix": ".", "max_new_tokens": 2}, "constraint",
         "followed by the suffix"),
        ({"keywords": ["dog"]}, {"suffix": ".", "max_new_tokens": 1, "stop": ["x"]}, "constraint",
         "max_new_tokens=1"),
    ]  # fmt: skip
    for spec, kwargs, path, words in cases:
        with pytest.raises(UnsatisfiableConstraint) as info:
            generate(tiny_lm, tokenizer, tiny_hmm, spec, **{"max_new_tokens": 12, **kwargs})
        assert info.value.path == path and words in info.value.message, (path, info.value)


def test_tokens_constraints_cannot_take_a_suffix(tokenizer):
    with pytest.raises(ConstraintError) as info:
        compile_constraint(with_affixes({"tokens": [5, 6]}, " x"), tokenizer)
    assert info.value.path == "suffix"
    with pytest.raises(ConstraintError) as info:
        compile_constraint(with_affixes({"tokens": [5, 6]}, None, ["x"]), tokenizer)
    assert info.value.path == "stop"


def test_affixes_are_part_of_the_compiled_key(tokenizer):
    plain = compile_constraint({"keywords": ["dog"]}, tokenizer)
    with_suffix = compile_constraint(with_affixes({"keywords": ["dog"]}, "."), tokenizer)
    assert plain is not with_suffix
    assert with_suffix is compile_constraint(Affixed(parse_constraint({"keywords": ["dog"]}), "."), tokenizer)
    assert with_affixes({"keywords": ["dog"]}) == parse_constraint({"keywords": ["dog"]})


def test_cli_flags_build_the_parameters():
    from pcgen.cli import build_parser
    from pcgen.cli_generate import _decode_fields

    args = build_parser().parse_args(["generate", "--hmm", "x", "--keywords", "dog", "--num-beams", "2",
                                      "--suffix", " in the park", "--stop", ".", "--stop", "\n"])  # fmt: skip
    params = DecodeParams(**{f.name: getattr(args, f.name) for f in _decode_fields()})
    assert params.suffix == " in the park" and params.stop == ("\n", ".")
    args = build_parser().parse_args(["generate", "--hmm", "x", "--keywords", "dog", "--num-beams", "2"])
    params = DecodeParams(**{f.name: getattr(args, f.name) for f in _decode_fields()})
    assert params.suffix is None and params.stop == ()
