"""The per-state tail layout (pc_core/step_layout.py): the stored distinct successors and token index give
back every beam's tail successors exactly; the guide's values through it are checked against brute force in
test_guide.py."""

import torch

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
