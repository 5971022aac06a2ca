"""Train the CommonGen proxy LM: a small GPT-2 standing in for GPT-2 Large, which cannot be downloaded here.

    python -m benchmarks.proxy_lm [--out runs/commongen] [--epochs 6]

1. A byte-level BPE (GPT-2 conventions: Ġ space marker, <|endoftext|> as EOS) fitted on the CommonGen
   training sentences and concept lists (`--vocab-size`, default 8,192), with pcgen.tinylm.
2. A GPT-2 (default 4 layers, 256 wide, 4 heads, ~5 M parameters) trained on lines
   "<concepts> = <sentence><|endoftext|>", concepts being the training lemmas ("dog frisbee catch = ...").
   The model therefore writes a sentence for a concept prompt, which is the unconstrained baseline.

Everything is cached under --out: a finished stage is skipped, an interrupted training resumes from its last
epoch checkpoint. On the 2-core dev box one epoch (~0.7 M tokens) takes roughly 10 minutes; see
docs/quality.md for the measured run. Reads ../shared/data/commongen/ (or --data); exits cleanly when absent.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from benchmarks._report import SHARED
from pcgen.tinylm import TinyLMConfig, train_lm, train_tokenizer


def training_lines(data: Path) -> list[str]:
    concepts = (data / "commongen.train.src_alpha.txt").read_text().splitlines()
    sentences = (data / "commongen.train.tgt.txt").read_text().splitlines()
    return [f"{c.strip()} = {s.strip()}" for c, s in zip(concepts, sentences, strict=True)]


def prompt_for(concepts: list[str]) -> str:
    """The prompt format the proxy LM was trained on."""
    return " ".join(concepts) + " ="


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.proxy_lm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "commongen")
    parser.add_argument("--out", type=Path, default=Path("runs/commongen"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-from", default=None, help="continue training a saved proxy LM (more epochs)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy box)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not (args.data / "commongen.train.tgt.txt").exists():
        print(f"CommonGen data not found under {args.data}; nothing to do")
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    lines = training_lines(args.data)
    cfg = TinyLMConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                       max_len=args.max_len, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, init_from=args.init_from)  # fmt: skip
    tokenizer = train_tokenizer(lines, args.out / "tokenizer", cfg.vocab_size)
    print(train_lm(lines, tokenizer, args.out, cfg))


if __name__ == "__main__":
    main()
