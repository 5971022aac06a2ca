"""Decoding with no constraint: the LM's own distribution, with no HMM, no automaton and no guide.

A request without a constraint (an OpenAI client's plain completion, or a distillation client sampling the LM
at temperature 1, top_p 1) is served by the same BatchDecoder, in the same batches as guided searches: an
`UnguidedSearch` is a GuidedSearch whose guide term is absent (q = None), so

    p(x | prefix) = softmax(LM logits after logit_bias and penalties)

over the whole vocabulary, with no U+FFFD blocklist (re-shaping the distribution would make samples useless
for distillation); a logit_bias of -100 bans its token exactly, as on the guided path. Stop strings end a text when its decoded text contains one, as in vLLM; `min_new_tokens`
keeps EOS out until that many tokens. A suffix (infilling) needs the automaton, so it is not served here:
callers use the guided path with a constraint that always holds (`prepare`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pc_core.compiled_constraint import check_logit_bias
from pc_core.constraints import decode_continuation
from pc_core.constraints.checker import first_stop
from pc_core.logspace import NEG_INF
from pc_core.params import DecodeParams, DecodingError
from pc_core.results import Hypothesis, StreamEvent
from pc_core.search import GuidedSearch


def prepare_unguided(
    tokenizer: Any,
    prompt: str | Sequence[int] = "",
    params: DecodeParams | None = None,
    on_stream: Callable[[StreamEvent], None] | None = None,
    *,
    device: torch.device | str = "cpu",
) -> UnguidedSearch:
    """A search over the LM's own distribution (no constraint); BatchDecoder steps it like a guided one."""
    params = params or DecodeParams()
    if params.suffix is not None:
        raise DecodingError("suffix", "infilling needs a constraint (the guide writes the suffix)")
    prompt_ids = (
        list(prompt) if not isinstance(prompt, str) else tokenizer.encode(prompt, add_special_tokens=False)
    )
    check_logit_bias(params, len(tokenizer))
    if len(set(params.banned_tokens)) >= len(tokenizer):
        raise DecodingError("logit_bias", "it bans every token (bias -100)")
    return UnguidedSearch(tokenizer, params, prompt_ids, on_stream, torch.device(device))


class UnguidedSearch(GuidedSearch):
    """GuidedSearch without a guide: `guide`, `dfa` and `constraint` are None, `choose` takes q = None."""

    def __init__(
        self,
        tokenizer: Any,
        params: DecodeParams,
        prompt_ids: list[int],
        on_stream: Callable[[StreamEvent], None] | None,
        device: torch.device,
    ) -> None:
        # the attributes GuidedSearch.__init__ sets, without the guide's
        self.tokenizer, self.constraint, self.dfa, self.guide = tokenizer, None, None, None
        self.params, self.on_stream = params, on_stream
        self.judged = None
        self.affixed = bool(params.stop)  # stop strings can end a text before EOS
        self.guide_state = None
        self.timings = {"dfa_ms": 0.0, "precompute_ms": 0.0}
        self._start_rows(tokenizer, params, prompt_ids, len(tokenizer), device)
        if params.banned_tokens:  # a bias of -100 is a ban, exact as on the guided path
            self.adjust.bias[list(params.banned_tokens)] = NEG_INF

    @property
    def dfa_states(self) -> None:
        return None

    def next_distribution(self, lm_logp: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
        """The LM's distribution (rows, V); before min_new_tokens, without EOS (renormalised)."""
        if self.step_count >= self.params.min_new_tokens or self.eos is None:
            return lm_logp
        masked = lm_logp.clone()
        masked[:, self.eos] = NEG_INF
        return masked - torch.logsumexp(masked, dim=-1, keepdim=True)

    def _ends(self, row: int, token: int) -> bool:
        """EOS, or (with stop strings) a token after which the decoded text holds a stop string."""
        if token == self.eos:
            return True
        if not self.affixed:
            return False
        ids = self.generated[row].tolist() + [token]
        return first_stop(decode_continuation(self.tokenizer, ids), self.params.stop)[1] is not None

    def _judge(self, h: Hypothesis) -> tuple[str, bool, str, str]:
        """(text, satisfied, finish reason, full text): the text before the first stop string; no constraint,
        so satisfied."""
        if h.judgement is None:
            text = decode_continuation(self.tokenizer, h.ids)
            reason = h.finish_reason
            if self.affixed:
                cut = first_stop(text, self.params.stop)[1]
                if cut is not None:
                    text, reason = text[:cut], "stop"
            h.judgement = (text, True, "eos" if reason == "text" else reason, text)
        return h.judgement
