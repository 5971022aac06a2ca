"""The lazy guide: past the explicit automaton's budget the guarantee stays, only the steering is approximate
(docs/method.md §5.10).

Exact:   which tokens may be taken. The constraint's automaton is explored lazily (lazy_dfa.py) and a token is
         allowed only when a search proves an accepted text of the horizon reachable after it
         (lazy_feasibility.py). The request is refused before decoding when no text of max_new_tokens tokens
         is accepted (an exhausted search: 422 unsatisfiable) or when the search cannot decide it within its
         budget (422 too complex): never served unchecked.
Approximate: the HMM's lookahead, as in the factored guide: the product of exact guides of the top-level
         conjuncts that compile alone within a small budget (each conjunct with the suffix / stop strings),
             q(x) ~ prod_g P_hmm(conjunct g holds | prefix, x),
         with -inf where the lazy search did not prove the token feasible. Conjuncts that do not compile
         alone steer nothing (their feasibility is still enforced).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.nodes import Constraint, WordCount
from pc_core.constraints.spec import split_affixes, with_affixes
from pc_core.errors import ConstraintTooComplex
from pc_core.factored_guide import FactoredGuide, FactoredState, conjuncts
from pc_core.feasibility import Feasibility
from pc_core.guide_budget import GuideBudget, dtype_bytes, exact_cost
from pc_core.hmm import HMM
from pc_core.lazy_dfa import LazyDFA
from pc_core.lazy_feasibility import LazyFeasibility
from pc_core.leaf_bound import LeafBound

NEG_INF = float("-inf")
LEAF_BUDGET_S = 1.0  # compile budget of each leaf / steering conjunct
LEAF_MAX_STATES = 4096
MAX_STEERING = 8  # conjunct guides in the lookahead: each costs a (V x H) precompute and a product per step


@dataclass
class LazyState(FactoredState):
    """FactoredState plus each beam's leaf-automaton states (the search's lower bounds)."""

    leaves: list | None = None  # per beam: (L,) leaf states

    def select(self, index: torch.Tensor | Sequence[int]) -> LazyState:
        base = super().select(index)
        picked = [self.leaves[i] for i in torch.as_tensor(index).reshape(-1).tolist()]
        return LazyState(base.log_alpha, base.dfa_state, base.position, base.open_words, base.factor_states,
                         picked)  # fmt: skip


class LazyTables:
    """What callers read from a guide's tables: the steering guides' vocabulary blocks."""

    def __init__(self, dfa: LazyDFA, first: Any) -> None:
        self.eos_token_id, self.device = dfa.eos_token_id, first.device
        self.block_key, self.num_blocks, self.block_tokens = (
            first.block_key,
            first.num_blocks,
            first.block_tokens,
        )
        self.log_scale = first.log_scale


class LazyGuide(FactoredGuide):
    """Exact feasibility on a LazyDFA, lookahead from exact guides of `factors` (see the module docstring)."""

    kind = "lazy"

    def _make_tables(self, dfa: Any, feasibility: Any) -> LazyTables:
        """FactoredGuide.__init__ hands `feasibility` here: the LazyFeasibility search on `dfa` (a LazyDFA)."""
        self.lazy: LazyFeasibility = feasibility
        return LazyTables(dfa, self.guides[0].tables)

    def can_start(self) -> bool:
        """Is some text of max_new_tokens accepted? Raises ConstraintTooComplex when the search cannot tell."""
        found = self.lazy.feasible(self.dfa.initial_state, self.lazy.bound.initial(), self.horizon, 0)
        if found is None:
            raise ConstraintTooComplex(
                "constraint", f"the automaton is too large to build ({self.note}) and a search of "
                f"{self.lazy.budget} states found no text of at most {self.horizon} tokens that satisfies it",
            )  # fmt: skip
        return found

    def init_state(self, batch_size: int = 1, hmm_context: Sequence[int] | None = None) -> LazyState:
        base = super().init_state(1, hmm_context)
        state = LazyState(base.log_alpha, base.dfa_state, 0, base.open_words, base.factor_states,
                          [self.lazy.bound.initial()])  # fmt: skip
        return state.select([0] * batch_size)

    def advance(self, state: LazyState, tokens: torch.Tensor | Sequence[int]) -> LazyState:
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.hmm.device).reshape(-1)
        log_alpha, factor_states = self._factors_advance(state, tokens)
        pairs = list(zip(state.dfa_state.tolist(), tokens.tolist()))
        next_dfa = torch.tensor(
            [self.dfa.step(s, x) for s, x in pairs], dtype=torch.long, device=self.hmm.device
        )
        leaves = [self.lazy.bound.advance(w, x) for w, (_, x) in zip(state.leaves, pairs)]  # (L,) each
        return LazyState(log_alpha, next_dfa, state.position + 1, None, factor_states, leaves)

    def assemble(self, plan: Any, products: Sequence[Any]) -> torch.Tensor:
        """(B, V): the sum of the conjuncts' log q, -inf where the search did not prove the token feasible
        (ending tokens before min_new_tokens included)."""
        state = plan.state
        total = self._steering(plan, products)
        allowed = np.stack(
            [self.lazy.allowed(s, w, state.position) for s, w in zip(state.dfa_state.tolist(), state.leaves)]
        )  # (B, V)
        total.masked_fill_(~torch.from_numpy(allowed).to(total.device), NEG_INF)
        return total


def steering_factors(
    constraint: Constraint,
    compile_small: Callable[[Constraint], TokenDFA | None],
    hmm: HMM,
    horizon: int,
    min_new_tokens: int,
    budget: GuideBudget,
    no_certain: bool,
) -> list[tuple[TokenDFA, Feasibility]]:
    """The top-level conjuncts (with the affixes) that compile alone and whose exact guides fit the budget
    together, in order, at most MAX_STEERING of them; never empty ("any text" with the affixes steers towards
    the suffix alone)."""
    body, suffix, stop = split_affixes(constraint)
    spent_bytes, spent_flops, out = 0, 0.0, []
    for part in [with_affixes(part, suffix, stop) for part in conjuncts(body)]:
        if len(out) == MAX_STEERING:
            break
        dfa = compile_small(part)
        if dfa is None:
            continue
        feasibility = Feasibility(dfa, horizon, min_new_tokens, no_certain=no_certain)
        cost = exact_cost(dfa, feasibility, hmm.hidden_size, dtype_bytes(budget.table_dtype))
        if spent_bytes + cost.table_bytes <= budget.table_bytes and spent_flops + cost.flops <= budget.flops:
            out.append((dfa, feasibility))
            spent_bytes, spent_flops = spent_bytes + cost.table_bytes, spent_flops + cost.flops
    if not out:
        dfa = compile_small(with_affixes(WordCount(0, None), suffix, stop))
        if dfa is None:
            raise ConstraintTooComplex("constraint", "no part of the constraint fits the guide's budget")
        out.append((dfa, Feasibility(dfa, horizon, min_new_tokens, no_certain=no_certain)))
    return out


def build_lazy_guide(
    hmm: HMM,
    dfa: LazyDFA,
    constraint: Constraint,
    params: Any,
    tokenizer: Any,
    note: str = "",
    **guide_args: Any,
) -> LazyGuide:
    """The lazy guide for `dfa` (the LazyDFA of `constraint`): leaf automata and steering conjuncts compiled
    within small budgets (LEAF_BUDGET_S, LEAF_MAX_STATES)."""
    from pc_core.constraints.compiler import compile_constraint
    from pc_core.leaf_bound import leaf_compiler

    horizon, min_new = guide_args.pop("horizon"), guide_args.pop("min_new_tokens", 0)
    budget = GuideBudget.for_device(
        hmm.device, params.guide_budget_bytes, params.guide_budget_gflops, params.guide_table_dtype
    )
    guide_args["table_dtype"] = budget.table_dtype
    compile_small = leaf_compiler(tokenizer, compile_constraint, LEAF_BUDGET_S, LEAF_MAX_STATES)
    space = tokenizer.encode(" ", add_special_tokens=False)
    bound = LeafBound(constraint, compile_small, space[0] if len(space) == 1 else None)
    feasibility = LazyFeasibility(dfa, bound, horizon, min_new)
    no_certain = guide_args.get("terminal") is not None
    factors = steering_factors(constraint, compile_small, hmm, horizon, min_new, budget, no_certain)
    return LazyGuide(hmm, dfa, factors, feasibility, horizon, min_new, note=note, **guide_args)
