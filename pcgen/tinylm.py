"""Train a small GPT-2 and its byte-level BPE on a list of text lines, on CPU, with caching and resume.

Used by the offline demo (`pcgen demo`) and by the CommonGen proxy LM (benchmarks/proxy_lm.py). Outputs
under `out`: `tokenizer/` and `lm/` (both loadable with transformers' Auto classes); an interrupted
training resumes from `lm-checkpoint.pt` (saved after every epoch).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
EOS = "<|endoftext|>"


@dataclass
class TinyLMConfig:
    vocab_size: int = 8192
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    max_len: int = 64
    epochs: int = 6
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    time_budget_s: float | None = None  # stop after the epoch that crosses it
    init_from: str | None = None  # continue from a saved GPT-2 (same tokenizer) instead of random weights


def train_tokenizer(lines: list[str], out: Path, vocab_size: int) -> Any:
    """GPT-2 conventions: byte-level, Ġ space marker, <|endoftext|> (last id) as EOS/BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (out / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(out))
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(lines, trainer)
    tok.add_special_tokens([EOS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    fast.save_pretrained(str(out))
    return fast


def _train_epoch(
    model: Any, optimizer: Any, data: list[list[int]], cfg: TinyLMConfig, epoch: int, eos: int
) -> dict:
    """One epoch over `data` in a seeded order (learning rate: 200 warm-up steps, then a cosine over all
    epochs); its mean loss, seconds and tokens."""
    import torch

    model.train()
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    order = list(range(len(data)))
    random.Random(cfg.seed + epoch).shuffle(order)
    started, seen, loss_sum = time.time(), 0, 0.0
    for i in range(steps_per_epoch):
        step = epoch * steps_per_epoch + i
        lr = cfg.lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * step / total))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [data[j] for j in order[i * cfg.batch_size : (i + 1) * cfg.batch_size]]
        width = max(len(b) for b in batch)
        ids = torch.full((len(batch), width), eos)  # (batch, width), right-padded with EOS
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            ids[row, : len(b)] = torch.tensor(b)
            mask[row, : len(b)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seen += int(mask.sum())
        loss_sum += loss.item()
        if i % 200 == 0:
            log.info("epoch %d step %d/%d loss %.3f %.0f tok/s", epoch, i, steps_per_epoch, loss.item(),
                     seen / (time.time() - started))  # fmt: skip
    return {
        "epoch": epoch,
        "loss": loss_sum / steps_per_epoch,
        "seconds": time.time() - started,
        "tokens": seen,
    }


def train_lm(lines: list[str], tokenizer: Any, out: Path, cfg: TinyLMConfig) -> Path:
    """Train (or resume, or reuse) a GPT-2 on `lines`, each wrapped as EOS line EOS. Returns out/lm."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    final = out / "lm"
    if (final / "model.safetensors").exists():
        return final
    torch.manual_seed(cfg.seed)
    ckpt = out / "lm-checkpoint.pt"
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.max_len, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, bos_token_id=eos, eos_token_id=eos)  # fmt: skip
    model = GPT2LMHeadModel.from_pretrained(cfg.init_from) if cfg.init_from else GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
    data = [[eos] + ids[: cfg.max_len - 2] + [eos] for ids in encoded]
    start_epoch, history = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state.get("history", [])
        log.info("resuming LM training at epoch %d", start_epoch)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("GPT-2 %.1f M parameters, %d lines, %d epochs", n_params / 1e6, len(data), cfg.epochs)
    began = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        history.append(_train_epoch(model, optimizer, data, cfg, epoch, eos))
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "history": history,
        }
        torch.save(state, ckpt)
        log.info("epoch %d: mean loss %.3f in %.0f s", epoch, history[-1]["loss"], history[-1]["seconds"])
        if cfg.time_budget_s is not None and time.time() - began > cfg.time_budget_s:
            log.info("time budget reached after epoch %d", epoch)
            break
    model.eval()
    model.save_pretrained(str(final))
    tokenizer.save_pretrained(str(final))
    report = {"params": n_params, "lines": len(data), "history": history, "config": asdict(cfg)}
    (out / "lm-train.json").write_text(json.dumps(report, indent=2))
    ckpt.unlink(missing_ok=True)
    return final
