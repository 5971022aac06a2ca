"""Preparing a search: compile the request's automaton unless it comes compiled, build its guide (exact,
factored or lazy), check that some text satisfies it within max_new_tokens, and when none does, say what is
to blame (`_unsatisfiable`: the banned tokens, the suffix, the stop strings or the constraint)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pc_core.compiled_constraint import CompiledConstraint, compile_request
from pc_core.constraints import Constraint, compile_constraint
from pc_core.constraints.compiler import explain_unsatisfiable
from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.nodes import WordCount
from pc_core.constraints.spec import with_affixes
from pc_core.errors import (
    BlocklistInteraction,
    ConstraintTooComplex,
    TokenizerMismatch,
    UnsatisfiableConstraint,
)
from pc_core.factored_guide import build_guide
from pc_core.feasibility import Feasibility
from pc_core.guide import ConstraintGuide
from pc_core.hmm import HMM
from pc_core.infill import plan_suffix, terminal_vector
from pc_core.kernels import emission_dtype
from pc_core.lazy_guide import build_lazy_guide
from pc_core.params import DecodeParams
from pc_core.results import StreamEvent
from pc_core.search import GuidedSearch


def prepare(
    tokenizer: Any,
    hmm: HMM,
    constraint: Constraint | dict | str | CompiledConstraint,
    prompt: str | Sequence[int] = "",
    params: DecodeParams | None = None,
    on_stream: Callable[[StreamEvent], None] | None = None,
    *,
    deadline: float | None = None,
) -> GuidedSearch:
    """Build the constraint's guide and the search's first state; the constraint is compiled here unless it
    comes as a CompiledConstraint with its automaton (a server compiles in worker processes). Raises
    ConstraintError (incl. UnsatisfiableConstraint within max_new_tokens) for the constraint, TokenizerMismatch
    for the models, and, for an automaton compiled elsewhere whose blocklist mask could dead-end the rest of
    the constraint, BlocklistInteraction (compile it with blocklist_mask=False and call again). `deadline`
    (time.perf_counter()) stops the guide's precompute once passed."""
    params = params or DecodeParams()
    if len(tokenizer) != hmm.vocab_size:
        raise TokenizerMismatch(f"the tokenizer has {len(tokenizer)} tokens but the HMM has {hmm.vocab_size}")
    prompt_ids = (
        list(prompt) if not isinstance(prompt, str) else tokenizer.encode(prompt, add_special_tokens=False)
    )
    started = time.perf_counter()
    compiled = compile_request(constraint, params, tokenizer)  # body, constraint, judged, dfa
    dfa_ms = (time.perf_counter() - started) * 1000
    suffix_plan = plan_suffix(tokenizer, params.suffix)  # infilling: the LM writes the junction, not the rest
    if suffix_plan is not None:
        params = dataclasses.replace(params, suffix=suffix_plan.junction)
    terminal = terminal_vector(hmm, suffix_plan)  # the HMM conditions on the whole suffix
    dfa, guide, precompute_ms = _guide(tokenizer, hmm, compiled, params, deadline, terminal)
    try:
        startable = _can_start(guide, dfa, params.max_new_tokens)
    except ConstraintTooComplex:  # the lazy search could not decide: the explicit automaton, full budget
        if not getattr(dfa, "lazy", False):
            raise
        compiled = compiled.with_dfa(compile_constraint(compiled.judged, tokenizer, max_states=params.max_states,
                                                        time_budget_s=params.time_budget_s))  # fmt: skip
        dfa, guide, precompute_ms = _guide(tokenizer, hmm, compiled, params, deadline, terminal)
        startable = _can_start(guide, dfa, params.max_new_tokens)
    if not startable:
        raise _unsatisfiable(tokenizer, compiled.body, dfa, params)
    context = prompt_ids[-params.hmm_context_tokens :] if params.hmm_context_tokens else []
    search = GuidedSearch(tokenizer, compiled, dfa, guide, params, prompt_ids, on_stream)
    search.suffix_plan, search.prompt_ids = suffix_plan, prompt_ids
    search.guide_state = guide.init_state(params.rows, hmm_context=context)
    search.timings = {"dfa_ms": dfa_ms, "precompute_ms": precompute_ms}
    return search


def _can_start(guide: Any, dfa: TokenDFA, horizon: int) -> bool:
    """Is some text of `horizon` tokens accepted? The lazy guide searches (pc_core.lazy_guide)."""
    if getattr(guide, "can_start", None) is not None:
        return guide.can_start()
    return bool(guide.tables.feasible[horizon][dfa.initial_state])


def _unsatisfiable(
    tokenizer: Any, constraint: Constraint, dfa: TokenDFA, params: DecodeParams
) -> UnsatisfiableConstraint:
    """The error for a request no text can satisfy within max_new_tokens, naming what is to blame: the suffix
    (it cannot be written, or not within the horizon), the stop strings (they cut every satisfying text),
    or the constraint."""
    n, m = params.max_new_tokens, params.min_new_tokens
    if getattr(dfa, "lazy", False):  # an exhausted search of the lazy automaton (pc_core.lazy_feasibility)
        return UnsatisfiableConstraint(
            "constraint", f"cannot be satisfied within max_new_tokens={n} (min_new_tokens={m}): a complete "
            "search of its automaton found no accepted text that short"
        )  # fmt: skip
    limits = {"max_states": params.max_states, "time_budget_s": params.time_budget_s}
    dfa_of = lambda c: compile_constraint(c, tokenizer, **limits)  # noqa: E731 (variants of the request)
    within = f"within max_new_tokens={n} (min_new_tokens={m})"
    if params.banned_tokens:  # the bans are to blame when the request without them could be met
        dfa = dfa_of(with_affixes(constraint, params.suffix, params.stop))
        if dfa.can_accept_within(n):
            return UnsatisfiableConstraint(
                "logit_bias",
                f"the tokens it bans (bias -100) leave no text that satisfies the request {within}",
            )
    needed = int(dfa.steps_to_accept[dfa.initial_state])
    if params.suffix is not None:
        alone = dfa_of(with_affixes(WordCount(0, None), params.suffix))
        least = int(alone.steps_to_accept[alone.initial_state])
        if least < 0:
            return UnsatisfiableConstraint(
                "suffix",
                f"{params.suffix!r} cannot be written with this tokenizer: every way needs a token that ends "
                "inside a UTF-8 character or decodes to U+FFFD, which pcgen never generates (docs/method.md §3)",
            )
        if least > n:
            return UnsatisfiableConstraint(
                "suffix", f"writing its first word {params.suffix!r} takes at least {least} tokens, more than "
                f"max_new_tokens={n} (which counts the span and the suffix's first word)"
            )  # fmt: skip
    if params.stop:
        unstopped = dfa_of(with_affixes(constraint, params.suffix))
        if unstopped.can_accept_within(n):
            return UnsatisfiableConstraint(
                "stop", f"every text that satisfies the constraint {within} contains a stop string"
            )
    with_what = " followed by the suffix" if params.suffix is not None else ""
    if needed >= 0:
        included = " (the suffix's first word included)" if with_what else ""
        detail = f"it needs at least {needed} tokens{included}"
    else:
        detail = explain_unsatisfiable(constraint, tokenizer)
    return UnsatisfiableConstraint("constraint", f"cannot be satisfied {within}{with_what}: {detail}")


def _guide(
    tokenizer: Any,
    hmm: HMM,
    compiled: CompiledConstraint,
    params: DecodeParams,
    deadline: float | None = None,
    terminal: torch.Tensor | None = None,
) -> tuple[TokenDFA, ConstraintGuide, float]:
    """The DFA, its guide and how long the guide took (ms); a blocklist that could dead-end the rest of the
    constraint is compiled into one exact product instead (here: the library's compiler)."""
    compile_args = {"max_states": params.max_states, "time_budget_s": params.time_budget_s}
    guide_args = {
        "horizon": params.max_new_tokens,
        "min_new_tokens": params.min_new_tokens,
        "deadline": deadline,
        "terminal": terminal,
        "emission_dtype": emission_dtype(hmm.device, params.guide_emission_dtype),
    }
    started = time.perf_counter()
    dfa, constraint = compiled.dfa, compiled.judged
    groups = lambda c: compile_constraint(c, tokenizer, blocklist_mask=False, **compile_args)  # noqa: E731
    if getattr(dfa, "lazy", False):  # past the explicit automaton's budget (pc_core.lazy_guide)
        guide = build_lazy_guide(hmm, dfa, constraint, params, tokenizer, note=dfa.note, **guide_args)
        return dfa, guide, (time.perf_counter() - started) * 1000
    feasibility = None  # the guide's, computed here once when the deep values' check needs it
    if dfa.deep_values is not None:
        no_certain = terminal is not None
        feasibility = Feasibility(dfa, params.max_new_tokens, params.min_new_tokens, no_certain=no_certain)
        if not _deep_values_hold(dfa, tokenizer, feasibility):
            dfa = compile_constraint(constraint, tokenizer, deep_values=False, **compile_args)
            feasibility = None
    try:  # exact when it fits the budget, else factored (pc_core.factored_guide)
        guide = build_guide(hmm, dfa, constraint, params, groups, feasibility, **guide_args)
    except BlocklistInteraction:
        if compiled.compiled_elsewhere:  # its compiler compiles the exact product too (a server: in its pool)
            raise
        dfa = compile_constraint(constraint, tokenizer, blocklist_mask=False, **compile_args)
        guide = build_guide(hmm, dfa, constraint, params, groups, **guide_args)
    return dfa, guide, (time.perf_counter() - started) * 1000


def _deep_values_hold(dfa: TokenDFA, tokenizer: Any, feasibility: Feasibility) -> bool:
    """Whether the guide's feasibility on the exact states holds without the deep values' shortcuts
    (json_syntax.py): decoding checks a token into a skeleton with the syntax's own completion, which may
    take more tokens than the automaton's best way through it (a vocabulary with "[]]]" but not "]]"), and
    then a state the guide called feasible could dead-end. Where they differ (the synthetic 128k BPE of
    benchmarks.vocab128k, with merges such as "[]]0}", for the larger schemas; none of MaskBench's on the
    50,257-token BPE), the caller compiles without deep values, before the guide is built. Remembered per
    (horizon, minimum length). `feasibility`: the guide's, for this request's horizon and minimum length."""
    from pc_core.constraints.json_syntax import token_bytes_for

    key = (feasibility.horizon, feasibility.min_new_tokens)
    checked = dfa.deep_values.checked
    if key not in checked:
        exact_part = dfa.deep_values.exact_part(dfa, token_bytes_for(tokenizer))
        plain = Feasibility(exact_part, *key).feasible
        exact = ~dfa.deep_values.deep
        checked[key] = bool(
            np.array_equal(plain[:, : dfa.num_states][:, exact], feasibility.feasible[:, exact])
        )
    return checked[key]
