"""A step whose vocabulary blocks all have the same whole rows (inside a JSON string, or where every successor
is certain or impossible: block_plan.py's `uniform`) takes one product over the whole vocabulary in token
order (guide.py, `multiply`), with no permutation back to token order. Its values are bitwise those of the
block-by-block step, the exact log-space fallback included."""

import pytest
import torch

import pc_core.guide as guide_module
import pc_core.guide_ratio as guide_ratio
import pc_core.guide_tables as tables_module
from pc_core import compile_constraint
from pc_core.guide import GUIDE_TABLES, ConstraintGuide, GuideError, batched_next_log_probs, multiply
from pc_core.hmm import HMM

# a free string (no maxLength: inside it every ordinary token keeps the same state) and an integer
SCHEMA = {"json_schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                          "required": ["name", "age"]}}  # fmt: skip
TEXT = '{"name":"the dog park","age":42}'


def _both_ways(guide, state):
    """q by the uniform path (when the plan is uniform) and by the block products, and the plan."""
    plan = guide.plan(state)
    products = multiply([(guide, plan)])[0]
    assert len(products) == (1 if plan.uniform else guide.tables.num_blocks)
    by_blocks = plan._replace(uniform=False)  # multiply takes each block's product
    return guide.assemble(plan, products), guide.assemble(by_blocks, multiply([(guide, by_blocks)])[0]), plan


def _walk(tokenizer, guide, beams=3):
    """Along TEXT: the real beam alone, and with beams that took other allowed tokens (B > 1)."""
    state, out = guide.init_state(), []
    for token in tokenizer.encode(TEXT, add_special_tokens=False):
        q = guide.next_log_probs(state)[0]
        others = [x for x in torch.isfinite(q).nonzero()[:, 0].tolist() if x != token][: beams - 1]
        batch = guide.advance(state.select([0] * (1 + len(others))), [token, *others])
        out += [_both_ways(guide, state), _both_ways(guide, batch)]
        state = guide.advance(state, [token])
    return out


def _json_guide(tokenizer, monkeypatch, big_class_fraction=0.2):
    """The JSON guide over the ~700-token test vocabulary; large classes (their own product rows) from 20% of
    it: inside a string only "any other character" is, so both blocks have the same rows (as with a 50k
    vocabulary at 1%); from 5%: a string's blocks differ (the quote's class is large too)."""
    monkeypatch.setattr(tables_module, "BIG_CLASS_FRACTION", big_class_fraction)
    GUIDE_TABLES.clear()
    dfa = compile_constraint(SCHEMA, tokenizer)
    hmm = HMM.random(16, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    return ConstraintGuide(hmm, dfa, len(tokenizer.encode(TEXT, add_special_tokens=False)) + 4)


@pytest.fixture(params=[0.2, 0.05], ids=["one large class in a string", "several"])
def json_guide(tokenizer, monkeypatch, request):
    return _json_guide(tokenizer, monkeypatch, request.param)


def test_uniform_steps_equal_the_block_steps(tokenizer, json_guide):
    assert json_guide.tables.num_blocks == 2
    steps = _walk(tokenizer, json_guide)
    for whole, blocks, _ in steps:
        assert torch.equal(whole, blocks)
    uniform = [plan for _, _, plan in steps if plan.uniform]
    assert any(not plan.blocks[0].rows.shape[0] for plan in uniform)  # every successor certain / impossible
    assert any(plan.state.batch_size > 1 for plan in uniform)
    with_rows = [plan for plan in uniform if plan.blocks[0].rows.shape[0]]  # in a string: rows to multiply
    assert bool(with_rows) == (tables_module.BIG_CLASS_FRACTION == 0.2)
    for plan in with_rows:
        assert plan.blocks[1].rows is plan.blocks[0].rows  # built once


def test_uniform_steps_equal_the_block_steps_where_the_exact_fallback_runs(
    tokenizer, json_guide, monkeypatch
):
    """Every entry below the (raised) precision threshold: the float64 log-space value everywhere, token j of
    the whole-vocabulary product recomputed for token j."""
    monkeypatch.setattr(guide_ratio, "LOSSLESS", 2.0)
    calls = []
    real = guide_ratio.exact_log_ratio
    monkeypatch.setattr(guide_ratio, "exact_log_ratio", lambda *args: calls.append(1) or real(*args))
    steps = _walk(tokenizer, json_guide, beams=2)
    assert calls
    for whole, blocks, _ in steps:
        assert torch.equal(whole, blocks)


def test_uniform_and_block_plans_batched_together(tokenizer, monkeypatch):
    """A batch whose guides share vocabulary blocks but not all uniform plans takes the block products; the
    values are each guide's alone."""
    json_guide = _json_guide(tokenizer, monkeypatch)
    keywords = ConstraintGuide(
        json_guide.hmm, compile_constraint({"keywords": ["dog"]}, tokenizer), horizon=8
    )
    assert keywords.tables.block_key == json_guide.tables.block_key
    mid_word = keywords.state_for(tokenizer.encode(" do", add_special_tokens=False))
    assert not keywords.plan(mid_word).uniform
    in_string = json_guide.state_for(tokenizer.encode('{"name":"the', add_special_tokens=False))
    assert json_guide.plan(in_string).uniform
    together = batched_next_log_probs([(json_guide, in_string), (keywords, mid_word)])
    assert torch.equal(together[0], json_guide.next_log_probs(in_string))
    assert torch.equal(together[1], keywords.next_log_probs(mid_word))


def test_a_whole_vocabulary_product_needs_a_uniform_plan(tokenizer, monkeypatch):
    json_guide = _json_guide(tokenizer, monkeypatch)
    keywords = ConstraintGuide(
        json_guide.hmm, compile_constraint({"keywords": ["dog"]}, tokenizer), horizon=8
    )
    plan = keywords.plan(keywords.state_for(tokenizer.encode(" do", add_special_tokens=False)))
    assert not plan.uniform
    whole = plan._replace(uniform=True)
    products = multiply([(keywords, whole)])[0]  # one product over the vocabulary, for a plan it does not fit
    with pytest.raises(GuideError):
        keywords.assemble(plan, products)


def test_factored_guide_takes_the_whole_vocabulary_product_too(tokenizer, monkeypatch):
    """Groups whose plans are all uniform share one product over the vocabulary (guide.multiply); their sum and
    the full automaton's mask are those of the block products."""
    from pc_core.factored_guide import FactoredGuide
    from pc_core.feasibility import Feasibility

    guide = _json_guide(tokenizer, monkeypatch)
    horizon = guide.horizon
    feasibility = Feasibility(guide.dfa, horizon, 0)
    factored = FactoredGuide(guide.hmm, guide.dfa, [(guide.dfa, feasibility)] * 2, feasibility, horizon)
    state, uniform = factored.init_state(), 0
    for token in tokenizer.encode(TEXT, add_special_tokens=False):
        plan = factored.plan(state)
        products = multiply([(factored, plan)])[0]
        by_blocks = plan._replace(uniform=False)
        want = factored.assemble(by_blocks, multiply([(factored, by_blocks)])[0])
        assert len(products) == (1 if plan.uniform else 2)
        assert torch.equal(factored.assemble(plan, products), want)
        assert torch.equal(want, factored.next_log_probs(state))
        uniform += plan.uniform and plan.blocks[0].rows.shape[0] > 0
        state = factored.advance(state, [token])
    assert uniform


@pytest.mark.parametrize("lossless", [None, 2.0], ids=["fast path", "exact fallback everywhere"])
def test_bfloat16_products_are_read_as_their_float32_values(tokenizer, monkeypatch, lossless):
    """With a bfloat16 emission `multiply` hands the products over in bfloat16; the assembly reads them as
    their exact float32 values: the same q as from the products cast to float32 first, block by block or
    over the whole vocabulary, for one beam and several."""
    if lossless is not None:
        monkeypatch.setattr(guide_ratio, "LOSSLESS", lossless)
    for fraction in (0.2, 0.05):
        guide = _json_guide(tokenizer, monkeypatch, fraction)
        guide = ConstraintGuide(guide.hmm, guide.dfa, guide.horizon, emission_dtype=torch.bfloat16)
        state, seen = guide.init_state(), set()
        for token in tokenizer.encode(TEXT, add_special_tokens=False):
            for beams in (state, state.select([0, 0])):
                plan = guide.plan(beams)
                products = multiply([(guide, plan)])[0]
                seen |= {values.dtype for values, _ in products if values.shape[0]}
                cast = [(values.float(), shift) for values, shift in products]
                assert torch.equal(guide.assemble(plan, products), guide.assemble(plan, cast))
            state = guide.advance(state, [token])
        assert torch.bfloat16 in seen


def test_one_row_per_beam_in_a_block_with_several_successors(tokenizer, monkeypatch):
    """A block where a beam's classes lead to several successors, all but one certain or impossible (a
    pattern's string: characters outside [a-z ] are impossible): that one row's value for every token, then
    the fills, without the per-token gather; bitwise the per-token gather's values, one beam and two."""
    GUIDE_TABLES.clear()
    dfa = compile_constraint({"json_schema": {"type": "string", "pattern": "^[a-z ]+$"}}, tokenizer)
    hmm = HMM.random(16, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    ids = tokenizer.encode('"the dog park"', add_special_tokens=False)
    guide = ConstraintGuide(hmm, dfa, len(ids) + 4)
    taken = []
    real = guide_module.log_ratio

    def spy(*args, **kwargs):
        taken.append(kwargs.get("in_order") is True)  # only that branch names it
        return real(*args, **kwargs)

    monkeypatch.setattr(guide_module, "log_ratio", spy)
    state, got = guide.init_state(), []
    for token in ids:
        got += [guide.next_log_probs(state), guide.next_log_probs(state.select([0, 0]))]
        state = guide.advance(state, [token])
    monkeypatch.setattr(ConstraintGuide, "ONE_ROW_PER_BEAM", False)
    state, want = guide.init_state(), []
    for token in ids:
        want += [guide.next_log_probs(state), guide.next_log_probs(state.select([0, 0]))]
        state = guide.advance(state, [token])
    assert sum(taken) >= 4  # one beam and two, in several steps
    for a, b in zip(got, want):
        assert torch.equal(a, b)
