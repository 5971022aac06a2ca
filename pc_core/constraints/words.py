"""Words and keyword variants: the text-level vocabulary of the constraint semantics.

A word is a maximal run of characters matched by Python's `\\w` (Unicode). Case-insensitive comparison is
`str.casefold()` equality of whole words (casefold maps character by character, which the DFA relies on).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pc_core.constraints.spec import Keyword

WORD_RE = re.compile(r"\w+")
_WORD_CHAR_RE = re.compile(r"\w")


def split_words(text: str) -> list[str]:
    return WORD_RE.findall(text)


@lru_cache(maxsize=65536)
def is_word_char(ch: str) -> bool:
    return _WORD_CHAR_RE.match(ch) is not None


@lru_cache(maxsize=4096)
def inflections_of(word: str) -> tuple[str, ...]:
    """Lower-case noun plural and verb forms (3rd person, past, participles, -ing) of `word` and its lemmas.

    Uses lemminflect's dictionary; an out-of-vocabulary word gets its regular noun plural only.
    """
    import lemminflect

    lower = word.lower()
    lemmas = {lower}
    for upos in ("NOUN", "VERB"):
        for found in lemminflect.getAllLemmas(lower, upos=upos).values():
            lemmas.update(found)
    forms: set[str] = set()
    for lemma in lemmas:
        for upos in ("NOUN", "VERB"):
            for found in lemminflect.getAllInflections(lemma, upos=upos).values():
                forms.update(found)
    if forms == set() or forms == {lower}:
        for found in lemminflect.getAllInflectionsOOV(lower, upos="NOUN").values():
            forms.update(found)
    forms.add(lower)
    return tuple(sorted(forms))


def _match_case(form: str, model: str) -> str:
    """Give an inflected form the capitalisation pattern of the word it came from."""
    if model.isupper() and len(model) > 1:
        return form.upper()
    if model[:1].isupper():
        return form[:1].upper() + form[1:]
    return form


def keyword_variants(keyword: Keyword) -> tuple[tuple[str, ...], ...]:
    """Every word list that satisfies `keyword`: the text, user variants and (optionally) inflections.

    Inflections apply to the last word of a phrase ("hot dog" -> "hot dogs"). Case-insensitive variants
    are casefolded here; sensitive ones keep their spelling. Sorted and deduplicated, so the result is
    canonical.
    """
    variants: set[tuple[str, ...]] = set()
    for text in (keyword.text, *keyword.variants):
        words = split_words(text)
        lasts = {words[-1]}
        if keyword.inflections:
            lasts.update(_match_case(form, words[-1]) for form in inflections_of(words[-1]))
        for last in lasts:
            variant = (*words[:-1], last)
            variants.add(variant if keyword.case_sensitive else tuple(w.casefold() for w in variant))
    return tuple(sorted(variants))
