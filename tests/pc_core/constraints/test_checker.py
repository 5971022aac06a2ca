"""The text-level checker and the keyword spans shown to users."""

from pc_core.constraints.checker import check_text, keyword_matches


def test_check_text_basics():
    assert check_text({"keywords": ["dog", "catch"]}, "The dogs caught it.")
    assert not check_text({"keywords": ["dog", "catch"]}, "The dogma caught it.")
    assert check_text({"ordered": ["wake", "coffee"]}, "I woke up and made coffee")
    assert not check_text({"word_count": {"max": 2}}, "one two three")
    assert check_text({"tokens": [3, 4]}, "", token_ids=[1, 3, 4])


def test_keyword_matches_give_character_spans():
    text = " Dogs like a pan in new york; the dog sat."
    spec = {"all": ["dog", {"word_at": 4, "word": "pan"}, {"forbidden": ["cat"]},
                    {"keyword": "New York", "inflections": False}]}  # fmt: skip
    spans = keyword_matches(spec, text)
    assert [(m["keyword"], text[m["start"] : m["end"]]) for m in spans] == [
        ("dog", "Dogs"),
        ("pan", "pan"),
        ("New York", "new york"),
        ("dog", "dog"),
    ]
    assert keyword_matches({"forbidden": ["dog"]}, "a cat") == []
