"""Sufficient statistics of an HMM and the M-step (docs/method.md §8.3-8.4).

`Counts` holds expected counts (the E-step, distill/forward_backward.py) or observed ones (LVD, from the
clustered hidden states) in float64; the M-step normalises rows of (counts + pseudocount), so every
probability stays > 0. With step_size < 1 the new parameters are interpolated with the old ones in
probability space (step-size EM).
"""

from __future__ import annotations

import torch

from pc_core.hmm import HMM


def normalise(counts: torch.Tensor, pseudocount: float) -> torch.Tensor:
    """log((c + p) / row sum), float32, rows along the last dimension; every entry > 0."""
    c = counts.double() + pseudocount
    return (c.log() - c.sum(-1, keepdim=True).log()).float()


class Counts:
    """Sufficient statistics of an HMM in float64: expected counts (E-step) or observed ones (LVD)."""

    def __init__(self, hidden_size: int, vocab_size: int, device: torch.device | str = "cpu") -> None:
        h, v = hidden_size, vocab_size
        self.initial = torch.zeros(h, dtype=torch.float64, device=device)  # (H,)
        self.transition = torch.zeros((h, h), dtype=torch.float64, device=device)  # (H, H)
        self.emission = torch.zeros((v, h), dtype=torch.float64, device=device)  # (V, H): a row per token

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.initial, self.transition, self.emission

    def add_observed(self, tokens: torch.Tensor, states: torch.Tensor) -> None:
        """Hard counts from observed (x, z), both (N, T) long."""
        h = self.initial.shape[0]
        self.initial += torch.bincount(states[:, 0], minlength=h).double()
        pairs = (states[:, :-1] * h + states[:, 1:]).flatten()
        self.transition += torch.bincount(pairs, minlength=h * h).view(h, h).double()
        ones = torch.ones(tokens.numel(), dtype=torch.float64, device=tokens.device)
        self.emission.view(-1).index_add_(0, (tokens * h + states).flatten(), ones)

    def to_hmm(self, pseudocount: float, eos_token_id: int | None, metadata: dict | None = None) -> HMM:
        """The M-step: rows of (counts + pseudocount) normalised."""
        return HMM(
            normalise(self.initial, pseudocount).cpu(),
            normalise(self.transition, pseudocount).cpu(),
            normalise(self.emission.T, pseudocount).cpu(),
            eos_token_id=eos_token_id,
            metadata=metadata,
        )


def m_step(old: HMM, counts: Counts, pseudocount: float, step_size: float) -> HMM:
    """New parameters from the summed counts; step_size < 1 interpolates in probability space."""
    new = counts.to_hmm(pseudocount, old.eos_token_id, old.metadata)
    if step_size >= 1:
        return new
    mix = lambda o, n: torch.log((1 - step_size) * o.double().exp() + step_size * n.double().exp()).float()
    return HMM(
        mix(old.log_initial.cpu(), new.log_initial),
        mix(old.log_transition.cpu(), new.log_transition),
        mix(old.log_emission.cpu(), new.log_emission),
        eos_token_id=old.eos_token_id,
        metadata=old.metadata,
    )
