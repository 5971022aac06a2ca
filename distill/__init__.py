"""Offline distillation of an HMM from a causal LM (docs/method.md §8).

Stages, each resumable and each a `pcgen distill` subcommand:
    sample  ancestral samples from the LM into token shards (+ hidden states for LVD)   distill.sample
    lvd     k-means of the hidden states -> latent states -> closed-form counts          distill.lvd
    train   EM with forward-backward in log space, checkpoints, logs and a curve         distill.em
    run     the three stages from one YAML/TOML file                                     distill.pipeline
Multi-process via torchrun (distill.dist). Kept import-light: torch is imported by the stage modules.
"""

from distill.errors import DistillError

__all__ = ["DistillError"]
