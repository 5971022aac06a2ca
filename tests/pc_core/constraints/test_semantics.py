"""What "satisfied" means (docs/method.md §3): inflections, case modes, phrase separators, Unicode. Each case is
judged twice, by the text checker and by the compiled DFA on the text's tokens (two tokenizations)."""

import unicodedata

import pytest

from pc_core import check_text, compile_constraint
from pc_core.constraints.nodes import Keyword
from pc_core.constraints.spec import parse_constraint
from pc_core.constraints.words import inflections_of
from pc_core.errors import ConstraintError


def _judged(tokenizer, spec, text):
    """(checker, DFA on the canonical tokens, DFA on one token per character) for `text`."""
    dfa = compile_constraint(spec, tokenizer)
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)
    per_char = [t for ch in text for t in encode(ch)]
    return check_text(spec, text), dfa.accepts(encode(text)), dfa.accepts(per_char)


@pytest.mark.parametrize(
    "spec, text, expected",
    [
        # inflections go forward from the word as written, from the dictionary only
        ({"keyword": "evening"}, " in the even light", False),
        ({"keyword": "evening"}, " two evenings", True),
        ({"ordered": ["morning", "evening"]}, " morning, then eVen", False),
        ({"keyword": "us"}, " it uses a pan", False),
        ({"keyword": "saw"}, " I see the dog", False),
        ({"keyword": "saw"}, " she sawed the log", True),
        ({"keyword": "left"}, " we leave", False),
        ({"keyword": "children"}, " a child runs", True),
        ({"keyword": "ran"}, " they are running", True),
        ({"keyword": "run", "pos": "noun"}, " they are running", False),
        ({"keyword": "run", "pos": "noun"}, " two runs", True),
        # case: natural by default
        ({"keyword": "coffee"}, " cOffEE time", False),
        ({"keyword": "coffee"}, " Coffee time", True),
        ({"keyword": "coffee"}, " COFFEE time", True),
        ({"keyword": "coffee"}, " coffees", True),
        ({"keyword": "coffee", "case": "any"}, " cOffEE time", True),
        ({"keyword": "Coffee", "case": "sensitive"}, " coffee time", False),
        ({"keyword": "Coffee", "case_sensitive": False}, " coffee time", True),
        ({"keywords": ["coffee", "tea"], "case": "any"}, " TeA and cOFFee", True),
        ({"forbidden": ["cat"]}, " a CAT sat", False),
        ({"forbidden": ["cat"]}, " a cAt sat", True),
        ({"forbidden": ["cat"], "case": "any"}, " a cAt sat", False),
        ({"word_at": 2, "word": "pan", "case": "any"}, " the PaN", True),
        ({"word_at": 2, "word": "pan"}, " the PaN", False),
        # separators inside a phrase are part of it; whitespace runs match whitespace runs
        ({"keyword": "well-known"}, " a well known fact", False),
        ({"keyword": "well-known"}, " a well.known fact", False),
        ({"keyword": "well-known"}, " a well-known fact", True),
        ({"keyword": "well-known"}, " a Well-Known fact", False),
        ({"keyword": "New York"}, " in New  York", True),
        ({"keyword": "New York"}, " in New\nYork", True),
        ({"keyword": "New York"}, " in New-York", False),
        ({"keyword": "rock 'n' roll"}, " they play rock 'n' roll!", True),
        ({"keyword": "rock 'n' roll"}, " they play rock n roll!", False),
        ({"keyword": "dog."}, " a dog barks", True),  # separators before / after the words do not count
    ],
)
def test_named_semantics(tokenizer, spec, text, expected):
    assert _judged(tokenizer, spec, text) == (expected, expected, expected)


def test_inflection_forms_come_from_the_dictionary():
    assert "even" not in inflections_of("evening") and "evenings" in inflections_of("evening")
    assert inflections_of("us") == ("us",) and inflections_of("its") == ("its",)
    assert inflections_of("was") == ("was",)
    assert "newses" not in inflections_of("news") and "itses" not in inflections_of("its")
    assert not {"see", "seen"} & set(inflections_of("saw"))
    assert "leave" not in inflections_of("left")
    assert {"child", "children"} <= set(inflections_of("children"))
    assert {"run", "runs", "ran", "running"} <= set(inflections_of("ran"))
    assert {"mouse", "mice"} <= set(inflections_of("mouse"))
    assert inflections_of("frisbee") == ("frisbee",)  # not in the dictionary: no rule-made plural
    assert inflections_of("big") == ("big",) and {"bigger", "biggest"} <= set(inflections_of("big", "adj"))
    assert set(inflections_of("fish", "noun")) == {"fish", "fishes"}
    assert "fishing" in inflections_of("fish", "verb")


def test_natural_case_forms():
    texts = {f.text for f in Keyword("coffee", inflections=False).forms()}
    assert texts == {"coffee", "Coffee", "COFFEE"}
    texts = {f.text for f in Keyword("New York", inflections=False).forms()}
    assert texts == {"New York", "new york", "NEW YORK"}
    texts = {f.text for f in Keyword("iPhone", inflections=False).forms()}
    assert texts == {"iPhone", "iphone", "IPhone", "IPHONE"}


def test_keywords_are_nfc_and_match_nfc_text(tokenizer):
    decomposed = "cafe\u0301"
    assert parse_constraint(decomposed) == parse_constraint("café")
    assert _judged(tokenizer, {"keyword": decomposed}, " un café noir") == (True, True, True)
    # the text is judged as generated: a decomposed é is a word character followed by a combining mark
    assert check_text({"keyword": "café"}, " un " + unicodedata.normalize("NFD", "café")) is False


@pytest.mark.parametrize("bad", ["do\u200dg", "do\x00g", "\u0301dog", "x\u0301"])
def test_keywords_with_characters_that_cannot_be_in_a_word_are_rejected(bad):
    with pytest.raises(ConstraintError) as info:
        parse_constraint({"keywords": ["cat", bad]})
    assert info.value.path == "constraint.keywords[1]"
    assert "U+" in info.value.message and repr(unicodedata.normalize("NFC", bad)) in info.value.message


@pytest.mark.parametrize(
    "spec, path",
    [
        ({"keyword": "dog", "case": "upper"}, "constraint.case"),
        ({"keyword": "dog", "pos": "adverb"}, "constraint.pos"),
        ({"keyword": "dog", "case": "any", "case_sensitive": True}, "constraint.case_sensitive"),
        ({"keywords": ["dog", {"keyword": "cat", "case": "lower"}]}, "constraint.keywords[1].case"),
    ],
)
def test_option_errors_name_the_field(spec, path):
    with pytest.raises(ConstraintError) as info:
        parse_constraint(spec)
    assert info.value.path == path


def test_case_options_apply_to_every_word_comparison():
    spec = parse_constraint({"ordered": ["a1", {"keyword": "b2", "case": "sensitive"}], "case": "any"})
    assert [k.case for k in spec.items] == ["any", "sensitive"]
    assert parse_constraint({"forbidden": ["x"], "case": "any"}).child.children[0].case == "any"
    assert parse_constraint({"word_at": 1, "word": "x", "case": "any"}).word.case == "any"


def test_forbidden_and_any_grow_linearly(big_tokenizer):
    words = "cat dog pan the run coffee new york bird fish snow lake".split()
    sizes = {}
    for kind in ("forbidden", "any"):
        for n in (4, 8, 12):
            spec = {kind: words[:n]} if kind == "forbidden" else {"any": words[:n]}
            dfa = compile_constraint(spec, big_tokenizer, blocklist_mask=False)
            sizes[kind, n] = dfa.num_states  # sizes, not seconds: the time is a benchmark's to measure
    for kind in ("forbidden", "any"):  # the decided outcomes collapse: no 2^n growth
        assert sizes[kind, 12] < 3 * sizes[kind, 4] + 50, sizes


def test_an_unwritable_keyword_is_named(tmp_path):
    """The micro vocabulary writes "é" only as two tokens that split the character (Ã + ©): allowed since
    characters are generated at the byte level; it has no token for "z" at all."""
    from tiny_models import build_micro_tokenizer

    from pc_core.constraints.compiler import explain_unsatisfiable

    micro = build_micro_tokenizer(tmp_path)
    assert check_text({"keywords": ["dog", "é"]}, " dog é")
    dfa = compile_constraint({"keywords": ["dog", "é"]}, micro)
    assert dfa.steps_to_accept[dfa.initial_state] == 3  # "é dog": Ã © Ġdog
    assert dfa.accepts([0, 6, 11, 12]) and not dfa.accepts([0, 6, 11])
    message = explain_unsatisfiable({"keywords": ["dog", "zebra"]}, micro)
    assert "'zebra'" in message and "cannot be written" in message
    assert explain_unsatisfiable({"all": ["dog", {"not": "dog"}]}, micro) == "no text satisfies it"
