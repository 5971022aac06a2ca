"""The E-step of EM (docs/method.md §8.4): forward-backward over batches of sequences, exact in float32.

Per batch of sequences x (B, T), with max-shifts, so that nothing leaves float32's range for any T (a 32-token
text has probability ~1e-100):
    E_t     = exp(log B[:, x_t] - max_z log B[z, x_t])         emissions, shifted in log space (one pass)
    fwd_t   = normalise((fwd_{t-1} @ A) * E_t)                 P(z_t | x_<=t); log P(x) = sum of the log
                                                               normalisers and shifts (float64)
    right_t = E_{t+1} * beta_{t+1} / max,   beta_t = right_t @ A^T          beta_t in [min A, 1]
    gamma_t = normalise(fwd_t * beta_t)                        expected initial / emission counts
    sum_t xi_t = A * (L^T @ R), L, R stacking every (t, b) row of fwd_t / z_t and right_t
Every message keeps a row entry >= min A > 0, so the shifted products cannot underflow; no exp or log is
needed per position (the usual log-space step, pc_core.kernels.log_matmul_exp, costs an exp and a log
per element). Three (B, H) x (H, H) products per token: forward, backward and the transition product, the
floor that benchmarks/em.py measures. Emission counts are an index_add of gamma over the token ids.
"""

from __future__ import annotations

import torch

from distill.counts import Counts
from pc_core.hmm import HMM

TRANSITION_FLOOR = 1e-30


class Prepared:
    """The parameters in the layouts the E-step reads, on the compute device, plus reusable work buffers
    (on CPU a fresh 10-100 MB buffer per call costs more in page faults than the arithmetic on it)."""

    def __init__(self, hmm: HMM, device: torch.device | str) -> None:
        self.pi = hmm.log_initial.to(device).float().exp()  # (H,)
        # (H, H) probability space. Entries below 1e-30 (never after a pseudocount M-step) are raised to it:
        # the messages below rely on every A entry being a normal float32.
        self.A = hmm.log_transition.to(device).float().exp().clamp_min(TRANSITION_FLOOR)
        self.At = self.A.T.contiguous()  # (H, H) for the backward pass
        self.log_bt = hmm.log_emission.to(device).float().T.contiguous()  # (V, H): a row per token
        self.hidden_size = self.A.shape[0]
        self._buffers: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def buffers(self, b: int, t: int) -> dict[str, torch.Tensor]:
        if (b, t) not in self._buffers:
            if len(self._buffers) > 2:  # a few shapes at most: the full batch and a last partial one
                self._buffers.clear()
            new = lambda *shape, dtype=torch.float32: torch.empty(shape, dtype=dtype, device=self.A.device)
            h = self.hidden_size
            self._buffers[(b, t)] = {
                "emit": new(t, b, h),  # (T, B, H) exp(log B[:, x_t] - max): the max-shifted emissions
                "shift": new(t, b, 1),  # (T, B, 1) that max
                "scale": new(t, b, 1),  # (T, B, 1) forward normalisers
                "fwd": new(t, b, h),  # (T, B, H) P(z_t | x_<=t)
                "right": new(t - 1, b, h),  # (T-1, B, H)
                "back": new(t - 1, b, h),  # (T-1, B, H)
                "left": new(t - 1, b, h),  # (T-1, B, H)
                "post": new(t, b, h),  # (T, B, H) P(z_t | x)
                "post64": new(t, b, h, dtype=torch.float64),  # emission counts accumulate in float64
            }
        return self._buffers[(b, t)]


def _emissions(p: Prepared, x: torch.Tensor, ws: dict[str, torch.Tensor]) -> torch.Tensor:
    """ws["emit"] = exp(log B[:, x_t] - shift), ws["shift"] = max_z log B[z, x_t], for all (t, b) at once.
    Returns the time-major token ids (T B,)."""
    tokens = x.T.reshape(-1)  # (T B,)
    emit = ws["emit"]
    torch.index_select(p.log_bt, 0, tokens, out=emit.view(-1, p.hidden_size))
    torch.amax(emit, dim=-1, keepdim=True, out=ws["shift"])
    emit.sub_(ws["shift"]).exp_()  # (T, B, H) in (0, 1], a 1 in every row
    return tokens


def _forward(p: Prepared, ws: dict[str, torch.Tensor], t_len: int) -> torch.Tensor:
    """Normalised forward pass; returns log P(x) (B,) float64 and fills ws["fwd"].

    fwd[t] = P(z_t | x_1..x_t) (rows sum to 1), so (fwd[t-1] @ A)[z] >= min A: multiplied by the shifted
    emission (a 1 in every row) the row sum stays >= min A, far inside float32's range, for any T.
    log P(x) = sum_t (log normaliser_t + shift_t), summed in float64.
    """
    emit, fwd, scale = ws["emit"], ws["fwd"], ws["scale"]
    for t in range(t_len):
        e = p.pi * emit[0] if t == 0 else torch.mul(fwd[t - 1] @ p.A, emit[t], out=fwd[t])  # (B, H)
        torch.sum(e, dim=1, keepdim=True, out=scale[t])  # (B, 1) P(x_t | x_<t) / exp(shift_t)
        torch.div(e, scale[t], out=fwd[t])
    return (scale[:t_len].log().double() + ws["shift"][:t_len].double()).sum(0).squeeze(1)


def log_likelihood(p: Prepared, x: torch.Tensor) -> torch.Tensor:
    """log P(x) per sequence (B,) float64 by the forward pass alone; x (B, T) long on the device."""
    ws = p.buffers(x.shape[0], x.shape[1])
    _emissions(p, x, ws)
    return _forward(p, ws, x.shape[1])


def e_step(p: Prepared, x: torch.Tensor, counts: Counts) -> torch.Tensor:
    """Add the expected counts of x (B, T) to `counts`; returns log P(x) per sequence (B,) float64.

    Log space where the range demands it, with max-shifts: each emission column log B[:, x_t] is shifted
    by its max before exp, and the messages are kept normalised per row (their log-normalisers make up
    log P(x)), so no value ever leaves float32's range, however long the sequence. Backward:
        right_t = E_{t+1} * beta_{t+1} / max          beta_t = right_t @ A^T  in [min A, 1]
    with E the shifted emissions. Per position: three (B, H) x (H, H) products (forward, backward, and the
    transition counts, done as one big product at the end) and a few elementwise passes, no exp or log.
    """
    t_len, h = x.shape[1], p.hidden_size
    ws = p.buffers(x.shape[0], t_len)
    tokens = _emissions(p, x, ws)
    ll = _forward(p, ws, t_len)
    emit, fwd, right, back, post = ws["emit"], ws["fwd"], ws["right"], ws["back"], ws["post"]
    for t in range(t_len - 2, -1, -1):
        r = emit[t + 1] if t == t_len - 2 else torch.mul(emit[t + 1], back[t + 1], out=right[t])  # beta_T = 1
        torch.div(r, r.amax(dim=1, keepdim=True), out=right[t])  # right_t, max 1
        torch.mm(right[t], p.At, out=back[t])  # beta_t up to a row constant
    post[-1] = fwd[-1]
    if t_len > 1:
        # gamma_t ~ fwd_t * beta_t; the row sum z_t is also the normaliser of
        # xi_t(i, j) = fwd_t(i) A(i, j) right_t(j) / z_t, whose entries sum to 1
        torch.mul(fwd[:-1], back, out=post[:-1])
        z = post[:-1].sum(dim=-1, keepdim=True)  # (T-1, B, 1)
        post[:-1].div_(z)
        left = torch.div(fwd[:-1], z, out=ws["left"]).view(-1, h)  # ((T-1) B, H)
        counts.transition += (p.A * (left.T @ right.view(-1, h))).double()
    counts.initial += post[0].sum(0).double()
    counts.emission.index_add_(0, tokens, ws["post64"].copy_(post).view(-1, h))
    return ll
