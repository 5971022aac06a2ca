"""The per-state tail layout (pc_core/step_layout.py): the stored distinct successors and token index give
back every beam's tail successors exactly; the guide's values through it are checked against brute force in
test_guide.py. The layouts kept beside a table count in GUIDE_TABLES' byte bound and stay within their share."""

import torch
from json_example import SCHEMA, TEXT

from pc_core import compile_constraint, layout_memory, step_layout
from pc_core.cache import buffer_bytes
from pc_core.guide import GUIDE_TABLES, ConstraintGuide
from pc_core.hmm import HMM
from pc_core.step_layout import TailLayout


def test_tail_layout_rebuilds_each_beams_successors():
    generator = torch.Generator().manual_seed(0)
    tail_succ = torch.randint(0, 6, (5, 40), generator=generator)  # (S, T): 6 states' worth of successors
    layout = TailLayout(tail_succ)
    for states in ([3], [0, 4, 0], [2, 1]):
        distinct, beam_of, index = layout.gather(states)
        assert torch.equal(distinct[index], tail_succ[states])  # (B, T): each token's successor
        for beam, state in enumerate(states):
            mine = distinct[beam_of == beam]
            assert torch.equal(mine, torch.unique(tail_succ[state]))  # distinct and ascending, per beam
            assert bool((beam_of[index[beam]] == beam).all())  # a beam's tokens index its own successors


def _held_bytes(guide_tables) -> int:
    """Bytes the tables hold now, their step layouts included (objects kept on them searched one level)."""
    parts = list(vars(guide_tables).values())
    parts += [vars(v) for v in parts if hasattr(v, "__dict__") and not isinstance(v, (torch.Tensor, type))]
    return buffer_bytes(parts)


def _walk_with_beams(tokenizer, guide, beams=3):
    """q along TEXT, at each step for the real beam and beams that took other allowed tokens: many layouts."""
    out, state = [], guide.init_state()
    for token in tokenizer.encode(TEXT, add_special_tokens=False):
        q = guide.next_log_probs(state)[0]
        others = [x for x in torch.isfinite(q).nonzero()[:, 0].tolist() if x != token][: beams - 1]
        batch = guide.advance(state.select([0] * (1 + len(others))), [token, *others])
        out.append(guide.next_log_probs(batch))
        for beam in range(1 + len(others)):  # each beam alone too: one layout per beam state
            out.append(guide.next_log_probs(batch.select([beam])))
        state = guide.advance(state, [token])
    return out


def test_guide_tables_cache_counts_the_step_layouts(tokenizer):
    """The step layouts kept beside a table (built after it entered GUIDE_TABLES) count in its byte bound."""
    GUIDE_TABLES.clear()
    dfa = compile_constraint(SCHEMA, tokenizer)
    hmm = HMM.random(16, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    guide = ConstraintGuide(hmm, dfa, len(tokenizer.encode(TEXT, add_special_tokens=False)) + 4)
    _walk_with_beams(tokenizer, guide)
    assert len(GUIDE_TABLES) == 1
    assert _held_bytes(guide.tables) > guide.tables.nbytes  # the walk kept layouts
    assert _held_bytes(guide.tables) <= GUIDE_TABLES.bytes  # and the cache counts them


def test_step_layouts_stay_within_their_budget_and_values_do_not_change(tokenizer, monkeypatch):
    """With a budget a few layouts fill, the layouts start over instead of growing; the values are the same."""
    GUIDE_TABLES.clear()
    dfa = compile_constraint(SCHEMA, tokenizer)
    hmm = HMM.random(16, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    horizon = len(tokenizer.encode(TEXT, add_special_tokens=False)) + 4
    reference = _walk_with_beams(tokenizer, ConstraintGuide(hmm, dfa, horizon))
    GUIDE_TABLES.clear()
    monkeypatch.setattr(layout_memory, "MIN_LAYOUT_BYTES", 16 * 1024)
    monkeypatch.setattr(layout_memory, "LAYOUT_FRACTION", 0.0)
    guide = ConstraintGuide(hmm, dfa, horizon)
    budget = layout_memory.layout_budget(guide.tables)
    assert budget == 16 * 1024
    peak = 0
    for ref, new in zip(reference, _walk_with_beams(tokenizer, guide)):
        assert torch.equal(ref, new)
        peak = max(peak, _held_bytes(guide.tables) - guide.tables.nbytes)
    assert 0 < peak <= budget
    assert layout_memory.layout_memory(guide.tables).evictions > 0  # the budget was reached and kept


def test_precomputed_single_states_match_the_built_layouts(tokenizer):
    """The columns precomputed for every single state (with the tables) equal those built for it on demand."""
    GUIDE_TABLES.clear()
    dfa = compile_constraint(SCHEMA, tokenizer)
    hmm = HMM.random(16, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    guide = ConstraintGuide(hmm, dfa, 12)
    layout = step_layout.tail_layout(guide.tables)
    assert layout._single is not None  # precomputed with the tables
    uncovered = 0
    for s in range(dfa.num_states):
        single, built = layout.of([s]), layout._build([s], layout.whole_rows([s]))
        for a, b in zip(single, built):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else bool((a == b).all()), s
        uncovered += len(built.columns)
    assert 0 < uncovered < dfa.num_states * guide.tables.tail_tokens.numel()  # some columns, not all
