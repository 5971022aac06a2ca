"""The hidden Markov model (docs/method.md §2), its checkpoint format and importers.

Parameters live in log space: `log_initial` (H,), `log_transition` (H, H), `log_emission` (H, V). The guide
and EM work in probability space with max-shifted matmuls; `transition_probs()`, `emission_probs()` (H, V)
and `emission_t()` (V, H) give cached copies on the model's device. The guide multiplies with
`emission_block()` (rows scaled per token, packed for oneDNN on CPU; bf16 optional, halving the memory read
per guide step) and takes class masses from `block_totals()`; it builds no other emission-sized copy.

On disk (`HMM.save`/`HMM.load`): a directory with `config.json` and `model.safetensors` (no pickle). The config
records what the HMM was distilled for, `tokenizer_fingerprint` (pc_core.constraints.vocab) and `lm` (the LM
id), from `metadata` (where distillation puts them); `pc_core.lm.check_pairing` compares them with the
tokenizer and LM it is loaded next to.
`HMM.load` also reads, and `pcgen import-hmm` converts, the reference systems' checkpoints:
  * Ctrl-G (joshuacnf/Ctrl-G, ctrlg/hmm.py, saved by huggingface_hub's PyTorchModelHubMixin): `config.json`
    {hidden_states, vocab_size, eos_token_id} + `model.safetensors` (`pytorch_model.bin` from a
    huggingface_hub older than 0.21) {alpha_exp (H, H) transition in probability space, beta (H, V) log
    emission, gamma (H,) log initial}, rows indexed by hidden state: ctrlg/hmm_gpt2-large_common-gen_4096,
    and ctrlg/hmm_tulu2-7b_writing-prompts_32768 (H = 32768 over Llama-2's 32,000 tokens, EOS 2), converted
    a block of rows at a time from the memory-mapped file (`_load_ctrlg`);
  * GeLaTo: one torch file holding {hidden_states, vocab_size, alpha, beta, gamma}, all log space.
Hub ids (e.g. `ctrlg/hmm_gpt2-large_common-gen_4096`) go through huggingface_hub and work offline from its
cache (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from pc_core.errors import HMMFormatError
from pc_core.files import atomic_path, atomic_write_json
from pc_core.kernels import onednn_packed

FORMAT = "pcgen-hmm"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ROW_TOLERANCE = 1e-3  # |logsumexp(row)| allowed on load (fp32 checkpoints of 50k-wide rows drift ~1e-5)
PROB_FLOOR = 1e-30  # imported checkpoints may hold exact zeros; the guarantee needs every entry > 0


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
        norm = lambda p: torch.log(
            p.double().clamp_min(PROB_FLOOR) / p.double().clamp_min(PROB_FLOOR).sum(-1, keepdim=True)
        )
        return cls(
            norm(initial).float(), norm(transition).float(), norm(emission).float(), eos_token_id, metadata
        )

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors atomically (a crash leaves the previous files intact)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "eos_token_id": self.eos_token_id,
            "fingerprint": self.fingerprint,
            "tokenizer_fingerprint": self.metadata.get("tokenizer_fingerprint"),
            "lm": self.metadata.get("lm"),
            "metadata": self.metadata,
        }
        tensors = {
            "log_initial": self.log_initial.detach().float().cpu().contiguous(),
            "log_transition": self.log_transition.detach().float().cpu().contiguous(),
            "log_emission": self.log_emission.detach().float().cpu().contiguous(),
        }
        with atomic_path(directory / WEIGHTS) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_json(directory / CONFIG, config)
        return directory

    @classmethod
    def load(cls, source: str | os.PathLike, device: str | torch.device = "cpu") -> HMM:
        """Load a pcgen, Ctrl-G or GeLaTo checkpoint from a path or a hub id, validating it."""
        path = _resolve(source)
        if path.is_file():
            hmm = _load_gelato(path)
        else:
            config_path = path / CONFIG
            if not config_path.exists():
                raise HMMFormatError(
                    f"{path}: no {CONFIG} (expected an HMM directory or a GeLaTo torch file)"
                )
            try:
                config = json.loads(config_path.read_text())
            except json.JSONDecodeError as err:
                raise HMMFormatError(f"{config_path}: not valid JSON ({err})") from err
            if config.get("format") == FORMAT:
                hmm = _load_pcgen(path, config)
            elif "hidden_states" in config:
                hmm = _load_ctrlg(path, config)
            else:
                raise HMMFormatError(
                    f"{config_path}: unknown HMM format (no 'format' or 'hidden_states' key)"
                )
        hmm.validate(str(source))
        return hmm.to(device)

    def validate(self, where: str = "HMM") -> None:
        """Shapes, finiteness and row sums; raises HMMFormatError naming what is wrong."""
        h, v = self.log_emission.shape if self.log_emission.dim() == 2 else (None, None)
        if self.log_emission.dim() != 2:
            raise HMMFormatError(
                f"{where}: log_emission must be 2-D (H, V), got {tuple(self.log_emission.shape)}"
            )
        if tuple(self.log_transition.shape) != (h, h):
            raise HMMFormatError(
                f"{where}: transition has shape {tuple(self.log_transition.shape)}, expected ({h}, {h})"
            )
        if tuple(self.log_initial.shape) != (h,):
            raise HMMFormatError(
                f"{where}: initial has shape {tuple(self.log_initial.shape)}, expected ({h},)"
            )
        if h < 2:
            raise HMMFormatError(f"{where}: hidden size must be >= 2, got {h}")
        if self.eos_token_id is not None and not 0 <= self.eos_token_id < v:
            raise HMMFormatError(
                f"{where}: eos_token_id {self.eos_token_id} is outside the vocabulary (size {v})"
            )
        for name, tensor in (
            ("initial", self.log_initial),
            ("transition", self.log_transition),
            ("emission", self.log_emission),
        ):
            if torch.isnan(tensor).any() or torch.isposinf(tensor).any():
                raise HMMFormatError(f"{where}: {name} holds NaN or +inf values")
            if torch.isneginf(tensor).any():
                raise HMMFormatError(f"{where}: {name} holds zero probabilities; every entry must be > 0")
            sums = torch.logsumexp(tensor.double(), dim=-1)
            worst = float(sums.abs().max())
            if worst > ROW_TOLERANCE:
                raise HMMFormatError(
                    f"{where}: {name} rows do not sum to 1 (worst |log sum| = {worst:.3g} > {ROW_TOLERANCE})"
                )


# ---------------------------------------------------------------------------------------------- helpers


def _resolve(source: str | os.PathLike) -> Path:
    path = Path(source)
    if path.exists():
        return path
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        from pc_core.hub import first_line, hub_status

        status = hub_status(text, (CONFIG,))  # offline and not cached: say so now, not after the retries
        if status.problem:
            raise HMMFormatError(f"cannot load HMM {text!r}: {status.problem}")
        try:
            return Path(snapshot_download(text, local_files_only=status.local_files_only))
        except Exception as err:  # unknown repo, ...
            raise HMMFormatError(
                f"cannot load HMM {text!r} from the hub or its local cache: {first_line(err)}"
            ) from err
    raise HMMFormatError(
        f"no HMM at {text}: no such file or directory (expected a directory with {CONFIG} and {WEIGHTS}, a "
        "GeLaTo torch file, or a hub id owner/name)"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise HMMFormatError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as err:
        raise HMMFormatError(f"{path}: not a readable safetensors file ({err})") from err


def _require(tensors: dict, names: tuple[str, ...], where: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise HMMFormatError(f"{where}: missing tensors {missing} (found {sorted(tensors)})")


def _load_pcgen(path: Path, config: dict) -> HMM:
    tensors = _read_safetensors(path / WEIGHTS)
    _require(tensors, ("log_initial", "log_transition", "log_emission"), path / WEIGHTS)
    metadata = dict(config.get("metadata") or {})
    for key in ("tokenizer_fingerprint", "lm"):  # the pairing, recorded at the top of the config
        if config.get(key):
            metadata[key] = config[key]
    hmm = HMM(
        tensors["log_initial"].float(),
        tensors["log_transition"].float(),
        tensors["log_emission"].float(),
        config.get("eos_token_id"),
        metadata,
    )
    for key, actual in (("hidden_size", hmm.hidden_size), ("vocab_size", hmm.vocab_size)):
        if config.get(key) != actual:
            raise HMMFormatError(f"{path}: config says {key}={config.get(key)} but the weights have {actual}")
    return hmm


CTRLG_TORCH_WEIGHTS = "pytorch_model.bin"  # what PyTorchModelHubMixin wrote before huggingface_hub 0.21
CTRLG_BLOCK_BYTES = 2**27  # float64 bytes per block of rows converted at a time (128 MiB)


class _CtrlGWeights:
    """Rows of the Ctrl-G tensors, read a block at a time: safetensors through `safe_open` (memory-mapped),
    a torch file through `torch.load(mmap=True, weights_only=True)` (no pickled objects)."""

    def __init__(self, path: Path) -> None:
        self.file = path / WEIGHTS if (path / WEIGHTS).exists() else path / CTRLG_TORCH_WEIGHTS
        self._safe: Any = None
        self._tensors: dict[str, torch.Tensor] = {}
        if self.file.name == WEIGHTS:
            from safetensors import safe_open

            try:
                self._safe = safe_open(str(self.file), framework="pt", device="cpu")
                self.names = set(self._safe.keys())
            except Exception as err:
                raise HMMFormatError(f"{self.file}: not a readable safetensors file ({err})") from err
        elif self.file.exists():
            try:
                data = torch.load(str(self.file), map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise HMMFormatError(f"{self.file}: not a readable torch file ({err})") from err
            if not isinstance(data, dict):
                raise HMMFormatError(f"{self.file}: expected a state dict of tensors")
            self._tensors = {k: t for k, t in data.items() if isinstance(t, torch.Tensor)}
            self.names = set(self._tensors)
        else:
            raise HMMFormatError(f"{path}: missing {WEIGHTS} (or {CTRLG_TORCH_WEIGHTS})")
        _require({n: None for n in self.names}, ("alpha_exp", "beta", "gamma"), self.file)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._safe is not None:
            return tuple(self._safe.get_slice(name).get_shape())
        return tuple(self._tensors[name].shape)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of a 2-D tensor, or the whole of a 1-D one."""
        if self._safe is not None:
            piece = self._safe.get_slice(name)
            return piece[start:stop] if len(piece.get_shape()) == 2 else piece[:]
        tensor = self._tensors[name]
        return tensor[start:stop] if tensor.dim() == 2 else tensor


def _ctrlg_log_rows(weights: _CtrlGWeights, name: str, log_space: bool) -> torch.Tensor:
    """A Ctrl-G tensor as pcgen's fp32 log-space rows, normalised as HMM.from_probs does (zeros floored at
    PROB_FLOOR, rows renormalised in float64), one block of rows at a time: the whole tensor never exists in
    float64, so a 32768 x 32000 emission imports with its fp32 result (3.9 GiB) and a 128 MiB block in memory
    rather than several float64 copies (8 GiB each)."""
    shape = weights.shape(name)
    height, width = (1, shape[0]) if len(shape) == 1 else shape
    out = torch.empty(height, width, dtype=torch.float32)
    step = max(1, CTRLG_BLOCK_BYTES // (8 * width))
    for start in range(0, height, step):
        stop = min(height, start + step)
        block = weights.rows(name, start, stop).reshape(stop - start, width).to(torch.float64, copy=True)
        if log_space:
            block = block.exp_()
        block = block.clamp_min_(PROB_FLOOR)
        out[start:stop] = torch.log(block / block.sum(-1, keepdim=True))
    return out if len(shape) == 2 else out[0]


def _load_ctrlg(path: Path, config: dict) -> HMM:
    """A Ctrl-G checkpoint (the layout in the module docstring): gamma and beta are log-softmax rows, alpha_exp
    softmax rows, each row a hidden state; the vocabulary is the LM's, specials included (Llama-2: <unk> <s>
    </s> at 0..2, EOS 2), so token ids need no mapping. gamma may also be stored as (1, H)."""
    weights = _CtrlGWeights(path)
    h, v = config.get("hidden_states"), config.get("vocab_size")
    expected = {"alpha_exp": [(h, h)], "beta": [(h, v)], "gamma": [(h,), (1, h)]}
    for name, shapes in expected.items():
        if weights.shape(name) not in shapes:
            raise HMMFormatError(
                f"{weights.file}: {name} has shape {weights.shape(name)}, config.json (hidden_states={h}, "
                f"vocab_size={v}) says {' or '.join(str(s) for s in shapes)}"
            )
    return HMM(
        _ctrlg_log_rows(weights, "gamma", log_space=True).reshape(-1),
        _ctrlg_log_rows(weights, "alpha_exp", log_space=False),
        _ctrlg_log_rows(weights, "beta", log_space=True),
        config.get("eos_token_id"),
        {"source": str(path), "imported_from": "ctrl-g"},
    )


def _load_gelato(path: Path) -> HMM:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise HMMFormatError(f"{path}: not a readable torch file ({err})") from err
    if not isinstance(data, dict):
        raise HMMFormatError(f"{path}: expected a dict with hidden_states, vocab_size, alpha, beta, gamma")
    _require(data, ("hidden_states", "vocab_size", "alpha", "beta", "gamma"), path)
    h, v = int(data["hidden_states"]), int(data["vocab_size"])
    if tuple(data["beta"].shape) != (h, v):
        raise HMMFormatError(
            f"{path}: beta has shape {tuple(data['beta'].shape)}, hidden_states/vocab_size say ({h}, {v})"
        )
    return HMM.from_probs(
        data["gamma"].double().exp(),
        data["alpha"].double().exp(),
        data["beta"].double().exp(),
        data.get("eos_token_id"),
        {"source": str(path), "imported_from": "gelato"},
    )
