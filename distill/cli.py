"""`pcgen distill {sample,embed,lvd,train,run}`. Only argparse here: each command imports its stage lazily.

Every setting is a flag named after the field of the stage's config dataclass (same defaults), so the
flags, the YAML/TOML keys of `run --config` and the Python API stay one list.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
from collections.abc import Callable


def setup_logging() -> None:
    rank = f" [rank {os.environ['RANK']}]" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s{rank}: %(message)s",
        datefmt="%H:%M:%S",
    )


def _from_args(cls: type, args: argparse.Namespace) -> object:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def shutdown() -> None:
    from distill import dist

    dist.shutdown()


def _run(stage: Callable[[], object]) -> int:
    """The pattern of every command: logging on, run the stage, leave the process group however it ends.
    Errors propagate to `pcgen`'s main, which reports a PcgenError (DistillError) with exit status 2."""
    setup_logging()
    try:
        stage()
    finally:
        shutdown()
    return 0


def _stage_command(module: str, config: str, runner: str) -> Callable[[argparse.Namespace], int]:
    """`pcgen distill STAGE`: build `module.config` from the flags (named after its fields), run
    `module.runner` on it. The module is imported when the command runs, not when the parser is built."""

    def command(args: argparse.Namespace) -> int:
        stage = importlib.import_module(module)
        cfg = _from_args(getattr(stage, config), args)
        return _run(lambda: getattr(stage, runner)(cfg))

    command.__name__ = f"cmd_{runner.removeprefix('run_')}"
    return command


cmd_sample = _stage_command("distill.sample", "SampleConfig", "run_sample")
cmd_embed = _stage_command("distill.embed", "EmbedConfig", "run_embed")
cmd_lvd = _stage_command("distill.lvd", "LVDConfig", "run_lvd")
cmd_train = _stage_command("distill.em", "TrainConfig", "run_train")


def cmd_run(args: argparse.Namespace) -> int:
    from distill.pipeline import run_pipeline

    return _run(lambda: run_pipeline(args.config))


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "distill",
        help="distil an HMM from a causal LM: sample, lvd, train, or run the whole pipeline",
        description="Offline distillation (docs/method.md §8). Every stage is resumable: rerun the same "
        "command after an interruption. Multi-process: launch with torchrun.",
    )
    stages = parser.add_subparsers(dest="distill_command", required=True, metavar="STAGE")
    for add in (_add_sample, _add_embed, _add_lvd, _add_train, _add_run):
        add(stages)


def _add_sample(stages: argparse._SubParsersAction) -> None:
    from pc_core.lm import DTYPES

    p = stages.add_parser("sample", help="ancestral samples from the LM into token shards")
    p.add_argument("--lm", required=True, help="causal LM: hub id or local directory (with its tokenizer)")
    p.add_argument("--out", required=True, help="data directory (shards + manifest.json)")
    p.add_argument("--num-sequences", type=int, required=True, help="sequences to sample in total")
    p.add_argument("--seq-len", type=int, default=32, help="tokens per sequence (EOS-padded)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per decoding batch")
    p.add_argument("--shard-size", type=int, default=65536, help="sequences per shard (the unit of resume)")
    p.add_argument(
        "--seed", type=int, default=0, help="base seed; shard i uses a seed derived from (seed, i)"
    )
    p.add_argument(
        "--prompts", default=None, help="text file, one prompt per line (cycled); default: unconditional"
    )
    p.add_argument(
        "--save-embeddings",
        type=int,
        default=0,
        metavar="K",
        help="also store the hidden states predicting each token for the first K sequences (for LVD)",
    )
    p.add_argument(
        "--embedding-layer", type=int, default=-1, help="hidden_states index: 0 = embeddings, -1 = last layer"
    )
    p.add_argument("--device", default="auto", help="auto (this rank's GPU if any, else CPU), cpu, cuda:N")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=list(DTYPES),
        help="LM weights; auto: bf16/fp16 on GPU, fp32 on CPU",
    )
    g = p.add_argument_group("sampling through OpenAI-compatible servers (vLLM, SGLang, TGI, pcgen serve)")
    g.add_argument(
        "--server",
        default=None,
        metavar="URL[,URL...]",
        help="sample through these /v1/completions servers; --lm then only gives the tokenizer",
    )
    g.add_argument(
        "--api-key", default=None, help="bearer token (default: $PCGEN_DISTILL_API_KEY, $OPENAI_API_KEY)"
    )
    g.add_argument("--model", default=None, help="served model name (default: the first in /v1/models)")
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight over all servers")
    g.add_argument(
        "--max-retries",
        type=int,
        default=8,
        help="failures of one request before giving up (a 429 waits instead, up to --request-timeout)",
    )
    g.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    p.set_defaults(func=cmd_sample)


def _add_embed(stages: argparse._SubParsersAction) -> None:
    from pc_core.lm import DTYPES

    p = stages.add_parser(
        "embed", help="hidden states for LVD by batched forward passes over samples (e.g. server-sampled)"
    )
    p.add_argument("--lm", required=True, help="the causal LM the samples came from (hub id or directory)")
    p.add_argument("--data", required=True, help="sample directory; hidden states are added to it")
    p.add_argument(
        "--num-sequences", type=int, default=0, help="the first K sequences get hidden states; 0 = all"
    )
    p.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass")
    p.add_argument(
        "--embedding-layer", type=int, default=-1, help="hidden_states index: 0 = embeddings, -1 = last layer"
    )
    p.add_argument("--device", default="auto", help="auto (this rank's GPU if any, else CPU), cpu, cuda:N")
    p.add_argument("--dtype", default="auto", choices=list(DTYPES), help="auto: bf16 on GPU, fp32 on CPU")
    p.set_defaults(func=cmd_embed)


def _add_lvd(stages: argparse._SubParsersAction) -> None:
    p = stages.add_parser("lvd", help="k-means of hidden states -> closed-form initial HMM")
    p.add_argument("--data", required=True, help="data directory sampled with --save-embeddings")
    p.add_argument("--hidden-size", type=int, required=True, help="H: H-1 clusters plus the end state")
    p.add_argument("--out", required=True, help="directory for the HMM (HMM.load layout)")
    p.add_argument("--pseudocount", type=float, default=1e-3, help="added to every count before normalising")
    p.add_argument("--kmeans-iters", type=int, default=30)
    p.add_argument("--kmeans-points", type=int, default=1_000_000, help="vectors the centroids are fitted on")
    p.add_argument("--kmeans-init", default="kmeans++", choices=["kmeans++", "random"])
    p.add_argument("--kmeans-tol", type=float, default=1e-4, help="stop below this relative inertia gain")
    p.add_argument(
        "--kmeans-backend",
        default="auto",
        choices=["auto", "torch", "faiss"],
        help="auto: faiss when installed (pip install 'pcgen[faiss]'), else torch",
    )
    p.add_argument("--chunk-size", type=int, default=65536, help="vectors per distance block (bounds memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_lvd)


def _add_train(stages: argparse._SubParsersAction) -> None:
    p = stages.add_parser("train", help="EM from an initial HMM; checkpoints, logs and a curve in --out")
    p.add_argument("--init", required=True, help="initial HMM directory (e.g. the lvd output)")
    p.add_argument("--data", required=True, help="data directory (fresh samples)")
    p.add_argument(
        "--out", required=True, help="output directory: final HMM, checkpoints/, log.csv, curve.png"
    )
    p.add_argument("--steps", type=int, default=30, help="EM steps")
    p.add_argument("--chunk-size", type=int, default=0, help="sequences per EM step; 0 = all (full-batch EM)")
    p.add_argument("--batch-size", type=int, default=256, help="sequences per forward-backward call")
    p.add_argument("--step-size", type=float, default=1.0, help="1 = replace; < 1 = step-size EM")
    p.add_argument("--pseudocount", type=float, default=1e-3)
    p.add_argument(
        "--heldout", type=int, default=1024, help="sequences at the end of --data held out (at most 10%%)"
    )
    p.add_argument("--heldout-data", default=None, help="a separate data directory to evaluate on instead")
    p.add_argument("--seed", type=int, default=0, help="seeds the order of the chunks")
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip curve.png")
    p.set_defaults(func=cmd_train)


def _add_run(stages: argparse._SubParsersAction) -> None:
    p = stages.add_parser("run", help="the whole pipeline from one YAML/TOML file, skipping finished stages")
    p.add_argument("--config", required=True, help="YAML or TOML file (see distill/pipeline.py)")
    p.set_defaults(func=cmd_run)
