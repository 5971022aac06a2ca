"""words.py: the character classes agree with `re` everywhere, the inflection cache is byte-bounded, and
keyword forms come from plain fields."""

import re

from pc_core.cache import LRUCache
from pc_core.constraints.nodes import Keyword
from pc_core.constraints.words import (
    INFLECTIONS,
    KEYWORD_FORMS,
    inflections_of,
    is_space_char,
    is_word_char,
    keyword_forms,
)


def test_character_classes_match_re_on_every_code_point():
    word, space = re.compile(r"\w"), re.compile(r"\s")
    wrong = [
        cp
        for cp in range(0x110000)
        if is_word_char(chr(cp)) != (word.match(chr(cp)) is not None)
        or is_space_char(chr(cp)) != (space.match(chr(cp)) is not None)
    ]
    assert wrong == []


def test_inflections_live_in_a_byte_bounded_cache():
    assert isinstance(INFLECTIONS, LRUCache)
    first = inflections_of("dishwasher", "noun")
    hits = INFLECTIONS.hits
    assert inflections_of("dishwasher", "noun") == first == ("dishwasher", "dishwashers")
    assert INFLECTIONS.hits == hits + 1
    assert INFLECTIONS.bytes > 0 and INFLECTIONS.bytes <= INFLECTIONS.max_bytes


def test_keyword_forms_take_the_keywords_fields():
    keyword = Keyword("New York", inflections=False, case="any", variants=("NYC",))
    forms = keyword_forms("New York", ("NYC",), inflections=False, case="any")
    assert forms == keyword.forms()
    assert {f.text for f in forms} == {"new york", "nyc"}


def test_keyword_forms_live_in_a_byte_bounded_cache():
    """The text checker asks for a keyword's forms once per text: the second ask is a hit, equal to the first."""
    first = keyword_forms("dishwasher", (), True, "natural", "noun")
    hits = KEYWORD_FORMS.hits
    assert keyword_forms("dishwasher", (), True, "natural", "noun") == first
    assert KEYWORD_FORMS.hits == hits + 1
    assert {f.text for f in first} >= {"dishwasher", "Dishwashers", "DISHWASHERS"}
    assert 0 < KEYWORD_FORMS.bytes <= KEYWORD_FORMS.max_bytes
