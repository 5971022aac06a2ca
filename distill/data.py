"""Sample shards on disk: atomic writes, the manifest, validation and reading.

A data directory holds
    tokens-RRRRR-IIIII.npy       (n, T) uint16 when V < 65,536 else uint32; R = writing rank, I = shard index
    embeddings-RRRRR-IIIII.npy   (k, T, D) float16, the LM state predicting each token, first k rows only
    manifest.json                settings, vocabulary, and one entry per finished shard (seed, count, sha256)
    manifest-rank-RRRRR.json     per-rank lists while a multi-process run is in flight (merged by rank 0)
Shard I holds the global sequences [I * shard_size, I * shard_size + n); its seed depends only on (seed, I),
so the data do not depend on the number of processes that wrote it. Every file is written to a temporary
name and renamed (pc_core.atomic_files), so a kill leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from distill.errors import DistillError
from pc_core.atomic_files import atomic_write, atomic_write_json

FORMAT = "pcgen-distill-data"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDING_DTYPE = "float16"


# ---------------------------------------------------------------------------------------------- naming


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size < 65536 else "uint32"


def shard_file(kind: str, rank: int, index: int) -> str:
    return f"{kind}-{rank:05d}-{index:05d}.npy"


def part_file(rank: int) -> str:
    return f"manifest-rank-{rank:05d}.json"


def shard_seed(seed: int, index: int) -> int:
    """Independent 63-bit seed per shard, a pure function of (seed, shard index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def plan(num_sequences: int, shard_size: int) -> list[tuple[int, int, int]]:
    """(index, first global sequence, count) per shard."""
    return [
        (i, start, min(shard_size, num_sequences - start))
        for i, start in enumerate(range(0, num_sequences, shard_size))
    ]


# ---------------------------------------------------------------------------------------------- files


def atomic_save_npy(path: Path, array: np.ndarray) -> str:
    """Write an .npy file atomically; returns its sha256."""
    atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))
    return sha256_file(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- manifest


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise DistillError(f"{directory}: no {MANIFEST} (not a sample directory; run `pcgen distill sample`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DistillError(f"{path}: not valid JSON ({err})") from err
    if manifest.get("format") != FORMAT:
        raise DistillError(f"{path}: not a {FORMAT} manifest")
    return manifest


def finished_shards(directory: Path) -> dict[int, dict]:
    """Shard entries recorded in manifest.json and in the per-rank part files, by shard index."""
    directory = Path(directory)
    entries: dict[int, dict] = {}
    if (directory / MANIFEST).exists():
        for entry in read_manifest(directory)["shards"]:
            entries[entry["index"]] = entry
    for part in sorted(directory.glob("manifest-rank-*.json")):
        for entry in json.loads(part.read_text()):
            # a shard resampled after its files were lost may be listed twice: the newer entry wins
            old = entries.get(entry["index"])
            if old is None or entry.get("time", 0) >= old.get("time", 0):
                entries[entry["index"]] = entry
    return entries


def merge_manifest(directory: Path, header: dict, final: bool = False) -> dict:
    """Rank 0 only: manifest.json = header + every finished shard; `final` also removes the part files."""
    directory = Path(directory)
    entries = finished_shards(directory)
    manifest = dict(header)
    if header.get("embedding_dim") is None and (directory / MANIFEST).exists():
        old = read_manifest(directory)  # hidden states added later by `pcgen distill embed` stay listed
        if old.get("embed"):
            manifest["embedding_dim"], manifest["embed"] = old["embedding_dim"], old["embed"]
    manifest["shards"] = [entries[i] for i in sorted(entries)]
    manifest["complete"] = len(entries) == header["num_shards"]
    atomic_write_json(directory / MANIFEST, manifest)
    if final and manifest["complete"]:
        for part in directory.glob("manifest-rank-*.json"):
            part.unlink(missing_ok=True)
    return manifest


def record_shard(directory: Path, rank: int, entry: dict, own: list[dict]) -> None:
    """Add a finished shard to this rank's part file (the only manifest file this rank writes)."""
    own[:] = [e for e in own if e["index"] != entry["index"]] + [entry]
    atomic_write_json(Path(directory) / part_file(rank), own)


def shard_is_intact(directory: Path, entry: dict) -> bool:
    """Resume check: the files a finished shard lists exist and still have their recorded sha256."""
    for record in (entry, entry.get("embeddings")):
        if record is None:
            continue
        path = Path(directory) / record["file"]
        if not path.exists() or sha256_file(path) != record["sha256"]:
            return False
    return True


def check_vocab(manifest: dict, vocab_size: int, what: str, directory: Path | str = "data") -> None:
    if manifest["vocab_size"] != vocab_size:
        raise DistillError(
            f"vocabulary mismatch: {directory} was sampled with a vocabulary of {manifest['vocab_size']} "
            f"tokens but {what} has {vocab_size}"
        )


# ---------------------------------------------------------------------------------------------- reading


def _load_array(
    directory: Path, record: dict, shape: tuple[int, ...], dtype: str, verify: bool
) -> np.ndarray:
    path = Path(directory) / record["file"]
    if not path.exists():
        raise DistillError(f"{path}: missing (listed in {MANIFEST}); resample or restore the file")
    if verify and sha256_file(path) != record["sha256"]:
        raise DistillError(f"{path}: sha256 does not match {MANIFEST} (truncated or modified)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DistillError(f"{path}: truncated or not an .npy file ({err})") from err
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise DistillError(
            f"{path}: holds {array.dtype}{list(array.shape)}, {MANIFEST} says {dtype}{list(shape)}"
        )
    return array


def _complete_manifest(directory: Path) -> dict:
    manifest = read_manifest(directory)
    have = {e["index"] for e in manifest["shards"]}
    missing = sorted(set(range(manifest["num_shards"])) - have)
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise DistillError(
            f"{directory}: sampling is incomplete: {len(have)} of {manifest['num_shards']} shards finished "
            f"(missing shard indices {shown}); rerun the same `pcgen distill sample` command to finish"
        )
    return manifest


def load_tokens(directory: Path, verify: bool = True) -> tuple[np.ndarray, dict]:
    """All sequences in shard order, (N, T) in the stored dtype, after validating every shard."""
    directory = Path(directory)
    manifest = _complete_manifest(directory)
    t, dtype = manifest["seq_len"], manifest["token_dtype"]
    arrays = [
        _load_array(directory, e, (e["num_sequences"], t), dtype, verify)
        for e in sorted(manifest["shards"], key=lambda e: e["index"])
    ]
    tokens = np.concatenate(arrays) if arrays else np.zeros((0, t), dtype=dtype)
    if tokens.size and int(tokens.max()) >= manifest["vocab_size"]:
        raise DistillError(
            f"{directory}: token id {int(tokens.max())} >= vocab_size {manifest['vocab_size']}"
        )
    return tokens, manifest


class Embedded:
    """The sequences that have stored hidden states, read shard by shard (memory stays bounded)."""

    def __init__(self, directory: Path, verify: bool = True) -> None:
        self.directory = Path(directory)
        self.manifest = _complete_manifest(self.directory)
        self.dim = self.manifest.get("embedding_dim")
        t = self.manifest["seq_len"]
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []  # (tokens (k, T), embeddings (k, T, D)) memmaps
        for e in sorted(self.manifest["shards"], key=lambda e: e["index"]):
            record = e.get("embeddings")
            if not record:
                continue
            tokens = _load_array(
                self.directory, e, (e["num_sequences"], t), self.manifest["token_dtype"], verify
            )
            k = record["num_sequences"]
            emb = _load_array(self.directory, record, (k, t, self.dim), EMBEDDING_DTYPE, verify)
            self.parts.append((tokens[:k], emb))
        if not self.parts:
            raise DistillError(
                f"{self.directory}: no stored hidden states; sample with --save-embeddings N for LVD"
            )
        self.num_sequences = sum(len(p[0]) for p in self.parts)

    @property
    def tokens(self) -> np.ndarray:
        """(K, T) the sequences with hidden states, in order."""
        return np.concatenate([p[0] for p in self.parts])

    def chunks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(tokens (n, T), embeddings (n, T, D) float16) blocks of at most `rows` sequences, in order."""
        for tokens, emb in self.parts:
            for start in range(0, len(tokens), rows):
                yield np.array(tokens[start : start + rows]), np.array(emb[start : start + rows])  # copies


# ---------------------------------------------------------------------------------------------- writing


def new_header(
    *,
    lm: str,
    vocab_size: int,
    eos_token_id: int | None,
    seq_len: int,
    num_sequences: int,
    shard_size: int,
    settings: dict,
    tokenizer_fingerprint: str | None = None,
    embedding_dim: int | None = None,
) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lm": lm,
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "vocab_size": vocab_size,
        "eos_token_id": eos_token_id,
        "seq_len": seq_len,
        "token_dtype": token_dtype(vocab_size),
        "num_sequences": num_sequences,
        "shard_size": shard_size,
        "num_shards": len(plan(num_sequences, shard_size)),
        "embedding_dim": embedding_dim,
        "settings": settings,
    }


def write_shard(
    directory: Path,
    rank: int,
    index: int,
    start: int,
    seed: int,
    tokens: np.ndarray,
    embeddings: np.ndarray | None = None,
) -> dict:
    """Write one shard's files atomically and return its manifest entry (not yet recorded)."""
    directory = Path(directory)
    name = shard_file("tokens", rank, index)
    entry = {
        "index": index,
        "rank": rank,
        "file": name,
        "start": start,
        "num_sequences": int(tokens.shape[0]),
        "seed": seed,
        "time": time.time(),
        "dtype": str(tokens.dtype),
        "sha256": atomic_save_npy(directory / name, tokens),
        "embeddings": None,
    }
    if embeddings is not None and len(embeddings):
        ename = shard_file("embeddings", rank, index)
        emb = embeddings.astype(EMBEDDING_DTYPE)
        entry["embeddings"] = {
            "file": ename,
            "num_sequences": int(emb.shape[0]),
            "dim": int(emb.shape[2]),
            "dtype": EMBEDDING_DTYPE,
            "sha256": atomic_save_npy(directory / ename, emb),
        }
    return entry
