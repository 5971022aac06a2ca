"""Tiny, local stand-ins for production models: a byte-level BPE tokenizer trained on text written here (and
the text), a 14-token micro tokenizer for brute-force enumeration, and a small random GPT-2. No network,
seconds to build; tests/shared_builds.py builds them once per run."""

from __future__ import annotations

import random
from pathlib import Path

CORPUS_SENTENCES = [
    "The dog caught a frisbee in the park.",
    "A dog runs to catch the frisbee while the boy throws it.",
    "Dogs love catching frisbees on the field.",
    "The cat sat on the couch next to a category of books.",
    "Cats and kittens sleep on couches all day.",
    "She walked to New York with a friend from new york city.",
    "He cooked a pan of vegetables and put the pan on the stove.",
    "I wake up early and drink coffee before work.",
    "The children played in the snow during the cold winter.",
    "A man stands in the field and looks at the sky.",
    "They ran, jumped and climbed the building quickly!",
    "Café owners serve crème brûlée; naïve tourists pay €5.",
    "日本の猫 and 北京 are words in other scripts 😀 🐶.",
    "Numbers like 42, 3.14 and 2024 appear in text too.",
    "under_score words and e-mail addresses: me@example.com",
    "The quick brown fox jumps over the lazy dog.",
    "Birds fly over the lake while fish swim below.",
    "A girl reads a book under a tree in the garden.",
    "The team won the game and celebrated with the fans.",
    "Rain falls on the roof of the small house at night.",
]
EOS = "<|endoftext|>"


def corpus_text(repeats: int = 20, seed: int = 0, sentences: list[str] = CORPUS_SENTENCES) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(repeats):
        shuffled = sentences[:]
        rng.shuffle(shuffled)
        lines.extend(shuffled)
    return "\n".join(lines)


def random_text(rng, words: list[str], separators: list[str]) -> str:
    """Up to seven words with separators after them, sometimes after a leading space."""
    parts = []
    for _ in range(rng.randint(0, 7)):
        parts.append(rng.choice(words))
        parts.append(rng.choice(separators))
    text = "".join(parts)
    return text if rng.random() < 0.7 else " " + text


def build_tokenizer(directory: Path, vocab_size: int = 700):
    """A GPT-2 style byte-level BPE (Ġ space marker, <|endoftext|> as EOS) as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text_file = directory / "corpus.txt"
    text_file.write_text(corpus_text(), encoding="utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(text_file)], trainer)
    tok.add_special_tokens([EOS])  # last id, like GPT-2
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    fast.save_pretrained(str(directory))
    return fast


def build_tiny_lm(directory: Path, tokenizer, n_layer: int = 2, n_embd: int = 32, seed: int = 0):
    """A random-init GPT-2 with the tokenizer's vocabulary, saved with the tokenizer (loadable by path)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    directory = Path(directory)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return model


def build_micro_tokenizer(directory: Path):
    """A 14-token byte-level vocabulary for brute-force enumeration: words, pieces, punctuation, a split
    two-byte character (Ã + ©), and EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["Ġdog", "Ġcat", "Ġthe", "Ġpan", "dog", "s", "Ġ", ".", "Ġdo", "g", "Ġcats", "Ã", "©"]
    vocab = {p: i for i, p in enumerate(pieces)}
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, unk_token=EOS)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(directory))
    return fast
