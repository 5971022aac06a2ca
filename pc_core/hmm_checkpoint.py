"""The HMM's parameters on disk: pcgen's checkpoint format, GeLaTo's torch file, hub ids, and the checks every
loaded model passes (Ctrl-G's layout is read by pc_core.hmm_ctrlg; pc_core.hmm.HMM.load picks the reader).

pcgen's format (`HMM.save`/`HMM.load`): a directory with `config.json` and `model.safetensors` (no pickle). The
config records what the HMM was distilled for, `tokenizer_fingerprint` (pc_core.constraints.vocab) and `lm`
(the LM id), from `metadata` (where distillation puts them); `pc_core.lm.check_pairing` compares them with the
tokenizer and LM it is loaded next to.
GeLaTo: one torch file holding {hidden_states, vocab_size, alpha, beta, gamma}, all log space.
Hub ids (e.g. `ctrlg/hmm_gpt2-large_common-gen_4096`) go through huggingface_hub and work offline from its
cache (HF_HUB_OFFLINE=1).

Readers return `Parameters`, plain tensors: this module knows nothing of the HMM class built from them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pc_core.atomic_files import atomic_path, atomic_write_json
from pc_core.errors import HMMFormatError

FORMAT = "pcgen-hmm"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ROW_TOLERANCE = 1e-3  # |logsumexp(row)| allowed on load (fp32 checkpoints of 50k-wide rows drift ~1e-5)
PROB_FLOOR = 1e-30  # imported checkpoints may hold exact zeros; the guarantee needs every entry > 0


class Parameters(NamedTuple):
    """An HMM's parameters in log space, in the order of HMM's constructor."""

    log_initial: torch.Tensor  # (H,)
    log_transition: torch.Tensor  # (H, H)
    log_emission: torch.Tensor  # (H, V)
    eos_token_id: int | None
    metadata: dict[str, Any]


def log_rows(p: torch.Tensor) -> torch.Tensor:
    """(..., N) probabilities -> fp32 log rows: zeros floored at PROB_FLOOR, rows renormalised in float64."""
    floored = p.double().clamp_min(PROB_FLOOR)
    return torch.log(floored / floored.sum(-1, keepdim=True)).float()


def require(tensors: dict, names: tuple[str, ...], where: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise HMMFormatError(f"{where}: missing tensors {missing} (found {sorted(tensors)})")


# ---------------------------------------------------------------------------------------------- checks


def validate(params: Parameters, where: str = "HMM") -> None:
    """Shapes, finiteness and row sums; raises HMMFormatError naming what is wrong."""
    log_initial, log_transition, log_emission, eos_token_id, _ = params
    if log_emission.dim() != 2:
        raise HMMFormatError(f"{where}: log_emission must be 2-D (H, V), got {tuple(log_emission.shape)}")
    h, v = log_emission.shape
    if tuple(log_transition.shape) != (h, h):
        raise HMMFormatError(
            f"{where}: transition has shape {tuple(log_transition.shape)}, expected ({h}, {h})"
        )
    if tuple(log_initial.shape) != (h,):
        raise HMMFormatError(f"{where}: initial has shape {tuple(log_initial.shape)}, expected ({h},)")
    if h < 2:
        raise HMMFormatError(f"{where}: hidden size must be >= 2, got {h}")
    if eos_token_id is not None and not 0 <= eos_token_id < v:
        raise HMMFormatError(f"{where}: eos_token_id {eos_token_id} is outside the vocabulary (size {v})")
    for name, tensor in (
        ("initial", log_initial),
        ("transition", log_transition),
        ("emission", log_emission),
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


# ---------------------------------------------------------------------------------------------- pcgen's format


def write(directory: str | os.PathLike, params: Parameters, fingerprint: str) -> Path:
    """Write config.json + model.safetensors atomically (a crash leaves the previous files intact)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hidden_size": int(params.log_transition.shape[0]),
        "vocab_size": int(params.log_emission.shape[1]),
        "eos_token_id": params.eos_token_id,
        "fingerprint": fingerprint,
        "tokenizer_fingerprint": params.metadata.get("tokenizer_fingerprint"),
        "lm": params.metadata.get("lm"),
        "metadata": params.metadata,
    }
    tensors = {
        name: getattr(params, name).detach().float().cpu().contiguous()
        for name in ("log_initial", "log_transition", "log_emission")
    }
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(directory / CONFIG, config)
    return directory


def read_config(path: Path) -> dict:
    """A checkpoint directory's config.json (pcgen's or Ctrl-G's)."""
    config_path = path / CONFIG
    if not config_path.exists():
        raise HMMFormatError(f"{path}: no {CONFIG} (expected an HMM directory or a GeLaTo torch file)")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise HMMFormatError(f"{config_path}: not valid JSON ({err})") from err


def read_pcgen(path: Path, config: dict) -> Parameters:
    tensors = _read_safetensors(path / WEIGHTS)
    require(tensors, ("log_initial", "log_transition", "log_emission"), path / WEIGHTS)
    metadata = dict(config.get("metadata") or {})
    for key in ("tokenizer_fingerprint", "lm"):  # the pairing, recorded at the top of the config
        if config.get(key):
            metadata[key] = config[key]
    params = Parameters(
        tensors["log_initial"].float(),
        tensors["log_transition"].float(),
        tensors["log_emission"].float(),
        config.get("eos_token_id"),
        metadata,
    )
    sizes = (("hidden_size", params.log_transition.shape[0]), ("vocab_size", params.log_emission.shape[1]))
    for key, actual in sizes:
        if config.get(key) != int(actual):
            raise HMMFormatError(f"{path}: config says {key}={config.get(key)} but the weights have {actual}")
    return params


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise HMMFormatError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as err:
        raise HMMFormatError(f"{path}: not a readable safetensors file ({err})") from err


# ---------------------------------------------------------------------------------------------- other sources


def read_gelato(path: Path) -> Parameters:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise HMMFormatError(f"{path}: not a readable torch file ({err})") from err
    if not isinstance(data, dict):
        raise HMMFormatError(f"{path}: expected a dict with hidden_states, vocab_size, alpha, beta, gamma")
    require(data, ("hidden_states", "vocab_size", "alpha", "beta", "gamma"), path)
    h, v = int(data["hidden_states"]), int(data["vocab_size"])
    if tuple(data["beta"].shape) != (h, v):
        raise HMMFormatError(
            f"{path}: beta has shape {tuple(data['beta'].shape)}, hidden_states/vocab_size say ({h}, {v})"
        )
    return Parameters(
        log_rows(data["gamma"].double().exp()),
        log_rows(data["alpha"].double().exp()),
        log_rows(data["beta"].double().exp()),
        data.get("eos_token_id"),
        {"source": str(path), "imported_from": "gelato"},
    )


def resolve(source: str | os.PathLike) -> Path:
    """A local path as is; an `owner/name` hub id downloaded (or found in huggingface_hub's cache)."""
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
