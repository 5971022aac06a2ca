"""The factored guide: past the exact budget the guarantee stays, only the steering is approximate
(docs/method.md §5.9).

Exact:   the constraint's full DFA decides which tokens may be taken. A token is allowed only if the DFA
         can still accept within the tokens left after it (feasibility.py, the same -inf pattern the exact
         guide has), so every finished text satisfies the constraint, and the request is refused (422)
         before decoding when no text of max_new_tokens tokens can.
Approximate: the HMM's lookahead. The top-level conjunction c_1 & ... & c_k is split into groups whose
         product DFAs fit the budget together (greedily, in the order written), each group gets an exact
         guide of its own, and the lookahead is the product of theirs:
             q(x) ~ prod_g P_hmm(group g holds | prefix, x)
         exactly 0 where the full DFA says impossible and exactly 1 where it says certain. The groups'
         events are treated as independent given the prefix: a keyword that two groups need at the same
         place, or a word count and keywords competing for the same tokens, are where it errs. A conjunct
         that alone does not fit steers nothing (its feasibility is still enforced).

The guide has the exact guide's interface (init_state, advance, plan, assemble, tables.feasible), so the
decoder and the batched product (guide.multiply) treat both alike: each group's rows join the shared
product of the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from pc_core.constraints.blocklist import split_blocklist
from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.nodes import All, Constraint, WordCount
from pc_core.constraints.spec import split_affixes, with_affixes
from pc_core.errors import ConstraintTooComplex
from pc_core.feasibility import Feasibility
from pc_core.guide import BlockPlan, ConstraintGuide, GuideState, Product, multiply
from pc_core.guide_budget import GuideBudget, GuideCost, dtype_bytes, exact_cost, too_costly
from pc_core.hmm import HMM
from pc_core.logspace import NEG_INF


@dataclass
class FactoredState(GuideState):
    """GuideState over the full DFA plus each group's DFA state."""

    factor_states: torch.Tensor | None = None  # (B, groups) long

    def select(self, index: torch.Tensor | Sequence[int]) -> FactoredState:
        base = super().select(index)
        index = torch.as_tensor(index, dtype=torch.long, device=self.dfa_state.device)
        return FactoredState(base.log_alpha, base.dfa_state, base.position, base.open_words,
                             self.factor_states.index_select(0, index))  # fmt: skip


class FactoredPlan(NamedTuple):
    state: FactoredState
    blocks: list[BlockPlan]  # per vocabulary block: every group's rows, in group order (guide.multiply)
    parts: list  # each group's own StepPlan
    uniform: bool = False  # every group's plan is (guide.StepPlan): one product over the vocabulary


class FactoredTables:
    """What callers read from a guide's tables: the full DFA's feasibility, the groups' vocabulary blocks."""

    def __init__(self, dfa: TokenDFA, feasibility: Feasibility, first: Any) -> None:
        device = first.device
        self.feasible = torch.from_numpy(feasibility.feasible).to(device)  # (n + 1, S)
        self.certain = torch.from_numpy(feasibility.certain).to(device)
        self.ending_t = torch.from_numpy(feasibility.ending).to(device)  # (S, C)
        self.transitions = torch.from_numpy(dfa.transitions).to(device)  # (S, C) int32: big automata
        self.token_class = torch.from_numpy(dfa.token_class.astype("int64")).to(device)  # (V,)
        self.num_states, self.eos_token_id = dfa.num_states, dfa.eos_token_id
        self.block_key, self.num_blocks, self.block_tokens = (
            first.block_key,
            first.num_blocks,
            first.block_tokens,
        )
        self.log_scale, self.device = first.log_scale, device


class FactoredGuide:
    """Exact feasibility on `dfa`, lookahead from exact guides of `factors` (see the module docstring)."""

    kind = "factored"

    def __init__(
        self,
        hmm: HMM,
        dfa: TokenDFA,
        factors: list[tuple[TokenDFA, Feasibility]],
        feasibility: Feasibility,
        horizon: int,
        min_new_tokens: int = 0,
        note: str = "",
        **guide_args: Any,
    ) -> None:
        """`factors`: each group's DFA and feasibility; `feasibility`: the full DFA's; `note`: why."""
        self.hmm, self.dfa, self.horizon, self.min_new_tokens = hmm, dfa, horizon, min_new_tokens
        self.note = note
        self.guides = [
            ConstraintGuide(hmm, f, horizon, min_new_tokens, feasibility=ff, **guide_args)
            for f, ff in factors
        ]
        self.emission_dtype = self.guides[0].emission_dtype
        self.tables = self._make_tables(dfa, feasibility)

    def _make_tables(self, dfa: Any, feasibility: Any) -> FactoredTables:
        return FactoredTables(dfa, feasibility, self.guides[0].tables)

    def init_state(self, batch_size: int = 1, hmm_context: Sequence[int] | None = None) -> FactoredState:
        first = self.guides[0].init_state(1, hmm_context)
        factors = torch.tensor([[g.dfa.initial_state for g in self.guides]], device=self.hmm.device)
        dfa_state = torch.full((1,), self.dfa.initial_state, dtype=torch.long, device=self.hmm.device)
        words = ("",) if self.dfa.blocklist is not None else None
        state = FactoredState(first.log_alpha, dfa_state, 0, words, factors)
        return state.select([0] * batch_size)

    def advance(self, state: FactoredState, tokens: torch.Tensor | Sequence[int]) -> FactoredState:
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.hmm.device).reshape(-1)
        log_alpha, factor_states = self._factors_advance(state, tokens)
        guide_tables = self.tables
        next_dfa = guide_tables.transitions[state.dfa_state, guide_tables.token_class[tokens]].long()
        words = state.open_words
        if words is not None:
            words = tuple(self.dfa.blocklist.advance(w, x) for w, x in zip(words, tokens.tolist()))
        return FactoredState(log_alpha, next_dfa, state.position + 1, words, factor_states)

    def _steering(self, plan: FactoredPlan, products: Sequence[Product]) -> torch.Tensor:
        """(B, V) the sum of the groups' log q, each group's guide assembling its share of the products (per
        vocabulary block, or one product over the vocabulary for a uniform plan)."""
        offsets = [0] * len(products)
        total = None
        for guide, part in zip(self.guides, plan.parts):
            mine = []
            for k, (values, shift) in enumerate(products):
                size = part.blocks[k].rows.shape[0]
                mine.append((values[offsets[k] : offsets[k] + size], shift[offsets[k] : offsets[k] + size]))
                offsets[k] += size
            q = guide.assemble(part, mine)
            total = q if total is None else total.add_(q)
        return total

    def _factors_advance(
        self, state: FactoredState, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """After `tokens` (B,): the forward vector (the first factor's guide advances it) and every factor's
        DFA state (B, F)."""
        first = self.guides[0]
        base = first.advance(GuideState(state.log_alpha, state.factor_states[:, 0], state.position), tokens)
        columns = [base.dfa_state]
        for i, guide in enumerate(self.guides[1:], 1):
            t = guide.tables
            columns.append(t.transitions[state.factor_states[:, i], t.token_class[tokens]])
        return base.log_alpha, torch.stack(columns, 1)

    def state_for(self, prefix: Sequence[int], hmm_context: Sequence[int] | None = None) -> FactoredState:
        state = self.init_state(1, hmm_context)
        for token in prefix:
            state = self.advance(state, [token])
        return state

    def next_log_probs(self, state: FactoredState) -> torch.Tensor:
        """(B, V) the step's values for `state`, as the decoder gets them (one guide alone)."""
        plan = self.plan(state)
        return self.assemble(plan, multiply([(self, plan)])[0])

    def plan(self, state: FactoredState) -> FactoredPlan:
        parts = [
            guide.plan(GuideState(state.log_alpha, state.factor_states[:, i], state.position))
            for i, guide in enumerate(self.guides)
        ]
        uniform = all(p.uniform for p in parts)  # every block has the same rows: concatenated once
        blocks = [
            BlockPlan(torch.cat([p.blocks[k].rows for p in parts]), None, None)
            for k in range(1 if uniform else self.tables.num_blocks)
        ]
        blocks += blocks[:1] * (self.tables.num_blocks - len(blocks))
        return FactoredPlan(state, blocks, parts, uniform)

    def assemble(self, plan: FactoredPlan, products: Sequence[Product]) -> torch.Tensor:
        """(B, V): the sum of the groups' log q, then the full DFA's exact pattern: -inf where no text
        can be accepted after the token, 0 where every text is, the minimum length and the blocklist."""
        state, guide_tables = plan.state, self.tables
        total = self._steering(plan, products)
        r = self.horizon - state.position - 1
        # per token class, then per token: the same masks as per token successor, from (B, C) lookups
        succ = guide_tables.transitions[state.dfa_state].long()  # (B, C)
        classes = guide_tables.token_class
        total.masked_fill_((~guide_tables.feasible[r][succ]).index_select(1, classes), NEG_INF)
        total.masked_fill_(guide_tables.certain[r][succ].index_select(1, classes), 0.0)
        if state.position + 1 < self.min_new_tokens + 1:  # no end yet (EOS, a stop string, the suffix)
            total[:, guide_tables.eos_token_id] = NEG_INF
            total.masked_fill_(guide_tables.ending_t[state.dfa_state][:, guide_tables.token_class], NEG_INF)
        if state.open_words is not None:  # the blocklist beside the DFA
            for beam, word in enumerate(state.open_words):
                blocked = torch.from_numpy(~self.dfa.blocklist.allowed(word)).to(total.device)
                total[beam].masked_fill_(blocked, NEG_INF)
        return total


# ---------------------------------------------------------------------------------------------- groups


def conjuncts(constraint: Constraint) -> list[Constraint]:
    """The top-level conjunction's parts (nested `all`s flattened); the constraint itself otherwise."""
    if isinstance(constraint, All):
        return [part for child in constraint.children for part in conjuncts(child)]
    return [constraint]


def factor_groups(
    constraint: Constraint,
    compile_group: Callable[[Constraint], TokenDFA],
    cost_of: Callable[[TokenDFA], tuple[GuideCost, Feasibility]],
    budget: GuideBudget,
) -> list[tuple[TokenDFA, Feasibility]]:
    """Greedy groups of the conjuncts, in order, whose exact guides fit the budget together: a conjunct
    joins the open group while the total still fits, else opens the next one; one that does not fit alone
    is left to feasibility. With a suffix or stop strings each group carries them. Never empty: without a
    group that fits, the group "any text" (with the affixes) steers towards the suffix alone."""
    body, suffix, stop = split_affixes(constraint)
    spent_bytes, spent_flops = 0, 0.0
    groups: list[tuple[TokenDFA, Feasibility, GuideCost]] = []
    current: list[Constraint] = []
    for part in conjuncts(body):
        for candidate in ([*current, part], [part]) if current else ([part],):
            found = _try(with_affixes(All(tuple(candidate)), suffix, stop), compile_group, cost_of)
            if found is None:
                continue
            dfa, feasibility, cost = found
            old = groups[-1][2] if current and len(candidate) > 1 else None
            extra_bytes = cost.table_bytes - (old.table_bytes if old else 0)
            extra_flops = cost.flops - (old.flops if old else 0.0)
            if spent_bytes + extra_bytes <= budget.table_bytes and spent_flops + extra_flops <= budget.flops:
                if old is not None:
                    groups.pop()
                groups.append((dfa, feasibility, cost))
                spent_bytes, spent_flops = spent_bytes + extra_bytes, spent_flops + extra_flops
                current = candidate
                break
        else:
            current = []  # does not fit, even alone: feasibility only
    if not groups:
        found = _try(with_affixes(WordCount(0, None), suffix, stop), compile_group, cost_of)
        if found is None:
            raise ConstraintTooComplex("constraint", "no part of the constraint fits the guide's budget")
        groups.append(found)
    return [(dfa, feasibility) for dfa, feasibility, _ in groups]


def _try(
    constraint: Constraint,
    compile_group: Callable[[Constraint], TokenDFA],
    cost_of: Callable[[TokenDFA], tuple[GuideCost, Feasibility]],
) -> tuple[TokenDFA, Feasibility, GuideCost] | None:
    try:
        dfa = compile_group(constraint)
    except ConstraintTooComplex:
        return None
    cost, feasibility = cost_of(dfa)
    return dfa, feasibility, cost


def cost_function(
    hmm: HMM, horizon: int, min_new_tokens: int, budget: GuideBudget, no_certain: bool = False
) -> Callable[[TokenDFA], tuple[GuideCost, Feasibility]]:
    """dfa -> (its exact guide's cost, its feasibility) for this model, horizon and budget."""

    def cost_of(dfa: TokenDFA) -> tuple[GuideCost, Feasibility]:
        feasibility = Feasibility(dfa, horizon, min_new_tokens, no_certain=no_certain)
        return exact_cost(dfa, feasibility, hmm.hidden_size, dtype_bytes(budget.table_dtype)), feasibility

    return cost_of


def build_guide(
    hmm: HMM,
    dfa: TokenDFA,
    constraint: Constraint,
    params: Any,
    compile_group: Callable[[Constraint], TokenDFA],
    feasibility: Feasibility | None = None,
    **guide_args: Any,
) -> ConstraintGuide | FactoredGuide:
    """The exact guide when its cost fits this device's budget (params: guide, guide_budget_bytes,
    guide_budget_gflops, guide_table_dtype), else the factored guide; with guide="exact", past the budget a
    ConstraintTooComplex that says what it would cost. `compile_group` compiles a group of conjuncts
    (without a blocklist mask). Raises BlocklistInteraction as the exact guide does."""
    horizon, min_new = guide_args.pop("horizon"), guide_args.pop("min_new_tokens", 0)
    budget = GuideBudget.for_device(
        hmm.device, params.guide_budget_bytes, params.guide_budget_gflops, params.guide_table_dtype
    )
    no_certain = guide_args.get("terminal") is not None
    if feasibility is None:  # (the caller's when it computed it already: pc_core.preparation, deep values)
        feasibility = Feasibility(dfa, horizon, min_new, no_certain=no_certain)
    cost = exact_cost(dfa, feasibility, hmm.hidden_size, dtype_bytes(budget.table_dtype))
    fits = cost.fits(budget)
    if params.guide == "exact" and not fits:
        raise too_costly(cost, budget)
    guide_args["table_dtype"] = budget.table_dtype
    if params.guide != "factored" and fits:
        return ConstraintGuide(hmm, dfa, horizon, min_new, feasibility=feasibility, **guide_args)
    if dfa.blocklist is not None:  # the blocked words are the mask's and feasibility's, not a group's
        body, suffix, stop = split_affixes(constraint)
        split = split_blocklist(body)
        constraint = with_affixes(split[0], suffix, stop) if split is not None else constraint
    cost_of = cost_function(hmm, horizon, min_new, budget, no_certain)
    groups = factor_groups(constraint, compile_group, cost_of, budget)
    note = f"the exact guide would need {cost.describe()}; budget {budget.describe()}"
    return FactoredGuide(hmm, dfa, groups, feasibility, horizon, min_new, note=note, **guide_args)
