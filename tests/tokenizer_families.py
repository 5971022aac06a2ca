"""Tiny tokenizers of each decoder family, trained or built locally with `tokenizers` on text written here
(no downloads), each wrapped in transformers.PreTrainedTokenizerFast with an EOS token:

  * byte_level: GPT-2 style byte-level BPE (ByteLevel pre-tokenizer and decoder, Ġ space marker);
  * llama2: Llama-2 / Mistral / TULU2 style SentencePiece BPE: `▁` word marker, byte_fallback=True with
    the 256 tokens <0x00>..<0xFF> at ids 3..258, <unk>/<s>/</s> specials, the decoder
    Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)];
  * metaspace: a Unigram model with a Metaspace pre-tokenizer and decoder (prepend_scheme "always");
  * wordpiece: a BERT-like WordPiece (## continuation prefix, WordPiece decoder with cleanup).

The training text mixes ASCII with é, ñ, ü, 日本, emoji, so multi-byte characters occur inside tokens, split
across byte-level tokens and (for llama2, whose alphabet is limited) through byte-fallback tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import CORPUS_SENTENCES, corpus_text

EXTRA_SENTENCES = [
    "El niño come piña en España mañana.",
    "Über den Fluß fahren Müller und Jürgen.",
    "東京と日本の天気は晴れです 🌞 ☔.",
    "I ❤️ emoji 🐕‍🦺 and 🎉 parties!",
    "Déjà vu: the café's crème is très bon.",
    "The dog's toy: a red ball, a frisbee, and a stick.",
]
SENTENCES = CORPUS_SENTENCES + EXTRA_SENTENCES
FAMILIES = ["byte_level", "llama2", "metaspace", "wordpiece"]


def family_text(repeats: int = 12, seed: int = 0) -> str:
    return corpus_text(repeats, seed, SENTENCES)


def _write_text(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "corpus.txt"
    path.write_text(family_text(), encoding="utf-8")
    return str(path)


def _wrap(tok, directory: Path, **specials):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    fast.save_pretrained(str(directory))
    return fast


def build_byte_level(directory: Path, vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = Path(directory)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train([_write_text(directory)], trainer)
    tok.add_special_tokens(["<|endoftext|>"])
    eos = "<|endoftext|>"
    return _wrap(tok, directory, eos_token=eos, bos_token=eos, unk_token=eos)


LLAMA2_DECODER = {
    "type": "Sequence",
    "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ],
}


def build_llama2(directory: Path, vocab_size: int = 500, limit_alphabet: int = 60):
    """Llama-2's layout: <unk>=0, <s>=1, </s>=2, <0x00>..<0xFF>=3..258, then the learned pieces. The
    alphabet is limited, so rarer characters (日, 本, emoji, some accents) exist only as byte fallback."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = Path(directory)
    specials = ["<unk>", "<s>", "</s>"]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, limit_alphabet=limit_alphabet, show_progress=False
    )
    trainer_tok.train([_write_text(directory)], trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    vocab = {p: i for i, p in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for piece, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(specials)
    return _wrap(tok, directory, eos_token="</s>", bos_token="<s>", unk_token="<unk>")


def build_metaspace(directory: Path, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = Path(directory)
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train([_write_text(directory)], trainer)
    return _wrap(tok, directory, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def build_wordpiece(directory: Path, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    directory = Path(directory)
    specials = ["[PAD]", "[UNK]", "[SEP]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train([_write_text(directory)], trainer)
    return _wrap(tok, directory, eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")


BUILDERS = {
    "byte_level": build_byte_level,
    "llama2": build_llama2,
    "metaspace": build_metaspace,
    "wordpiece": build_wordpiece,
}


def build_family(name: str, directory: Path):
    return BUILDERS[name](Path(directory) / name)


def plain_ids(tokenizer) -> list[int]:
    """Every id that is not a special token."""
    from pc_core.constraints.token_bytes import special_token_ids

    special = special_token_ids(tokenizer)
    return [i for i in range(len(tokenizer)) if i not in special]


def byte_token_ids(tokenizer) -> dict[int, int]:
    """id -> byte for the byte-fallback tokens <0xNN> (empty for other families)."""
    out = {}
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if piece and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out[i] = int(piece[3:5], 16)
    return out


def resplit(tokenizer, ids, rng, p: float = 0.5) -> list[int]:
    """Another tokenization of the same text: tokens split at random into two vocabulary pieces, and (for
    byte-fallback vocabularies) characters spelled as their <0xNN> byte tokens."""
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    vocab = tokenizer.get_vocab()
    bytes_by_value = {b: i for i, b in byte_token_ids(tokenizer).items()}
    out: list[int] = []

    def emit(piece: str) -> None:
        if rng.random() < p and len(piece) > 1:
            cuts = [k for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
            if cuts:
                k = rng.choice(cuts)
                emit(piece[:k])
                emit(piece[k:])
                return
        if bytes_by_value and rng.random() < p / 2 and piece not in ("▁",) and byte_fallback(piece) is None:
            text = piece.replace("▁", " ")
            if all(b in bytes_by_value for b in text.encode()):
                out.extend(bytes_by_value[b] for b in text.encode())
                return
        out.append(vocab[piece])

    def byte_fallback(piece: str) -> int | None:
        ok = len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
        return int(piece[3:5], 16) if ok else None

    for piece in pieces:
        emit(piece)
    return out
