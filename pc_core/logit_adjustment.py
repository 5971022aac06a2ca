"""OpenAI-style adjustments of the LM's logits, applied before the guide reweights them.

`LogitAdjustment`: `logit_bias` added to the logits, then `presence_penalty` (once per token already generated)
and `frequency_penalty` (per occurrence) subtracted, as OpenAI defines them. They change the LM's proposal only:
the guide's q(x) still zeroes every token after which the constraint cannot hold, so outputs satisfy it as
before. A bias of -100 is also a ban, which only an automaton can make exact (a ban the guide did not know of
could steer a search into a state whose every continuation is banned): it is compiled into the constraint
(`compiled_constraint.CompiledConstraint.judged`).
"""

from __future__ import annotations

import torch

from pc_core.params import DecodeParams


class LogitAdjustment:
    """logit_bias and the presence / frequency penalties, applied to LM logits (rows, V)."""

    def __init__(self, params: DecodeParams, vocab_size: int, device: torch.device) -> None:
        self.bias: torch.Tensor | None = None
        if params.logit_bias:
            self.bias = torch.zeros(vocab_size, device=device)
            ids = torch.tensor([t for t, _ in params.logit_bias], dtype=torch.long, device=device)
            self.bias[ids] = torch.tensor([float(b) for _, b in params.logit_bias], device=device)
        self.presence = params.presence_penalty
        self.frequency = params.frequency_penalty

    @property
    def active(self) -> bool:
        return self.bias is not None or self.presence != 0 or self.frequency != 0

    def __call__(self, logits: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """`generated` (rows, t): each row's tokens so far, which the penalties count."""
        if self.bias is not None:
            logits = logits + self.bias
        if (self.presence or self.frequency) and generated.shape[1]:
            counts = torch.zeros_like(logits).scatter_add_(
                1, generated, torch.ones_like(generated, dtype=logits.dtype)
            )
            logits = logits - self.frequency * counts - self.presence * (counts > 0).to(logits.dtype)
        return logits
