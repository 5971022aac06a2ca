"""The hidden Markov model (docs/method.md §2): its parameters and the probability-space views the guide reads.

Parameters live in log space: `log_initial` (H,), `log_transition` (H, H), `log_emission` (H, V). The guide
and EM work in probability space with max-shifted matmuls; `transition_probs()`, `emission_probs()` (H, V)
and `emission_t()` (V, H) give cached copies on the model's device. The guide multiplies with
`emission_block()` (rows scaled per token, packed for oneDNN on CPU; bf16 optional, halving the memory read
per guide step) and takes class masses from `block_totals()`; it builds no other emission-sized copy.

`HMM.save`/`HMM.load` read and write checkpoints through pc_core.hmm_checkpoint (pcgen's format, GeLaTo, hub
ids, the checks on load) and pc_core.hmm_ctrlg (Ctrl-G's layout, also converted by `pcgen import-hmm`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from pc_core import hmm_checkpoint
from pc_core.errors import HMMFormatError
from pc_core.hmm_checkpoint import CONFIG, FORMAT, Parameters, log_rows
from pc_core.hmm_ctrlg import read_ctrlg
from pc_core.kernels import onednn_packed


class HMM:
    def __init__(
        self,
        log_initial: torch.Tensor,
        log_transition: torch.Tensor,
        log_emission: torch.Tensor,
        eos_token_id: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.log_initial = log_initial
        self.log_transition = log_transition
        self.log_emission = log_emission
        self.eos_token_id = eos_token_id
        self.metadata = dict(metadata or {})
        self._cache: dict[tuple, Any] = {}
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ shapes and copies

    @property
    def hidden_size(self) -> int:
        return int(self.log_transition.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.log_emission.shape[1])

    @property
    def device(self) -> torch.device:
        return self.log_transition.device

    def to(self, device: str | torch.device) -> HMM:
        device = torch.device(device)
        if device == self.device:
            return self
        out = HMM(
            self.log_initial.to(device),
            self.log_transition.to(device),
            self.log_emission.to(device),
            self.eos_token_id,
            self.metadata,
        )
        out._fingerprint = self._fingerprint
        return out

    def transition_probs(self) -> torch.Tensor:
        """(H, H) A[z, z'] in probability space, fp32, cached."""
        return self._cached(("A",), lambda: self.log_transition.float().exp())

    def transition_scaled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A / colmax, log colmax): A[z, z'] with each column divided by its largest entry, (H, H) fp32, and
        the (H,) log of those maxima; cached. A forward step taken with the scaled matrix and the log factor
        added back stays exact for states every transition into is tiny (e^-100 is denormal in fp32)."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            log_a = self.log_transition.float()
            peak = log_a.amax(dim=0)  # (H,)
            peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
            return (log_a - peak).exp(), peak

        return self._cached(("A-scaled",), build)

    def emission_probs(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(H, V) B[z, x] in probability space, cached per dtype (bf16 halves the bytes a guide step reads)."""
        return self._cached(("B", dtype), lambda: self.log_emission.float().exp().to(dtype).contiguous())

    def emission_t(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(V, H) B^T in probability space, contiguous, cached per dtype: one row per token."""
        return self._cached(("Bt", dtype), lambda: self.log_emission.float().T.exp().to(dtype).contiguous())

    def emission_scaled_t(
        self, token_ids: torch.Tensor | None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """(n, H) rows of B^T for `token_ids` (all when None), each token's column divided by its largest
        entry, B[z, x] / max_z' B[z', x]. The guide only takes ratios of two products over the same token,
        from which that factor cancels; scaled, a token the model almost never emits (log B ~ -100, zero in
        float32) still has entries of 1, so its products do not underflow."""
        # index_select, not [:, ids]: ~3x faster on the row-major (H, V) matrix (25 vs 82 ms, 600 columns)
        log_b = self.log_emission if token_ids is None else self.log_emission.index_select(1, token_ids)
        rows = log_b.T.float().clone(memory_format=torch.contiguous_format)  # (n, H), a copy
        peak = rows.amax(dim=1, keepdim=True)
        rows.sub_(torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))).exp_()
        return rows.to(dtype)

    def emission_block(
        self, token_ids: torch.Tensor | None, key: str, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor | onednn_packed.Packed:
        """`emission_scaled_t(token_ids)` as the right operand of the guide's product, cached under `key`:
        (V_k, H) contiguous, or packed for oneDNN on CPU (the fast path; then no plain copy is kept). Costs
        one more emission-sized buffer per partition of the vocabulary."""

        def build() -> torch.Tensor | onednn_packed.Packed:
            rows = self.emission_scaled_t(token_ids, dtype)
            return onednn_packed.pack(rows) or rows

        return self._cached(("Bt-block", key, dtype), build)

    def block_totals(self, block_of: torch.Tensor, key: str) -> torch.Tensor:
        """(K, H) float64: sum of B[z, x] over the tokens x of each vocabulary block (block_of: (V,) block
        ids 0..K-1), cached under `key`. Exponentials and sums are float64, so that a guide can take a
        block's mass minus a few tokens without losing digits (pc_core.class_masses). One pass over B per
        model and partition: 1.8 s at H = 4096 on one CPU thread."""

        def build() -> torch.Tensor:
            num_blocks = int(block_of.max()) + 1
            out = torch.zeros(self.hidden_size, num_blocks, dtype=torch.float64, device=self.device)
            chunk = max(1, 2**21 // self.vocab_size)  # (chunk, V) float64 temporaries of ~16 MB
            for start in range(0, self.hidden_size, chunk):
                rows = self.log_emission[start : start + chunk].double().exp_()  # (chunk, V)
                out[start : start + chunk].index_add_(1, block_of, rows)
            return out.T.contiguous()

        return self._cached(("block-totals", key), build)

    def suffix_log_backward(self, token_ids: Any) -> torch.Tensor:
        """(H,) float64 log P(x_1..x_m | z_1 = z): the probability that the hidden state z emits the suffix's
        first token and the chain goes on to emit the rest, by one backward pass over its m tokens (m
        matrix-vector products, H^2 each). The guide's terminal vector for infilling (docs/method.md §5.3).
        Each step shifts by the vector's peak so that no entry underflows, and adds the shift back in log
        space (float64); every A entry is > 0, so A @ exp(v - peak) >= min A > 0 and its log is finite. The
        product itself reads the cached float32 A (a float64 copy would double the bytes every step reads)."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("the suffix's tokens are empty: there is nothing to condition on")
        columns = self.log_emission[:, ids].double().T  # (m, H): only the suffix's columns of B
        transition = self.transition_probs()  # (H, H) float32
        out = columns[-1]  # log P(x_m | z_m)
        for i in range(len(ids) - 2, -1, -1):
            peak = out.max()
            # P(x_i.. | z_i) = B[z_i, x_i] sum_z' A[z_i, z'] P(x_{i+1}.. | z_{i+1} = z')
            step = transition @ torch.exp(out - peak).float()  # (H,), >= min A
            out = columns[i] + torch.log(step.double()) + peak
        return out

    def _cached(self, key: tuple, build: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the parameters and EOS id: identical models share cached guide tables and responses."""
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps([self.hidden_size, self.vocab_size, self.eos_token_id]).encode())
            for tensor in (self.log_initial, self.log_transition, self.log_emission):
                h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    # ------------------------------------------------------------------ construction

    @classmethod
    def random(
        cls,
        hidden_size: int,
        vocab_size: int,
        seed: int = 0,
        eos_token_id: int | None = None,
        concentration: float = 1.0,
        device: str | torch.device = "cpu",
    ) -> HMM:
        """Random HMM for tests: rows are softmax(N(0, concentration)) so they are non-uniform and > 0."""
        if hidden_size < 1 or vocab_size < 1:
            raise ValueError("hidden_size and vocab_size must be >= 1")
        gen = torch.Generator().manual_seed(seed)
        logits = lambda *shape: torch.randn(*shape, generator=gen) * concentration
        hmm = cls(
            torch.log_softmax(logits(hidden_size), -1),
            torch.log_softmax(logits(hidden_size, hidden_size), -1),
            torch.log_softmax(logits(hidden_size, vocab_size), -1),
            eos_token_id=eos_token_id,
            metadata={"source": f"random(seed={seed})"},
        )
        return hmm.to(device)

    @classmethod
    def from_probs(
        cls,
        initial: torch.Tensor,
        transition: torch.Tensor,
        emission: torch.Tensor,
        eos_token_id: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> HMM:
        """From probability-space parameters; zeros are floored at PROB_FLOOR and rows renormalised."""
        return cls(log_rows(initial), log_rows(transition), log_rows(emission), eos_token_id, metadata)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors atomically (a crash leaves the previous files intact)."""
        return hmm_checkpoint.write(directory, self._parameters(), self.fingerprint)

    @classmethod
    def load(cls, source: str | os.PathLike, device: str | torch.device = "cpu") -> HMM:
        """Load a pcgen, Ctrl-G or GeLaTo checkpoint from a path or a hub id, validating it."""
        hmm = cls(*_read(hmm_checkpoint.resolve(source)))
        hmm.validate(str(source))
        return hmm.to(device)

    def validate(self, where: str = "HMM") -> None:
        """Shapes, finiteness and row sums; raises HMMFormatError naming what is wrong."""
        hmm_checkpoint.validate(self._parameters(), where)

    def _parameters(self) -> Parameters:
        return Parameters(
            self.log_initial, self.log_transition, self.log_emission, self.eos_token_id, self.metadata
        )


def _read(path: Path) -> Parameters:
    """The parameters of the checkpoint at `path`, by its layout: a GeLaTo torch file, or a directory whose
    config.json is pcgen's (a `format` key) or Ctrl-G's (`hidden_states`)."""
    if path.is_file():
        return hmm_checkpoint.read_gelato(path)
    config = hmm_checkpoint.read_config(path)
    if config.get("format") == FORMAT:
        return hmm_checkpoint.read_pcgen(path, config)
    if "hidden_states" in config:
        return read_ctrlg(path, config)
    raise HMMFormatError(f"{path / CONFIG}: unknown HMM format (no 'format' or 'hidden_states' key)")
