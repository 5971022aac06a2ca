"""Words, phrases and keyword forms: the text-level vocabulary of the constraint semantics (docs/method.md §3).

A word is a maximal run of characters matched by Python's `\\w` (Unicode). A phrase is words with the
separator text between them (a *gap*); gaps are compared after collapsing every run of whitespace to one
space, so "New  York" matches "New York" but "New-York" does not. A keyword's *forms* are the phrases that
satisfy it: the text as written and its explicit variants, each with the inflections of its last word and the
case variants of its case mode. Case-insensitive ("any") forms are casefolded (`str.casefold` maps character
by character, which the DFA relies on).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from typing import NamedTuple

from pc_core.cache import LRUCache

WORD_RE = re.compile(r"\w+")
SPACE_RE = re.compile(r"\s+")

CASE_MODES = ("natural", "sensitive", "any")
PARTS_OF_SPEECH = {"noun": ("NOUN",), "verb": ("VERB",), "adj": ("ADJ",)}
DEFAULT_POS = ("NOUN", "VERB")  # adjective comparatives change the meaning ("big" -> "bigger"): opt in

# Closed-class words get no inflections: their dictionary entries are artefacts ("us" -> "uses", "its" ->
# "itses") or other words altogether ("will" -> "wills", "can" -> "cans"). Pronouns, determiners,
# prepositions, conjunctions, auxiliaries and modals, and the word parts of contractions. Words that are
# mainly open-class ("like", "up", "need", "other") are not listed: their dictionary forms are real words.
CLOSED_CLASS = frozenset(
    """
    i me my mine myself you your yours yourself yourselves he him his himself she her hers herself it its
    itself we us our ours ourselves they them their theirs themselves one oneself who whom whose which what
    whoever whatever whichever that this these those the a an some any each every either neither no none all
    both few many much more most less least several such another same enough
    about above across after against along amid among around as at before behind below beneath beside
    besides between beyond but by despite during except for from in inside into of off on onto outside
    over per since than through throughout till to toward towards under underneath unlike until upon via
    with within without
    and or nor so yet if unless because although though while whereas whether lest once
    be am is are was were been being have has had having do does did doing done
    can could may might must shall should will would ought
    not nt s t d ll m re ve
    """.split()
)


def split_words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def normalise_gap(text: str) -> str:
    """The separator text between two words as a phrase compares it: every whitespace run is one space."""
    return SPACE_RE.sub(" ", text)


def is_word_char(ch: str) -> bool:
    """Does one character match `\\w`? For str patterns `re` defines \\w as str.isalnum() or "_" (CPython's
    SRE_UNI_IS_WORD): no regex, and no cache. tests/pc_core/constraints/test_words.py checks every code point."""
    return ch.isalnum() or ch == "_"


def is_space_char(ch: str) -> bool:
    """Does one character match `\\s`? For str patterns `re` defines \\s as str.isspace() (SRE_UNI_IS_SPACE)."""
    return ch.isspace()


class Form(NamedTuple):
    """One phrase that satisfies a keyword: its words and the normalised gaps between them."""

    words: tuple[str, ...]
    gaps: tuple[str, ...]  # len(words) - 1 entries

    @property
    def text(self) -> str:
        out = [self.words[0]]
        for gap, word in zip(self.gaps, self.words[1:]):
            out += [gap, word]
        return "".join(out)


def split_phrase(text: str) -> Form:
    """Words and normalised inner gaps of `text`; separators before the first / after the last word drop."""
    spans = [m.span() for m in WORD_RE.finditer(text)]
    words = tuple(text[a:b] for a, b in spans)
    gaps = tuple(normalise_gap(text[spans[i][1] : spans[i + 1][0]]) for i in range(len(spans) - 1))
    return Form(words, gaps)


def bad_keyword_char(text: str) -> str | None:
    """The first character that cannot be part of a word or phrase (control, format such as the zero-width
    joiner, private use, unassigned, or a combining mark left without a base after NFC), else None."""
    for ch in text:
        category = unicodedata.category(ch)
        if category[0] == "M" or category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            if category == "Cc" and ch in "\t\n\r":
                continue  # whitespace inside a phrase gap
            return ch
    return None


INFLECTIONS: LRUCache[tuple[str, ...]] = LRUCache(
    "inflections", 8 * 2**20, lambda forms: sys.getsizeof(forms) + sum(map(sys.getsizeof, forms)) + 256
)
"""inflections_of by (word, pos): a keyword's words come from requests, so the cache grows with traffic. An
entry costs its strings and tuple, plus ~256 bytes for the key and the cache's own bookkeeping."""


def inflections_of(word: str, pos: str | None = None) -> tuple[str, ...]:
    """Lower-case forms of `word` (cached in INFLECTIONS); see `_dictionary_forms`."""
    forms = INFLECTIONS.get((word, pos))
    if forms is None:
        forms = _dictionary_forms(word, pos)
        INFLECTIONS.put((word, pos), forms)
    return forms


def _dictionary_forms(word: str, pos: str | None) -> tuple[str, ...]:
    """Lower-case forms of `word` from lemminflect's dictionary (no rule-made forms), the word included.

    The word's own forms when the dictionary knows it as a lemma (noun plural; verb -s, past, participles,
    -ing; adjective comparative and superlative only with pos="adj"); only when it is not a lemma in any part
    of speech ("ran", "children"), the forms of its lemmas. Closed-class words get none. `pos` ("noun",
    "verb", "adj") restricts the forms to that part of speech.
    """
    import lemminflect

    lower = word.lower()
    if lower in CLOSED_CLASS:
        return (lower,)
    upos = PARTS_OF_SPEECH[pos] if pos else DEFAULT_POS
    forms = {lower}
    for tag in upos:
        for found in lemminflect.getAllInflections(lower, upos=tag).values():
            forms.update(found)
    is_lemma = any(lemminflect.getAllInflections(lower, upos=tag) for tag in ("NOUN", "VERB", "ADJ"))
    if not is_lemma:
        for tag in upos:
            for lemma in lemminflect.getAllLemmas(lower, upos=tag).get(tag, ()):
                for found in lemminflect.getAllInflections(lemma, upos=tag).values():
                    forms.update(found)
    return tuple(sorted(f for f in forms if f.lower() not in CLOSED_CLASS or f == lower))


def load_dictionaries() -> None:
    """Load lemminflect's inflection and lemma tables now (about a second and a half, once per process) rather
    than inside the first request that meets an unknown word: a server calls this before it is ready."""
    import lemminflect

    lemminflect.getAllInflections("walk", upos="VERB")
    lemminflect.getAllLemmas("walked", upos="VERB")


def _match_case(form: str, model: str) -> str:
    """Give an inflected form the capitalisation pattern of the word it came from."""
    if model.isupper() and len(model) > 1:
        return form.upper()
    if model[:1].isupper():
        return form[:1].upper() + form[1:]
    return form


def case_variants(text: str, case: str) -> set[str]:
    """The spellings a case mode accepts for `text` ("any" compares casefolded, so the text itself)."""
    if case != "natural":
        return {text}
    return {text, text.lower(), text[:1].upper() + text[1:], text.upper()}


def _forms_bytes(forms: tuple[Form, ...]) -> int:
    return (
        sys.getsizeof(forms) + sum(sys.getsizeof(w) + 120 for f in forms for w in (*f.words, *f.gaps)) + 256
    )


KEYWORD_FORMS: LRUCache[tuple[Form, ...]] = LRUCache("keyword_forms", 8 * 2**20, _forms_bytes)
"""keyword_forms by its arguments: the text checker asks for a keyword's forms once per text it judges (and the
compiler per node), and spelling them out costs ~100 us; keywords come from requests, hence a byte bound."""


def keyword_forms(
    text: str,
    variants: tuple[str, ...] = (),
    inflections: bool = True,
    case: str = "natural",
    pos: str | None = None,
) -> tuple[Form, ...]:
    """Every phrase that satisfies a keyword (the fields of nodes.Keyword): the text and user variants, with
    the inflections of the last word (if on) and the case variants of the case mode. "any" forms are
    casefolded. Sorted and deduplicated, so the result is canonical (cached in KEYWORD_FORMS)."""
    key = (text, tuple(variants), inflections, case, pos)
    forms = KEYWORD_FORMS.get(key)
    if forms is None:
        forms = _spell_forms(text, tuple(variants), inflections, case, pos)
        KEYWORD_FORMS.put(key, forms)
    return forms


def _spell_forms(
    text: str, variants: tuple[str, ...], inflections: bool, case: str, pos: str | None
) -> tuple[Form, ...]:
    forms: set[Form] = set()
    for written in (text, *variants):
        base = split_phrase(written)
        last = base.words[-1]
        lasts = {last}
        if inflections:
            lasts.update(_match_case(f, last) for f in inflections_of(last, pos))
        for new_last in lasts:
            phrase = Form((*base.words[:-1], new_last), base.gaps).text
            for spelling in case_variants(phrase, case):
                form = split_phrase(unicodedata.normalize("NFC", spelling))
                if len(form.words) != len(base.words):
                    continue  # a case mapping that changes the word structure is not a spelling of it
                if case == "any":
                    form = Form(tuple(w.casefold() for w in form.words), form.gaps)
                forms.add(form)
    return tuple(sorted(forms))
