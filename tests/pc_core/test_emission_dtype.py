"""The guide's step in lower precision (issue 26 §2, docs/method.md §5.9) and the tail tokens it skips (issue 27,
pc_core/step_layout.py).

bfloat16 emission (and rows): every finite log q within the stated bound of float32's, and the mask, which
tokens get -inf, and the tokens that get exactly 0 identical. The per-state tail layout: the values of the tail
tokens it leaves to the block products equal those of computing the whole tail."""

import math

import pytest
import torch
from json_example import SCHEMA, TEXT

from pc_core import compile_constraint
from pc_core.guide import GUIDE_TABLES, ConstraintGuide, batched_next_log_probs
from pc_core.hmm import HMM
from pc_core.kernels import emission_dtype
from pc_core.step_layout import TailLayout, tail_layout

U = 2.0**-8  # bfloat16's unit roundoff (8 significant bits): a rounded x is within x * U / (1 + U)
EPS = U / (1 + U)
# log q = log(J / N): J's terms are rounded 2 times (left row, emission), 3 with bfloat16 rows; N's 2 times
BOUND_EMISSION = 2 * math.log((1 + EPS) / (1 - EPS))  # 2 log(1 + 2U) < 2^-6
BOUND_BOTH = 2 * math.log(1 + EPS) - 3 * math.log(1 - EPS)  # about 5U
SLACK = 1e-4  # float32 sums and logs of the reference itself


def _walk(tokenizer, spec, text, hidden=64, beams=3, **dtypes):
    """log q (B, V) along `text` for the guide with `dtypes` against float32: at each step the real beam and
    beams that took other allowed tokens one step before, so beams sit in different states."""
    GUIDE_TABLES.clear()
    dfa = compile_constraint(spec, tokenizer)
    hmm = HMM.random(hidden, len(tokenizer), seed=3, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert dfa.accepts(ids + [tokenizer.eos_token_id])
    horizon = len(ids) + 4
    full, other = ConstraintGuide(hmm, dfa, horizon), ConstraintGuide(hmm, dfa, horizon, **dtypes)
    pairs = []
    state = full.init_state()
    for token in ids:
        q = full.next_log_probs(state)[0]
        allowed = torch.isfinite(q).nonzero()[:, 0]
        others = [x for x in allowed.tolist() if x != token][: beams - 1]
        batch = full.advance(state.select([0] * (1 + len(others))), [token, *others])
        pairs.append((full.next_log_probs(batch), other.next_log_probs(batch)))
        state = full.advance(state, [token])
    return pairs


@pytest.mark.parametrize(
    ("spec", "text"),
    [(SCHEMA, TEXT), ({"keywords": ["dog", "park"]}, " the dog ran to the park and back")],
    ids=["json", "keywords"],
)
@pytest.mark.parametrize("tables", ["float32", "bfloat16"])
def test_bfloat16_emission_within_bound_and_same_mask(tokenizer, spec, text, tables):
    dtypes = {"emission_dtype": torch.bfloat16, "table_dtype": getattr(torch, tables)}
    bound = (BOUND_EMISSION if tables == "float32" else BOUND_BOTH) + SLACK
    worst = 0.0
    for exact, half in _walk(tokenizer, spec, text, **dtypes):
        assert torch.equal(torch.isneginf(exact), torch.isneginf(half))  # the mask: exact
        assert torch.equal(exact == 0, half == 0)  # certain tokens: exact
        finite = torch.isfinite(exact)
        worst = max(worst, float((exact[finite] - half[finite]).abs().max()))
    assert 0 < worst <= bound, (worst, bound)  # > 0: bfloat16 did run


def test_bound_is_below_two_to_the_minus_six():
    assert BOUND_EMISSION < 2**-6 and BOUND_BOTH < 5 * U + 1e-6


def test_emission_dtype_setting():
    assert emission_dtype("cpu", "float32") == torch.float32
    assert emission_dtype("cpu", "bfloat16") == torch.bfloat16
    assert emission_dtype("cuda", "auto") == torch.bfloat16
    assert emission_dtype("cpu", "auto") in (
        torch.float32,
        torch.bfloat16,
    )  # follows the CPU's bfloat16 product


@pytest.fixture
def whole_tail():
    """Compute every tail token, the reference the covered layout must match."""
    TailLayout.COVER = False
    yield
    TailLayout.COVER = True


def _values(guide, states):
    return [batched_next_log_probs([(guide, s)])[0] for s in states]


def test_tail_tokens_left_to_the_blocks_match_the_whole_tail(tokenizer, whole_tail):
    """JSON inside a string: most tail tokens take the block's successor, and the layout skips them."""
    GUIDE_TABLES.clear()
    dfa = compile_constraint(SCHEMA, tokenizer)
    hmm = HMM.random(32, len(tokenizer), seed=4, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    guide = ConstraintGuide(hmm, dfa, len(ids) + 4)
    states, state = [], guide.init_state()
    for token in ids:
        q = guide.next_log_probs(state)[0]
        others = [x for x in torch.isfinite(q).nonzero()[:, 0].tolist() if x != token][:2]
        states.append(guide.advance(state.select([0] * (1 + len(others))), [token, *others]))
        state = guide.advance(state, [token])
    reference = _values(guide, states)  # COVER off: every tail token through the tail's own product
    TailLayout.COVER = True
    layout = tail_layout(guide.tables)
    skipped = [int((~layout.uncovered(s, layout.whole_rows([s]))).sum()) for s in range(dfa.num_states)]
    assert max(skipped) > 0  # the test exercises the skipping
    for ref, new in zip(reference, _values(guide, states)):
        assert torch.equal(torch.isneginf(ref), torch.isneginf(new)) and torch.equal(ref == 0, new == 0)
        finite = torch.isfinite(ref)
        torch.testing.assert_close(new[finite], ref[finite], atol=1e-4, rtol=0)
