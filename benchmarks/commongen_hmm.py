"""Distil the CommonGen proxy LM's HMMs with `pcgen distill run` (two sizes sharing one set of samples).

    python -m benchmarks.commongen_hmm --lm runs/commongen/lm --hidden 256 1024

Samples are continuations of the training concept prompts ("<|endoftext|>c1 c2 c3 =", the proxy LM's
format), so the HMM models the sentences the LM writes for a concept set. Writes runs/commongen/prompts.txt,
one pipeline config per size (runs/commongen/distill-H<h>.yaml) and the HMMs (runs/commongen/hmm-<h>).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks._report import SHARED
from benchmarks.proxy_lm import prompt_for


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.commongen_hmm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lm", default="runs/commongen/lm")
    parser.add_argument("--work", type=Path, default=Path("runs/commongen"))
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "commongen")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--lvd-sequences", type=int, default=20000)
    parser.add_argument("--em-sequences", type=int, default=50000)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 10], help="EM steps per hidden size")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    concept_sets = dict.fromkeys(
        line.strip() for line in (args.data / "commongen.train.src_alpha.txt").open()
    )
    prompts = args.work / "prompts.txt"
    prompts.write_text("".join(f"<|endoftext|>{prompt_for(c.split())}\n" for c in concept_sets if c))
    env = None
    if args.threads:
        import os

        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for hidden, steps in zip(args.hidden, args.steps, strict=True):
        config = {
            "lm": str(Path(args.lm).resolve()),
            "out": str((args.work / f"distill-H{hidden}").resolve()),
            "seed": 0,
            "device": "auto",
            "sample": {"out": str((args.work / "samples").resolve()), "num_sequences": args.lvd_sequences,
                       "seq_len": 32, "batch_size": 256, "save_embeddings": args.lvd_sequences,
                       "prompts": str(prompts.resolve())},
            "em_sample": {"out": str((args.work / "em-samples").resolve()), "num_sequences": args.em_sequences,
                          "seq_len": 32, "batch_size": 256, "prompts": str(prompts.resolve()), "seed": 1},
            "lvd": {"hidden_size": hidden, "kmeans_iters": 25},
            "train": {"out": str((args.work / f"hmm-{hidden}").resolve()), "steps": steps, "batch_size": 512},
        }  # fmt: skip
        path = args.work / f"distill-H{hidden}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"pcgen distill run --config {path}", flush=True)
        subprocess.run([sys.executable, "-m", "pcgen", "distill", "run", "--config", str(path)], check=True,
                       env=env)  # fmt: skip


if __name__ == "__main__":
    main()
