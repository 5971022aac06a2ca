"""Guided vs unconstrained decoding with the same LM, measured in one run.

    python -m benchmarks.decode [--lm-size small|large] [--hidden 256] [--beams 4] [--tokens 32]

CPU default: a random-init GPT-2 small (124 M) over the 50,257-token BPE with a random HMM (H = 256).
On CUDA (`--lm-size large --hidden 4096`): GPT-2 Large-sized random init, bf16, H = 4096 — the production
shape. The floor is the same LM decoding unconstrained with transformers' own beam search
(`model.generate`, same beams, same number of new tokens forced with min_new_tokens). Goal: guided beam
search <= 1.5x unconstrained at H = 4096 with GPT-2 Large on GPU. Writes docs/benchmarks.md ("decode").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks._report import command, machine, table, write_section
from benchmarks.constraints import keyword_sets, load_tokenizer
from pc_core.decoding import generate
from pc_core.hmm import HMM

SIZES = {"tiny": dict(n_layer=2, n_embd=64, n_head=2), "small": dict(n_layer=12, n_embd=768, n_head=12),
         "large": dict(n_layer=36, n_embd=1280, n_head=20)}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode")
    parser.add_argument("--lm-size", choices=sorted(SIZES), default=None)
    parser.add_argument("--hidden", type=int, nargs="+", default=None)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--keywords", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared box)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import GPT2Config, GPT2LMHeadModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = args.lm_size or ("large" if device.type == "cuda" else "small")
    hidden_sizes = args.hidden or ([4096] if device.type == "cuda" else [256])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer, source = load_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.eos_token_id, **SIZES[size])  # fmt: skip
    lm = GPT2LMHeadModel(config).to(device=device, dtype=dtype).eval()
    prompt = "The"
    prompt_ids = torch.tensor([tokenizer.encode(prompt)], device=device)
    n = args.tokens
    rows = []
    for hidden in hidden_sizes:
        hmm = HMM.random(hidden, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id, concentration=2.0,
                         device=device)  # fmt: skip
        for beams in args.beams:

            def unconstrained() -> None:
                with torch.no_grad():
                    lm.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), num_beams=beams,
                                do_sample=False, max_new_tokens=n, min_new_tokens=n, early_stopping=False,
                                pad_token_id=tokenizer.eos_token_id)  # fmt: skip

            unconstrained()
            times = []
            for _ in range(args.reps):
                sync(device)
                t0 = time.perf_counter()
                unconstrained()
                sync(device)
                times.append(time.perf_counter() - t0)
            base = statistics.median(times) / n
            for k in args.keywords:
                spec = {"keywords": keyword_sets(k, 1)[0]}
                out = generate(lm, tokenizer, hmm, spec, prompt=prompt, max_new_tokens=n, min_new_tokens=n,
                               num_beams=beams)  # warm-up: compiles the DFA and precomputes the tables  # fmt: skip
                times, steps = [], []
                for _ in range(args.reps):
                    sync(device)
                    t0 = time.perf_counter()
                    out = generate(lm, tokenizer, hmm, spec, prompt=prompt, max_new_tokens=n, min_new_tokens=n,
                                   num_beams=beams)  # fmt: skip
                    sync(device)
                    times.append(time.perf_counter() - t0)
                    steps.append(max(len(s.token_ids) for s in out.sequences))
                guided = statistics.median(times) / statistics.median(steps)
                assert all(s.constraint_satisfied for s in out.sequences)
                rows.append([size, hidden, beams, k, round(1 / base, 1), round(1 / guided, 1), round(base * 1000, 2),
                             round(guided * 1000, 2), round((guided - base) * 1000, 2), round(guided / base, 2)])  # fmt: skip
                print(rows[-1], flush=True)
    body = (
        "## Decoding: guided vs unconstrained\n\n"
        f"`{command()}` ({machine()}); GPT-2 {size}-shaped random-init LM ({dtype}), {source} "
        f"(V = {len(tokenizer)}), random HMMs (H = {', '.join(map(str, hidden_sizes))}), {n} new tokens forced (min_new_tokens), prompt "
        f'"{prompt}". Unconstrained = transformers `generate` beam search on the same LM in the same run; '
        "guided = `pc_core.generate` (warm: DFA and tables cached). Tokens/s count one token per step "
        "(per sequence, not per beam).\n\n"
        + table(
            [
                "LM",
                "H",
                "beams",
                "keywords",
                "unconstrained tok/s",
                "guided tok/s",
                "unconstrained ms/step",
                "guided ms/step",
                "overhead ms/step",
                "ratio",
            ],
            rows,
        )  # fmt: skip
    )
    print(body)
    write_section("benchmarks.md", "decode", body)


if __name__ == "__main__":
    main()
