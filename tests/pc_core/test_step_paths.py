"""The step's shortcuts give bitwise the values of the general formulas they stand in for (pc_core/guide.py
`_joint_rows`, guide_ratio.tail_log_ratio's one-beam path); the step's right operands are built once per
model and vocabulary partition (the benchmark's floor reads the guide's own, not a second copy); the block
row patterns built with the tables are those the steps would build."""

import pytest
import torch
from json_example import SCHEMA, TEXT

import pc_core.guide as guide_module
from pc_core import block_plan, compile_constraint
from pc_core.guide import GUIDE_TABLES, ConstraintGuide, emission_operands
from pc_core.guide_ratio import ROW_CERTAIN, ROW_IMPOSSIBLE, tail_log_ratio
from pc_core.hmm import HMM
from pc_core.step_layout import tail_product


def _guide(tokenizer, table_dtype=torch.float32, emission_dtype=torch.float32):
    GUIDE_TABLES.clear()
    dfa = compile_constraint(SCHEMA, tokenizer)
    hmm = HMM.random(16, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    horizon = len(tokenizer.encode(TEXT, add_special_tokens=False)) + 4
    return ConstraintGuide(hmm, dfa, horizon, table_dtype=table_dtype, emission_dtype=emission_dtype)


def _states(tokenizer, guide):
    """Along TEXT: the beam alone, and three beams (the real one twice, one that took another token)."""
    state = guide.init_state()
    for token in tokenizer.encode(TEXT, add_special_tokens=False):
        q = guide.next_log_probs(state)[0]
        other = next((x for x in torch.isfinite(q).nonzero()[:, 0].tolist() if x != token), token)
        yield state
        yield guide.advance(state.select([0, 0, 0]), [token, token, other])
        state = guide.advance(state, [token])


@pytest.mark.parametrize("table_dtype", [torch.float32, torch.bfloat16])
def test_joint_rows_equal_the_beams_rows_plus_the_tables_rows(tokenizer, table_dtype):
    guide = _guide(tokenizer, table_dtype)
    tables, checked = guide.tables, 0
    assert (tables.row_scale is None) == (table_dtype == torch.float32)
    for state in _states(tokenizer, guide):
        r = guide.horizon - state.position - 1
        left = state.log_alpha + tables.log_scale
        b = state.batch_size
        pair_state = tables.dense_succ[state.dfa_state].reshape(-1).clamp_min(0)  # (B * D,)
        pair_beam = torch.arange(b).repeat_interleave(tables.dense_succ.shape[1])
        want = left.index_select(0, pair_beam)
        want += tables.rows(r, pair_state)
        got = guide_module._joint_rows(tables, r, left, pair_beam, pair_state)
        assert torch.equal(got, want)
        checked += int(torch.isfinite(want).any())
    assert checked


def test_one_beam_tail_ratio_equals_the_general_formula(tokenizer):
    """tail_log_ratio with one beam (views on row 0) against the formula for any number of beams, on the
    product rows of real steps and on rows where some columns are certain or impossible."""
    guide = _guide(tokenizer)
    generator = torch.Generator().manual_seed(0)
    seen = 0
    for state in _states(tokenizer, guide):
        if state.batch_size != 1:
            continue
        plan = guide.plan(state)
        step = plan.tail
        if step is None or not step.pair_state.numel():
            continue
        product, shift = tail_product(plan.tail_rows, guide.tables, step.columns)
        rows = step.row.clone()
        codes = torch.randint(0, 4, rows.shape, generator=generator)
        # some columns made impossible / certain: values the caller overwrites
        rows[codes == 0] = ROW_IMPOSSIBLE
        rows[codes == 1] = ROW_CERTAIN
        for row in (step.row, rows):
            got = tail_log_ratio(guide, state, product, shift, row, step.marginal_row, step.tokens)
            clamped, marginal = row.clamp_min(0), step.marginal_row.clamp_min(0)
            joint, denominator = product.gather(0, clamped), product.index_select(0, marginal)
            per_token = shift.index_select(0, clamped.reshape(-1)).view(clamped.shape)
            difference = per_token - shift.index_select(0, marginal)[:, None]
            want = torch.div(joint, denominator).log_().add_(difference)
            live = (row >= 0) & (step.marginal_row >= 0)[:, None]
            assert torch.equal(got[live], want[live])
            assert torch.equal(got, want)  # the overwritten entries too: the same formula
        seen += 1
    assert seen


def test_emission_operands_are_built_once_and_the_floor_reads_the_guides(tokenizer):
    """The operands list is cached with the model (a step looks it up once); its whole-vocabulary operand is
    the buffer benchmarks.json_step's floor multiplies with, so walking a request builds no second copy of
    the emission (which would evict the step's from the CPU caches)."""
    from benchmarks.json_step import walk
    from pc_core.decoding import prepare
    from pc_core.params import DecodeParams

    GUIDE_TABLES.clear()
    hmm = HMM.random(16, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    tokens = tokenizer.encode(TEXT, add_special_tokens=False) + [tokenizer.eos_token_id]
    params = DecodeParams(max_new_tokens=len(tokens) + 4, guide_emission_dtype="float32")
    search = prepare(tokenizer, hmm, SCHEMA, "", params)
    guide = search.guide
    operands = emission_operands(hmm, guide.tables, guide.emission_dtype)
    assert emission_operands(hmm, guide.tables, guide.emission_dtype) is operands
    before = {key for key in hmm._cache if key[0] == "Bt-block"}
    walk(search, tokens)
    assert {key for key in hmm._cache if key[0] == "Bt-block"} == before  # no emission copy for the floor
    assert hmm.emission_block(None, "all/0", guide.emission_dtype) is operands[-1]


def test_row_patterns_precomputed_with_the_tables_are_those_steps_build(tokenizer):
    """The block row patterns built with the tables (block_plan.precompute_patterns) spare a one-beam walk
    most of its pattern builds, and are those its steps build: the same arrays and the same q as a walk that
    builds every pattern itself."""
    GUIDE_TABLES.clear()
    dfa = compile_constraint(SCHEMA, tokenizer)
    hmm = HMM.random(16, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    tokens = tokenizer.encode(TEXT, add_special_tokens=False)
    guide = ConstraintGuide(hmm, dfa, len(tokens) + 40)  # room: steps far from the horizon
    arrays = block_plan._plan_arrays(guide.tables)
    precomputed = dict(arrays.patterns)
    assert precomputed  # built with the tables, before any step

    def walk():
        state, out, built = guide.init_state(), [], 0
        for token in tokens:
            before = len(arrays.patterns)
            out.append(guide.next_log_probs(state))
            built += len(arrays.patterns) - before
            state = guide.advance(state, [token])
        return out, built

    with_precomputed, built_then = walk()
    arrays.patterns.clear()
    arrays.plans.clear()
    built_alone, built_now = walk()
    assert built_then < built_now
    for a, b in zip(with_precomputed, built_alone):
        assert torch.equal(a, b)
    for key, pattern in precomputed.items():
        if key in arrays.patterns:  # built again by a step: the same layouts
            for one, two in zip(pattern[0], arrays.patterns[key][0]):
                for x, y in zip(one, two):
                    assert x is y is None or (isinstance(x, bool) and x == y) or torch.equal(x, y)
