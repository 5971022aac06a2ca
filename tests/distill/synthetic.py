"""Synthetic teachers with a known answer for the distillation tests: sequences drawn from a given HMM,
"embeddings" that reveal the hidden state through noise (EM recovers the true likelihood; LVD beats random
init), and `write_dataset`, a data directory (distill/data.py's layout) from arrays in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill import data
from pc_core.atomic_files import atomic_write_json
from pc_core.hmm import HMM


def sample_hmm(hmm: HMM, num_sequences: int, seq_len: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ancestral samples: tokens (N, T) and hidden states (N, T), int64."""
    gen = torch.Generator().manual_seed(seed)
    pi = hmm.log_initial.double().exp().cpu()
    a = hmm.log_transition.double().exp().cpu()
    b = hmm.log_emission.double().exp().cpu()
    z = torch.multinomial(pi, num_sequences, replacement=True, generator=gen)  # (N,)
    states, tokens = [], []
    for t in range(seq_len):
        if t:
            z = torch.multinomial(a[z], 1, generator=gen).squeeze(1)
        states.append(z)
        tokens.append(torch.multinomial(b[z], 1, generator=gen).squeeze(1))
    return torch.stack(tokens, 1).numpy(), torch.stack(states, 1).numpy()


def ending_hmm(
    hidden_size: int, vocab_size: int, eos_token_id: int, stop: float = 0.02, seed: int = 0
) -> HMM:
    """A random HMM in the LVD convention: states 0..H-2 never emit EOS and move to the absorbing end
    state H-1 with probability `stop` per step; H-1 emits only EOS (up to a 1e-9 floor)."""
    base = HMM.random(hidden_size, vocab_size, seed=seed, concentration=2.0)
    h = hidden_size
    pi = base.log_initial.double().exp()
    pi[h - 1] = 0
    a = base.log_transition.double().exp()
    a[:, h - 1] = 0
    a = a / a.sum(1, keepdim=True) * (1 - stop)
    a[:, h - 1] = stop
    a[h - 1] = 0
    a[h - 1, h - 1] = 1
    b = base.log_emission.double().exp()
    b[:, eos_token_id] = 0
    b[h - 1] = 0
    b[h - 1, eos_token_id] = 1
    floor = lambda p: (p + 1e-9) / (p + 1e-9).sum(-1, keepdim=True)
    return HMM.from_probs(floor(pi), floor(a), floor(b), eos_token_id=eos_token_id)


def noisy_embeddings(states: np.ndarray, num_states: int, noise: float, seed: int = 0) -> np.ndarray:
    """(N, T, D) one-hot(z) scaled to unit distance apart, plus Gaussian noise; D = num_states."""
    rng = np.random.default_rng(seed)
    onehot = np.eye(num_states, dtype=np.float32)[states]  # (N, T, H)
    return (onehot + noise * rng.standard_normal(onehot.shape).astype(np.float32)).astype(np.float16)


def write_dataset(
    directory: Path,
    tokens: np.ndarray,
    vocab_size: int,
    eos_token_id: int | None,
    embeddings: np.ndarray | None = None,
    shard_size: int = 1 << 16,
    lm: str = "synthetic",
) -> dict:
    """A complete data directory from arrays already in memory (the synthetic teachers above).

    tokens (N, T) ints; embeddings (K, T, D) for the first K sequences, optional.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n, t = tokens.shape
    header = data.new_header(
        lm=lm,
        vocab_size=vocab_size,
        eos_token_id=eos_token_id,
        seq_len=t,
        num_sequences=n,
        shard_size=shard_size,
        settings={"source": lm},
        embedding_dim=None if embeddings is None else int(embeddings.shape[2]),
    )
    entries = []
    for index, start, count in data.plan(n, shard_size):
        emb = None if embeddings is None else embeddings[start : min(start + count, len(embeddings))]
        block = np.asarray(tokens[start : start + count]).astype(data.token_dtype(vocab_size))
        entries.append(data.write_shard(directory, 0, index, start, 0, block, emb))
    manifest = dict(header, shards=entries, complete=True)
    atomic_write_json(directory / data.MANIFEST, manifest)
    return manifest
