"""Blocklists enforced beside the guide (docs/method.md §7): the mask against the text checker, the no-dead-end
check, the fallback to the exact product, and decoding."""

import itertools
import random

import pytest
import torch
from byte_support import has_banned_token
from tiny_models import build_micro_tokenizer

from pc_core import check_ids, compile_constraint
from pc_core.constraints.blocklist import Blocklist, split_blocklist
from pc_core.constraints.spec import parse_constraint
from pc_core.constraints.vocab import vocab_tables
from pc_core.decoding import generate
from pc_core.errors import BlocklistInteraction, ConstraintTooComplex
from pc_core.guide import ConstraintGuide
from pc_core.hmm import HMM

BLOCK = ["cat", "pan", "the", "snow", "run", "coffee", "New", "fox"]
TEXT_WORDS = ["cat", "cats", "category", "Cat", "CAT", "cAt", "pan", "pans", "panda", "the", "The", "them", "dog",
              "snowy", "snow", "ran", "running", "coffee", "Coffees", "new", "New", "fox", "foxes", "a"]  # fmt: skip
SEPARATORS = [" ", " ", ", ", ". ", "-", "\n"]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return build_micro_tokenizer(tmp_path_factory.mktemp("micro"))


def _text(rng):
    return "".join(rng.choice(SEPARATORS) + rng.choice(TEXT_WORDS) for _ in range(rng.randint(0, 5)))


def _masked_prefixes(tokenizer, blocklist, rng, n):
    """Token prefixes produced under the mask (every step allowed), from tokenised random texts."""
    out = []
    while len(out) < n:
        ids = tokenizer.encode(_text(rng), add_special_tokens=False)
        word, prefix = "", []
        for x in ids:
            if not blocklist.allowed(word)[x]:
                break
            prefix.append(x)
            word = blocklist.advance(word, x)
        out.append((prefix, word))
    return out


@pytest.mark.parametrize("case", ["natural", "any", "sensitive"])
def test_mask_is_the_text_checker_one_token_ahead(tokenizer, case):
    """After a prefix the mask let through, a token is allowed exactly when the text up to and including it,
    read as a finished text, has no forbidden word (checked for every token of the vocabulary)."""
    spec = {"forbidden": BLOCK, "case": case}
    blocklist = Blocklist(split_blocklist(parse_constraint(spec))[1], vocab_tables(tokenizer))
    banned = vocab_tables(tokenizer).banned
    rng = random.Random(0)
    for prefix, word in _masked_prefixes(tokenizer, blocklist, rng, 25):
        mask = blocklist.allowed(word)
        for x in range(len(tokenizer)):
            if banned[x]:
                continue
            expected = check_ids(spec, tokenizer, prefix + [x])
            assert mask[x] == expected, (tokenizer.decode(prefix), tokenizer.decode([x]), word)


def test_mask_on_the_big_vocabulary(big_tokenizer):
    spec = {"forbidden": BLOCK}
    tables = vocab_tables(big_tokenizer)
    blocklist = Blocklist(split_blocklist(parse_constraint(spec))[1], tables)
    rng = random.Random(1)
    sample = rng.sample(range(len(big_tokenizer)), 1500)
    for prefix, word in _masked_prefixes(big_tokenizer, blocklist, rng, 12):
        mask = blocklist.allowed(word)
        extending = [x for p, xs in tables.p_tokens_by_casefold.items() if (word + p).casefold() in
                     {"cat", "cats", "pan", "pans", "the", "snow", "snows", "new", "fox", "foxes"} for x in xs]  # fmt: skip
        for x in sample + extending:
            if not tables.banned[x]:
                assert mask[x] == check_ids(spec, big_tokenizer, prefix + [x])


BLOCKLIST_SPECS = [
    {"forbidden": BLOCK},
    {"all": [{"keywords": ["dog"]}, {"forbidden": BLOCK}]},
    {"all": [{"keyword": "New York"}, {"forbidden": BLOCK, "case": "any"}]},
    {"all": [{"ordered": ["a", "dog"]}, {"word_count": {"min": 2, "max": 6}}, {"forbidden": BLOCK}]},
]


@pytest.mark.parametrize("spec", BLOCKLIST_SPECS, ids=range(len(BLOCKLIST_SPECS)))
def test_dfa_with_blocklist_agrees_with_checker(tokenizer, spec):
    dfa = compile_constraint(spec, tokenizer)
    assert dfa.blocklist is not None and dfa.safe_classes is not None
    exact = compile_constraint(spec, tokenizer, blocklist_mask=False)
    assert exact.blocklist is None
    rng = random.Random(2)
    for _ in range(300):
        ids = tokenizer.encode(_text(rng), add_special_tokens=False)
        if rng.random() < 0.3:
            ids += [tokenizer.eos_token_id, rng.randrange(len(tokenizer))]
        expected = check_ids(spec, tokenizer, ids) and not has_banned_token(tokenizer, ids)
        assert dfa.accepts(ids) == expected == exact.accepts(ids), tokenizer.decode(ids)


def test_large_blocklist_compiles_small_and_fast(big_tokenizer):
    words = [w for w in open(_commongen_words()).read().split()][:1000]
    concepts = ["field", "stand", "look", "tree"]
    alone = compile_constraint({"keywords": concepts}, big_tokenizer, time_budget_s=600)  # on any machine
    spec = {"all": [{"keywords": concepts}, {"forbidden": [w for w in words if w not in concepts]}]}
    dfa = compile_constraint(spec, big_tokenizer, time_budget_s=600)
    assert dfa.blocklist is not None and len(dfa.blocklist.keywords) >= 990
    # the blocklist adds nothing to what the guide's tables cost (its compile time: docs/benchmarks.md)
    assert dfa.num_states == alone.num_states


def _commongen_words():
    """1,000 everyday words: the most frequent in CommonGen's training sentences (or a fixed list)."""
    import collections
    import re
    import tempfile
    from pathlib import Path

    source = Path(__file__).resolve().parents[4] / "shared" / "data" / "commongen" / "commongen.train.tgt.txt"
    if not source.exists():
        pytest.skip("../shared/data/commongen is not available")
    counts = collections.Counter(re.findall(r"[a-z]+", source.read_text().lower()))
    words = [w for w, _ in counts.most_common(2000) if len(w) > 2][:1000]
    out = Path(tempfile.mkdtemp()) / "words.txt"
    out.write_text(" ".join(words))
    return out


def test_compile_time_budget_is_enforced_inside_the_work(big_tokenizer, monkeypatch):
    """A compile that never ends on its own (the compiler's test hook: it works until stopped) is stopped by its
    budget, on any machine; the rejection is remembered."""
    from pc_core.constraints import compiler, explicit

    spec = {"keywords": ["field", "stand", "look", "tree", "girl", "snowstall"]}
    monkeypatch.setattr(explicit, "STALL_WORD", "snowstall")
    with pytest.raises(ConstraintTooComplex, match="time budget of 0.1s") as info:
        compile_constraint(spec, big_tokenizer, time_budget_s=0.1, max_states=8192)
    assert info.value.out_of_time
    remembered = compiler.COMPILED.get(compiler.compile_key(spec, big_tokenizer, 8192, 0.1))
    assert isinstance(remembered, ConstraintTooComplex) and remembered.out_of_time
    with pytest.raises(ConstraintTooComplex, match="time budget"):
        compile_constraint(spec, big_tokenizer, time_budget_s=0.1, max_states=8192)


# ------------------------------------------------------------------------------------ guide and decoding


def _hmm(tokenizer, hidden=4, seed=0):
    return HMM.random(hidden, len(tokenizer), seed=seed, eos_token_id=tokenizer.eos_token_id)


def _guided_paths(guide, tokenizer, horizon):
    """Every token sequence the guide gives a non-zero probability, to EOS or the horizon."""
    out, frontier = [], [[]]
    while frontier:
        prefix = frontier.pop()
        if len(prefix) == horizon or (prefix and prefix[-1] == tokenizer.eos_token_id):
            out.append(prefix)
            continue
        q = guide.next_log_probs(prefix)
        nxt = torch.isfinite(q).nonzero()[:, 0].tolist()
        assert nxt, f"dead end after {tokenizer.convert_ids_to_tokens(prefix)}"
        frontier.extend(prefix + [x] for x in nxt)
    return out


def test_masked_guide_never_dead_ends_and_every_path_satisfies(micro):
    spec = {"all": ["pan", {"forbidden": ["dog", "cat", "the", "do"], "inflections": False}]}
    dfa = compile_constraint(spec, micro)
    assert dfa.blocklist is not None
    guide = ConstraintGuide(_hmm(micro), dfa, horizon=3)
    paths = _guided_paths(guide, micro, 3)
    assert len(paths) > 10
    for ids in paths:
        assert check_ids(spec, micro, ids), micro.convert_ids_to_tokens(ids)


def test_masked_guide_values_are_the_rest_of_the_constraint_where_allowed(micro):
    spec = {"all": ["pan", {"forbidden": ["dog", "cat", "the", "do"], "inflections": False}]}
    hmm = _hmm(micro)
    masked = ConstraintGuide(hmm, compile_constraint(spec, micro), horizon=3)
    rest = ConstraintGuide(hmm, compile_constraint("pan", micro), horizon=3)
    blocklist = masked.dfa.blocklist
    for prefix in itertools.product(range(len(micro)), repeat=1):
        prefix = list(prefix)
        word = blocklist.advance("", prefix[0])
        if not blocklist.allowed("")[prefix[0]]:
            continue
        got, want = masked.next_log_probs(prefix), rest.next_log_probs(prefix).clone()
        want[torch.from_numpy(~blocklist.allowed(word))] = float("-inf")
        assert torch.equal(got, want)


def test_an_interacting_blocklist_falls_back_to_the_exact_product(micro):
    # "dogs" can only be written through the open word "dog" (" dog" + "s"), which the mask forbids
    spec = {"all": [{"keyword": "dogs", "inflections": False},
                    {"forbidden": ["dog", "cat", "the", "pan"], "inflections": False}]}  # fmt: skip
    hmm = _hmm(micro)
    masked = compile_constraint(spec, micro)
    assert masked.blocklist is not None
    with pytest.raises(BlocklistInteraction):
        ConstraintGuide(hmm, masked, horizon=4)
    exact = compile_constraint(spec, micro, blocklist_mask=False)
    guide = ConstraintGuide(hmm, exact, horizon=4)
    for ids in _guided_paths(guide, micro, 4):
        assert check_ids(spec, micro, ids)


def test_decoding_falls_back_and_satisfies(micro, tmp_path):
    from tiny_models import build_tiny_lm

    lm = build_tiny_lm(tmp_path / "lm", micro)
    spec = {"all": [{"keyword": "dogs", "inflections": False},
                    {"forbidden": ["dog", "cat", "the", "pan"], "inflections": False}]}  # fmt: skip
    out = generate(lm, micro, _hmm(micro), spec, max_new_tokens=4, num_beams=3, num_return_sequences=3)
    assert all(s.constraint_satisfied and check_ids(spec, micro, s.token_ids) for s in out.sequences)
    assert all("dogs" in s.text for s in out.sequences)


@pytest.mark.parametrize("seed", range(4))
def test_decoding_with_a_blocklist(tiny_lm, tokenizer, tiny_hmm, seed):
    rng = random.Random(seed)
    block = rng.sample(["the", "a", "cat", "and", "dog", "in", "of", "on", "park", "is", "to", "The"], 8)
    spec = {"all": [{"keywords": ["snow"]}, {"forbidden": block}]}
    for kwargs in ({"num_beams": 4, "num_return_sequences": 2}, {"do_sample": True, "seed": seed}):
        out = generate(tiny_lm, tokenizer, tiny_hmm, spec, max_new_tokens=12, **kwargs)
        for s in out.sequences:
            assert s.constraint_satisfied and check_ids(spec, tokenizer, s.token_ids)
