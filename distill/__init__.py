"""Offline distillation of an HMM from a causal LM (docs/method.md §8).

Stages, each resumable and each a `pcgen distill` subcommand:
    sample  ancestral samples from the LM into token shards (+ hidden states for LVD)   distill.sample
            ... or through OpenAI-compatible servers (--server)          distill.sample_server, distill.remote
    embed   hidden states for LVD by batched prefill over stored samples                 distill.embed
    lvd     k-means (faiss or torch) of the hidden states -> closed-form counts   distill.lvd, distill.kmeans
    train   EM: the run and its schedule                                                  distill.em
            forward-backward with max-shifted messages (the E-step)              distill.forward_backward
            expected / observed counts and the M-step                                    distill.counts
            checkpoints, logs and the curve                                           distill.train_dir
    run     the stages from one YAML/TOML file                                           distill.pipeline
Multi-process via torchrun (distill.dist). Kept import-light: torch is imported by the stage modules.
"""

from distill.errors import DistillError

__all__ = ["DistillError"]
