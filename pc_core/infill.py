"""Infilling with a suffix of any length (docs/method.md §4).

    junction, rest = split_suffix(suffix)        " sat on the mat." -> (" sat", " on the mat.")

The LM writes the span and the *junction*, the suffix's first word (its leading spaces included, at most
MAX_JUNCTION_CHARS characters). The automaton matches the junction character by character, so any
tokenisation of it counts, also a token that holds the span's last characters and the junction's first
(spec.Affixed, affixes.py). The *rest* of the suffix is attached as text: it is not generated, and
max_new_tokens counts the span and the junction only.

The HMM still conditions on the whole suffix. One backward pass over the rest's tokens (HMM.suffix_log_backward,
m x H^2 for m tokens) gives w[z] = log P(rest | z emits its first token); the guide's acceptance vector,
ones without a rest, becomes that vector taken one transition back, so the guide's ratio is

    P_hmm(constraint on the span, the span and junction end here, the rest follows | prefix, span so far, x).

Ranking (`rank_finished`): finished beams by the LM's log-likelihood of span + junction + rest when prompt, span
and suffix fit the LM's context (one batched forward, a row per beam), else of span + junction; the output says
which (`ranking`). A tokenizer with fill-in-the-middle tokens (`fim_tokens`) gets the prompt in FIM form, so the
LM sees the suffix before writing the span (`fim_prompt`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

MAX_JUNCTION_CHARS = 32  # a first "word" longer than this (a URL, a run of dashes) is cut here
RANK_SUFFIX, RANK_JUNCTION, RANK_FIM = "span+suffix", "span+junction", "span+junction|fim"
FIM_SPELLINGS = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, DeepSeek-style
    ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),
)


def split_suffix(suffix: str) -> tuple[str, str]:
    """(junction, rest): the leading spaces and first word of the suffix (at most MAX_JUNCTION_CHARS
    characters), and what follows. split_suffix(junction) == (junction, "")."""
    found = re.match(r"\s*\S+", suffix)
    cut = min(found.end() if found else len(suffix), MAX_JUNCTION_CHARS)
    return suffix[:cut], suffix[cut:]


@dataclass(frozen=True)
class SuffixPlan:
    """A request's suffix, split: the junction the LM writes, the rest attached as text and its tokens."""

    suffix: str
    junction: str
    rest: str
    rest_ids: tuple[int, ...]

    @property
    def key(self) -> str:
        """Identifies the terminal vector (with the HMM): guide tables are cached under it."""
        return hashlib.sha256(repr(self.rest_ids).encode()).hexdigest()[:16]


def plan_suffix(tokenizer: Any, suffix: str | None) -> SuffixPlan | None:
    """None without a suffix; the rest's tokens are empty when the suffix is one word."""
    if suffix is None:
        return None
    junction, rest = split_suffix(suffix)
    rest_ids = tuple(tokenizer.encode(rest, add_special_tokens=False)) if rest else ()
    return SuffixPlan(suffix, junction, rest, rest_ids)


def terminal_vector(hmm: Any, plan: SuffixPlan | None) -> torch.Tensor | None:
    """(H,) float32 log P(rest | z_1 = z) for the guide, or None when nothing follows the junction."""
    if plan is None or not plan.rest_ids:
        return None
    return hmm.suffix_log_backward(plan.rest_ids).float()


# ---------------------------------------------------------------------------------------------- FIM


def fim_tokens(tokenizer: Any) -> tuple[int, int, int] | None:
    """(prefix, suffix, middle) token ids when the tokenizer has one spelling of the FIM tokens, else None."""
    vocab = tokenizer.get_vocab()
    for spelling in FIM_SPELLINGS:
        if all(name in vocab for name in spelling):
            prefix, suffix, middle = (int(vocab[name]) for name in spelling)
            return prefix, suffix, middle
    return None


def fim_prompt(tokenizer: Any, prompt_ids: Sequence[int], suffix: str, room: int | None) -> list[int] | None:
    """<fim_prefix> prompt <fim_suffix> suffix <fim_middle> (prefix-suffix-middle order), or None without FIM
    tokens. `room`: tokens the prompt may take in the LM's context (context minus max_new_tokens); the
    suffix is cut at its end and the prompt at its start to fit, the suffix keeping at least half."""
    ids = fim_tokens(tokenizer)
    if ids is None:
        return None
    fim_pre, fim_suf, fim_mid = ids
    suffix_ids = tokenizer.encode(suffix, add_special_tokens=False)
    prompt = list(prompt_ids)
    if room is not None:
        room = max(0, room - 3)
        keep_suffix = min(len(suffix_ids), max(room - len(prompt), room // 2))
        suffix_ids = suffix_ids[:keep_suffix]
        prompt = prompt[len(prompt) - min(len(prompt), room - keep_suffix) :]
    return [fim_pre, *prompt, fim_suf, *suffix_ids, fim_mid]


# ---------------------------------------------------------------------------------------------- ranking


def rank_finished(
    lm: Any, context: Sequence[int], spans: Sequence[Sequence[int]], plan: SuffixPlan, fim: bool
) -> tuple[str, list[float]]:
    """(how the beams are ranked, the log-likelihood of the rest per finished beam: zeros unless
    span+suffix). `spans`: each beam's generated ids (span + junction); `context`: the LM's prompt."""
    from pc_core.lm import continuation_logprobs, max_positions

    if fim:
        return RANK_FIM, [0.0] * len(spans)
    if not plan.rest_ids:
        return RANK_SUFFIX, [0.0] * len(spans)  # the junction is all of the suffix
    limit = max_positions(lm) if lm is not None else None
    longest = len(context) + max((len(s) for s in spans), default=0) + len(plan.rest_ids)
    if lm is None or not spans or (limit is not None and longest > limit):
        return RANK_JUNCTION, [0.0] * len(spans)
    rows = [[*context, *span, *plan.rest_ids] for span in spans]
    starts = [len(context) + len(span) for span in spans]
    return RANK_SUFFIX, continuation_logprobs(lm, rows, starts)
