import pytest

from pc_core.constraints.nodes import All, AnyOf, Keyword, Not, WordAt, WordCount, canonical_json
from pc_core.constraints.spec import parse_constraint
from pc_core.constraints.words import Form
from pc_core.errors import ConstraintError


def test_shorthands_normalise():
    assert parse_constraint({"keywords": ["dog", "frisbee"]}) == All((Keyword("dog"), Keyword("frisbee")))
    assert parse_constraint({"forbidden": ["cat"]}) == Not(AnyOf((Keyword("cat"),)))
    assert parse_constraint("dog") == Keyword("dog")
    nested = parse_constraint({"all": ["dog", {"word_count": {"min": 2, "max": 9}}]})
    assert nested == All((Keyword("dog"), WordCount(2, 9)))
    assert canonical_json(parse_constraint({"keywords": ["a"]})) == canonical_json(
        parse_constraint({"all": ["a"]})
    )


def test_keyword_options_and_word_at_defaults():
    kw = parse_constraint({"keyword": "New York", "inflections": False, "case_sensitive": True})
    assert kw == Keyword("New York", inflections=False, case="sensitive")
    assert kw.forms() == (Form(("New", "York"), (" ",)),)
    at = parse_constraint({"word_at": 3, "word": "pan"})
    assert at == WordAt(3, Keyword("pan", inflections=False))


def _words(keyword):
    return {f.text for f in keyword.forms()}


def test_inflections():
    assert {"run", "runs", "ran", "running"} <= _words(Keyword("run"))
    assert {"dog", "dogs"} <= _words(Keyword("dog"))
    assert _words(Keyword("frisbee", case="any")) == {"frisbee"}  # not in the dictionary: no rule-made forms
    assert "jog" in _words(Keyword("run", variants=("jog",)))
    assert _words(Keyword("Dog", case="sensitive")) >= {"Dog", "Dogs"}


@pytest.mark.parametrize(
    "spec, path, fragment",
    [
        ({"keywords": [""]}, "constraint.keywords[0]", "must not be empty"),
        ({"keywords": ["   "]}, "constraint.keywords[0]", "must not be empty"),
        ({"keywords": ["!!"]}, "constraint.keywords[0]", "no word characters"),
        ({"keywords": [3]}, "constraint.keywords[0]", "expected a string"),
        ({"keywords": "dog"}, "constraint.keywords", "expected a list"),
        ({"keywords": []}, "constraint.keywords", "at least 1"),
        (
            {"all": [{"word_at": 1, "word": "a"}, "b", {"word_at": 0, "word": "pan"}]},
            "constraint.all[2].word_at",
            ">= 1",
        ),
        ({"word_at": 2}, "constraint.word", "required"),
        ({"word_at": 2, "word": "two words"}, "constraint.word", "single word"),
        ({"word_count": {"min": 5, "max": 3}}, "constraint.word_count", "min (5) must be <= max (3)"),
        ({"word_count": {"min": -1}}, "constraint.word_count.min", ">= 0"),
        ({"word_count": 4}, "constraint.word_count", "expected an object"),
        ({"tokens": [1, "x"]}, "constraint.tokens[1]", "expected an integer"),
        ({"tokens": [True]}, "constraint.tokens[0]", "expected an integer"),
        ({"not": {"colour": "red"}}, "constraint.not", "unknown constraint kind"),
        ({"keyword": "dog", "inflection": True}, "constraint.inflection", "unexpected field"),
        ({"keyword": "dog", "inflections": "yes"}, "constraint.inflections", "true or false"),
        ({"any": [{"keyword": "x" * 101}]}, "constraint.any[0].keyword", "longer than 100"),
        ([1, 2], "constraint", "expected an object"),
        ({}, "constraint", "empty"),
    ],
)
def test_errors_name_the_path(spec, path, fragment):
    with pytest.raises(ConstraintError) as info:
        parse_constraint(spec)
    assert info.value.path == path
    assert fragment in info.value.message
    assert str(info.value).startswith(path + ": ")


def test_deep_nesting_is_rejected():
    spec = "dog"
    for _ in range(20):
        spec = {"not": spec}
    with pytest.raises(ConstraintError, match="nested"):
        parse_constraint(spec)
