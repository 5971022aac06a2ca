"""Train the CommonGen proxy LM: a small GPT-2 standing in for GPT-2 Large, which cannot be downloaded here.

    python benchmarks/proxy_lm.py [--out runs/commongen] [--epochs 6]

1. A byte-level BPE (GPT-2 conventions: Ġ space marker, <|endoftext|> as EOS) fitted on the CommonGen
   training sentences and concept lists (`--vocab-size`, default 8,192).
2. A GPT-2 (default 4 layers, 256 wide, 4 heads, ~5 M parameters) trained on lines
   "<concepts> = <sentence><|endoftext|>", concepts being the training lemmas ("dog frisbee catch = ...").
   The model therefore writes a sentence for a concept prompt, which is the unconstrained baseline.

Everything is cached under --out: a finished stage is skipped, an interrupted training resumes from its last
epoch checkpoint. On the 2-core dev box one epoch (~0.7 M tokens) takes roughly 10 minutes; see
docs/quality.md for the measured run. Reads ../shared/data/commongen/ (or --data); exits cleanly when absent.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import SHARED  # noqa: E402

log = logging.getLogger("proxy_lm")
EOS = "<|endoftext|>"


def training_lines(data: Path) -> list[str]:
    concepts = (data / "commongen.train.src_alpha.txt").read_text().splitlines()
    sentences = (data / "commongen.train.tgt.txt").read_text().splitlines()
    return [f"{c.strip()} = {s.strip()}" for c, s in zip(concepts, sentences, strict=True)]


def prompt_for(concepts: list[str]) -> str:
    """The prompt format the proxy LM was trained on."""
    return " ".join(concepts) + " ="


def train_tokenizer(lines: list[str], out: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (out / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(out))
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    tok.add_special_tokens([EOS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    fast.save_pretrained(str(out))
    return fast


def encode_lines(tokenizer, lines: list[str], max_len: int) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
    return [[eos] + ids[: max_len - 2] + [eos] for ids in encoded]


def train_lm(args: argparse.Namespace, tokenizer, lines: list[str]) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    final = args.out / "lm"
    if (final / "model.safetensors").exists():
        log.info("proxy LM already trained: %s", final)
        return final
    torch.manual_seed(args.seed)
    ckpt = args.out / "lm-checkpoint.pt"
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.max_len, n_embd=args.n_embd,
                        n_layer=args.n_layer, n_head=args.n_head, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    data = encode_lines(tokenizer, lines, args.max_len)
    steps_per_epoch = math.ceil(len(data) / args.batch_size)
    total = steps_per_epoch * args.epochs
    start_epoch = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        log.info("resuming proxy LM training at epoch %d", start_epoch)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("proxy LM: %.1f M parameters, %d lines, %d epochs", n_params / 1e6, len(data), args.epochs)
    eos = tokenizer.eos_token_id
    history = []
    for epoch in range(start_epoch, args.epochs):
        model.train()
        order = list(range(len(data)))
        random.Random(args.seed + epoch).shuffle(order)
        started, seen, loss_sum = time.time(), 0, 0.0
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            lr = args.lr * min(1.0, step / 200) * 0.5 * (1 + math.cos(math.pi * step / total))
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = [data[j] for j in order[i * args.batch_size : (i + 1) * args.batch_size]]
            width = max(len(b) for b in batch)
            ids = torch.full((len(batch), width), eos)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, b in enumerate(batch):
                ids[row, : len(b)] = torch.tensor(b)
                mask[row, : len(b)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            seen += int(mask.sum())
            loss_sum += float(loss)
            if i % 200 == 0:
                log.info("epoch %d step %d/%d loss %.3f lr %.2e %.0f tok/s", epoch, i, steps_per_epoch,
                         float(loss), lr, seen / (time.time() - started))  # fmt: skip
        history.append({"epoch": epoch, "loss": loss_sum / steps_per_epoch, "seconds": time.time() - started,
                        "tokens": seen})  # fmt: skip
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}, ckpt
        )
        log.info(
            "epoch %d done: mean loss %.3f in %.0f s", epoch, history[-1]["loss"], history[-1]["seconds"]
        )
    model.eval()
    model.save_pretrained(str(final))
    tokenizer.save_pretrained(str(final))
    (args.out / "lm-train.json").write_text(json.dumps({"params": n_params, "history": history,
                                                         "config": vars(args) | {"out": str(args.out)}}, default=str))  # fmt: skip
    ckpt.unlink(missing_ok=True)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "commongen")
    parser.add_argument("--out", type=Path, default=Path("runs/commongen"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not (args.data / "commongen.train.tgt.txt").exists():
        print(f"CommonGen data not found under {args.data}; nothing to do")
        return
    lines = training_lines(args.data)
    tokenizer = train_tokenizer(lines, args.out / "tokenizer", args.vocab_size)
    path = train_lm(args, tokenizer, lines)
    print(path)


if __name__ == "__main__":
    main()
