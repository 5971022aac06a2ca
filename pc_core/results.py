"""What decoding returns: a finished sequence, a request's output, a piece of streamed text, and the
finished hypothesis a search keeps until the independent checker judges it (pc_core.search_output)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pc_core.logprob_trail import TokenLogprob


@dataclass
class SequenceResult:
    text: str  # the span: before the suffix or the stop string, cut at EOS
    token_ids: list[int]  # everything generated (the suffix's tokens included)
    constraint_satisfied: bool
    finish_reason: str  # "eos" (EOS, or the suffix completed) | "stop" (a stop string) | "length"
    logprob: float  # LM log-likelihood of the continuation (EOS, the suffix's tokens included when generated)
    full_text: str = ""  # the span followed by the suffix (the span itself without a suffix)
    logprobs: list[TokenLogprob] | None = None  # with params.logprobs: one per token id (logprob_trail.py)

    def __post_init__(self) -> None:
        self.full_text = self.full_text or self.text


@dataclass
class GenerationOutput:
    sequences: list[SequenceResult]
    prompt_tokens: int
    dfa_states: int
    timings: dict[str, float] = field(default_factory=dict)  # dfa_ms, precompute_ms, decode_ms
    suffix: str | None = None
    ranking: str | None = None  # with a suffix: what `logprob` and the beams' order cover (pc_core.infill)
    guide: str | None = (
        "exact"  # which guide ran: exact, factored past the exact budget (pc_core.factored_guide), lazy past
        # the explicit automaton's budget (pc_core.lazy_guide)
    )

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": sum(len(s.token_ids) for s in self.sequences),
        }


@dataclass
class StreamEvent:
    """Text settled since the last event for output `index` (beam search: the beams' common prefix)."""

    index: int
    text: str
    token_ids: list[int]


@dataclass
class Hypothesis:
    """A finished text of a search (a beam or a sample), until it is judged."""

    ids: list[int]
    lm_logprob: float
    finish_reason: str  # "eos", "length", or "text" (a stop string or the suffix: judged when finishing)
    judgement: tuple | None = None  # (span text, satisfied, finish reason, full text), once judged
    logprobs: list[TokenLogprob] | None = None  # set by LogprobTrail when params.logprobs asks for them
    scored_tokens: int = 0  # tokens scored after the generated ones (the suffix's rest, pc_core.infill)
