"""A Llama-3-shaped byte-level BPE with exactly 128,256 tokens, built locally and cached outside the repository.

    python -m benchmarks.vocab128k [--cache DIR] [--threads 1]

Llama-3's tokenizer cannot be downloaded here, so this builds one of the same shape: a byte-level BPE whose
pre-tokenizer is Llama-3's split regex followed by ByteLevel (no prefix space), 128,000 regular tokens and 256
special tokens at 128,000..128,255 (`<|begin_of_text|>`, `<|end_of_text|>` = EOS, reserved ones). The
regular tokens are trained with `tokenizers` on the text under ../shared (CommonGen sentences, the editing
prompts, the method notes) and padded to 128,000 with synthetic merges: pseudo-words in Latin (plain,
capitalised, accented), Cyrillic and CJK script, each added by merging a token that already exists with one
more character (a character's bytes are merged first), so every prefix of a padded word is a token too. Without ../shared the whole vocabulary comes from the synthetic merges.

Built once (about a minute on the 2-core dev box) into `~/.cache/pcgen/benchmarks/bpe-128256-v2`
(`--cache` or PCGEN_BENCH_CACHE moves it). Run as a module, it builds or loads the tokenizer and times the
per-tokenizer tables (`pc_core.constraints.vocab.VocabTables.build`; goal < 3 s) over a few builds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

from benchmarks._report import SHARED

VOCAB_SIZE = 128_256
REGULAR = 128_000
VERSION = 2
DEFAULT_CACHE = "~/.cache/pcgen/benchmarks"
# Llama-3's pre-tokenizer split (tokenizer.json of Meta-Llama-3-8B)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(254)]
EOS = "<|end_of_text|>"
SCRIPTS = (  # (weight, alphabet, capitalise sometimes)
    (70, "abcdefghijklmnopqrstuvwxyz", True),
    (10, "abcdefghijklmnopqrstuvwxyzéèàüöäñçßø", True),
    (10, "абвгдежзийклмнопрстуфхцчшщыьэюя", True),
    (6, "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年", False),
    (4, "0123456789_()[]{}:;.,=+-*/<>", False),
)


def default_cache() -> Path:
    return Path(os.environ.get("PCGEN_BENCH_CACHE", DEFAULT_CACHE)).expanduser()


def _training_files(directory: Path) -> list[str]:
    """Text from ../shared (what exists of it), one sentence or passage per line."""
    lines: list[str] = []
    commongen = SHARED / "data" / "commongen"
    for name in ("commongen.train.tgt.txt", "commongen.dev.tgt.txt"):
        if (commongen / name).exists():
            lines += (commongen / name).read_text(encoding="utf-8").splitlines()
    editing = SHARED / "data" / "editing" / "editing.jsonl"
    if editing.exists():
        for line in editing.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            lines += [v for v in record.values() if isinstance(v, str) and len(v) > 20]
    for doc in (SHARED / "docs").glob("*.md") if (SHARED / "docs").exists() else ():
        lines += doc.read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    path = directory / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return [str(path)]


def _pad(vocab: dict[str, int], merges: list[tuple[str, str]], size: int, seed: int = 0) -> None:
    """Add pseudo-words, byte by byte through merges of existing tokens, until the vocabulary has `size`."""
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    to_char = dict(zip(range(256), sorted(alphabet, key=lambda c: _byte_of(c))))
    rng = random.Random(seed)
    weights = [w for w, _, _ in SCRIPTS]
    while len(vocab) < size:
        _, letters, capitalise = rng.choices(SCRIPTS, weights)[0]
        word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
        if capitalise and rng.random() < 0.2:
            word = word.capitalize()
        if rng.random() < 0.6:
            word = " " + word
        # whole characters first (their bytes merged once, as a trained BPE has them), then the word
        # character by character: the padded tokens end inside a character only while spelling one
        chars = []
        for ch in word:
            pieces = [to_char[b] for b in ch.encode("utf-8")]
            _merge_run(vocab, merges, pieces, size)
            chars.append("".join(pieces))
        _merge_run(vocab, merges, chars, size)


def _merge_run(vocab: dict[str, int], merges: list[tuple[str, str]], pieces: list[str], size: int) -> None:
    """Merge pieces[0] with pieces[1], the result with pieces[2], ...: each new prefix a token."""
    current = pieces[0]
    for piece in pieces[1:]:
        if len(vocab) >= size:
            return
        nxt = current + piece
        if nxt not in vocab:
            vocab[nxt] = len(vocab)
            merges.append((current, piece))
        current = nxt


def _byte_of(char: str) -> int:
    from pc_core.constraints.token_bytes import _UNICODE_TO_BYTE

    return _UNICODE_TO_BYTE[char]


def build(directory: Path):
    """Train, pad and save the tokenizer in `directory`; returns it (PreTrainedTokenizerFast)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet, key=_byte_of))}
    merges: list[tuple[str, str]] = []
    files = _training_files(directory)
    if files:
        trainer_tok = Tokenizer(models.BPE())
        trainer_tok.pre_tokenizer = pre
        trainer = trainers.BpeTrainer(
            vocab_size=REGULAR, min_frequency=2, initial_alphabet=alphabet, show_progress=False
        )
        trainer_tok.train(files, trainer)
        model = json.loads(trainer_tok.to_str())["model"]
        for piece, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
            vocab.setdefault(piece, len(vocab))
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    trained = len(vocab)
    _pad(vocab, merges, REGULAR)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=EOS, clean_up_tokenization_spaces=False
    )
    if len(fast) != VOCAB_SIZE:
        raise RuntimeError(f"built {len(fast)} tokens, expected {VOCAB_SIZE}")
    fast.save_pretrained(str(directory))
    (directory / "built.json").write_text(json.dumps({"trained": trained, "padded": REGULAR - trained}))
    return fast


def load_tokenizer_128k(cache: Path | None = None):
    """(tokenizer, description): the cached tokenizer, built on first use."""
    from transformers import AutoTokenizer

    directory = (cache or default_cache()) / f"bpe-{VOCAB_SIZE}-v{VERSION}"
    if not (directory / "built.json").exists():
        build(directory)
    info = json.loads((directory / "built.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    source = (
        f"Llama-3-shaped byte-level BPE built locally ({info['trained']:,} tokens trained on ../shared text, "
        f"{info['padded']:,} synthetic merges, 256 specials)"
    )
    return tokenizer, source


def main() -> None:
    from pc_core.constraints.vocab import VocabTables, tokenizer_fingerprint

    parser = argparse.ArgumentParser(prog="python -m benchmarks.vocab128k")
    parser.add_argument("--cache", type=Path, default=None, help=f"cache directory (default {DEFAULT_CACHE})")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    tokenizer, source = load_tokenizer_128k(args.cache)
    print(f"{source}: V = {len(tokenizer)}, loaded in {time.perf_counter() - started:.1f} s")
    fingerprint = tokenizer_fingerprint(tokenizer)
    times = []
    for _ in range(args.reps):
        started = time.perf_counter()
        tables = VocabTables.build(tokenizer, fingerprint)
        times.append(time.perf_counter() - started)
    print(
        f"VocabTables.build: median {statistics.median(times):.2f} s (of {[round(t, 2) for t in times]}), "
        f"{int(tables.banned.sum())} banned tokens"
    )


if __name__ == "__main__":
    main()
