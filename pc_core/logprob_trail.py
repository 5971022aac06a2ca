"""The guided log-probability of each generated token, recorded along a search (OpenAI's `logprobs`).

`LogprobTrail`: per live row of a search, (token, logprob, top alternatives) for each token generated so far,
under the guided distribution normalise(p_lm(x) q(x)^w) at temperature 1 (what beam search ranks by; the
distribution sampling draws from before temperature and top_p). Finished outputs take the trail of the row
they ended on; one entry per generated token id (an ending EOS has none, like `token_ids`).
"""

from __future__ import annotations

from typing import Any

import torch

from pc_core.logspace import NEG_INF

# one token's record: (token id, its guided logprob, [(alternative id, logprob), ...] best first)
TokenLogprob = tuple[int, float, list[tuple[int, float]]]


class LogprobTrail:
    """The guided log-probabilities of the tokens each live row generated (see the module docstring)."""

    def __init__(self, top: int, rows: int) -> None:
        self.top = top
        self.rows: list[tuple[TokenLogprob, ...]] = [() for _ in range(rows)]

    def step(self, guided: torch.Tensor, generated: torch.Tensor, finished: list[Any]) -> _Step:
        """Before the search chooses: the step's guided distribution (rows, V), the rows' tokens so far and the
        hypotheses already finished. `commit` the choice afterwards."""
        return _Step(self, guided, generated, {id(h) for h in finished if h is not None})


class _Step:
    def __init__(
        self, trail: LogprobTrail, guided: torch.Tensor, generated: torch.Tensor, seen: set[int]
    ) -> None:
        self.trail, self.guided, self.generated, self.seen = trail, guided, generated, seen
        self.alternatives: list[list[tuple[int, float]]] = [[] for _ in range(guided.shape[0])]
        if trail.top:
            best = torch.topk(guided, min(trail.top, guided.shape[1]), dim=-1)
            for row, (values, ids) in enumerate(zip(best.values.tolist(), best.indices.tolist())):
                self.alternatives[row] = [(i, v) for i, v in zip(ids, values) if v != NEG_INF]

    def _entry(self, row: int, token: int) -> TokenLogprob:
        return token, float(self.guided[row, token]), self.alternatives[row]

    def commit(self, parents: torch.Tensor, tokens: torch.Tensor, finished: list[Any]) -> None:
        """The live rows now descend from `parents` with `tokens`; hypotheses that finished in this step get
        `logprobs`: their parent row's trail, plus this step's token when it is part of their ids."""
        trail, before = self.trail, self.trail.rows
        new = [h for h in finished if h is not None and id(h) not in self.seen]
        if new:
            width = self.generated.shape[1]
            row_of = {tuple(ids): row for row, ids in enumerate(self.generated.tolist())}
            for h in new:
                row = row_of[tuple(h.ids[:width])]
                last = (self._entry(row, h.ids[width]),) if len(h.ids) > width else ()
                h.logprobs = list(before[row] + last)
        trail.rows = [before[p] + (self._entry(p, t),) for p, t in zip(parents.tolist(), tokens.tolist())]
