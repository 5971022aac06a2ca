"""The exact constraint guide: P_hmm(constraint | prefix, next token) (docs/method.md §5).

A prefix of t tokens is in DFA state s with predictive forward vector a_t[z] = P(z_{t+1} | prefix); with
r = n - t - 1 tokens left after the next one (the tables U_r are in guide_tables.py),
    log P(x, constraint | prefix) = log sum_z a_t[z] B'[z, x] U_r[delta(s, x), z]          (joint)
    log P(x | prefix)             = log sum_z a_t[z] B'[z, x]                              (marginal)
and `next_log_probs` returns their difference, (B, V) for B beams.

A step has three phases, so that many requests (different guides over one HMM) share the products:

    plan = guide.plan(state)                        left rows of the product, per vocabulary block
    products = multiply([(guide, plan), ...])       one (rows, H) x (H, V_k) product per block, all guides
    q = guide.assemble(plan, products[i])           ratios, exact 0 / -inf, the tail, the masks   (B, V)

Tokens are grouped by successor: the few large token classes ("any other word", "a space then any other
word") share a left vector, so a beam needs one row per large-class successor that is neither impossible nor
certain and has tokens in the block, plus its marginal row: about two full-vocabulary rows per beam. A beam
whose successors in a block are all certain or impossible takes no rows there (once every keyword is in, it
costs no product). The small classes (the tail: tokens that start, extend or finish a relevant word) whose
successor differs from their block's are computed per (beam, successor) on their own (H, k) rows of B; the
others keep the block product's value (pc_core/step_layout.py, which also keeps each step's row layout per
visited states). `batched_next_log_probs` runs the three
phases for a list of (guide, state) pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from pc_core.block_plan import BlockLayout, plan_layout
from pc_core.cache import LRUCache
from pc_core.constraints.dfa import TokenDFA
from pc_core.errors import ErrorKind, PcgenError, TokenizerMismatch
from pc_core.feasibility import Feasibility
from pc_core.guide_ratio import ROW_CERTAIN, ROW_IMPOSSIBLE, log_ratio
from pc_core.guide_tables import GuideTables
from pc_core.hmm import HMM
from pc_core.kernels import log_matmul_exp, matmul_exp_nt
from pc_core.layout_memory import layout_budget
from pc_core.logspace import NEG_INF
from pc_core.step_layout import TailStep, assemble_tail, precompute_layouts, tail_step

DEFAULT_MAX_HORIZON = 1024


class GuideError(PcgenError, ValueError):
    """Bad guide arguments: horizon, token ids, prefix longer than the horizon, mismatched sizes."""

    kind = ErrorKind.GUIDE_ERROR


@dataclass
class GuideState:
    """Per-beam state of one request: forward vector, DFA state, shared position (tokens generated)."""

    log_alpha: torch.Tensor  # (B, H) log P(z_{t+1} | prefix), normalised per row
    dfa_state: torch.Tensor  # (B,) long
    position: int
    open_words: tuple[str, ...] | None = None  # (B,) with a blocklist beside the DFA: each beam's open word

    @property
    def batch_size(self) -> int:
        return int(self.dfa_state.shape[0])

    def select(self, index: torch.Tensor | Sequence[int]) -> GuideState:
        """Reorder / filter / duplicate beams (e.g. after a beam-search step)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.dfa_state.device)
        words = None if self.open_words is None else tuple(self.open_words[i] for i in index.tolist())
        return GuideState(
            self.log_alpha.index_select(0, index), self.dfa_state.index_select(0, index), self.position, words
        )


class BlockPlan(NamedTuple):
    """A guide's share of one vocabulary block's product in a step."""

    rows: torch.Tensor  # (M + Q, H) log-space left rows: M marginal rows, then Q joint rows
    row_of_slot: torch.Tensor  # (B, D) joint row per dense successor slot, or ROW_IMPOSSIBLE / ROW_CERTAIN
    marginal_row: torch.Tensor  # (B,) each beam's marginal row, -1 where it needs none in this block
    layout: BlockLayout | None = None  # where the rows came from (block_plan.py): the assembly reads it


class StepPlan(NamedTuple):
    state: GuideState  # the beams the plan is for
    blocks: list[BlockPlan]  # per vocabulary block
    tail: TailStep | None | bool = False  # the tail's layout (step_layout.py; False: not looked up)
    left: torch.Tensor | None = None  # (B, H) the beams' scaled forward rows
    tail_rows: torch.Tensor | None = None  # the tail's product rows (None: built by assemble_tail)
    uniform: bool = False  # every block has the same whole rows (block_plan.py): `multiply` takes one product


def _with_marginal_rows(
    left: torch.Tensor, with_marginal: torch.Tensor, joint: torch.Tensor | None, start: int, count: int
) -> tuple[torch.Tensor, int]:
    """The product rows of a block or the tail: the marginal rows of the beams `with_marginal`, then its
    `count` joint rows, joint[start : start + count]; and where the next part's joint rows start."""
    if len(with_marginal) == left.shape[0] == 1:  # one beam (with_marginal is [0])
        marginal = left
    else:
        marginal = left.index_select(0, with_marginal)
    if not count:
        return marginal, start
    return torch.cat([marginal, joint[start : start + count]]), start + count


def _joint_rows(
    guide_tables: GuideTables, r: int, left: torch.Tensor, pair_beam: torch.Tensor, pair_state: torch.Tensor
) -> torch.Tensor:
    """left[pair_beam] + log U_r[pair_state] (P, H): the joint rows of a step. With float32 rows (no scale),
    read through index_select (a fraction of advanced indexing's cost at a step's sizes) and, for one beam,
    the beam's row added to them in place (the same sums: float addition commutes)."""
    if guide_tables.row_scale is not None:
        joint = left.index_select(0, pair_beam)
        joint += guide_tables.rows(r, pair_state)
        return joint
    ids = guide_tables.row_index[r].index_select(0, pair_state)
    joint = guide_tables.log_rows.index_select(0, ids)
    if left.shape[0] == 1:
        return joint.add_(left)
    return joint.add_(left.index_select(0, pair_beam))


Product = tuple[torch.Tensor, torch.Tensor]  # (rows, V_k) linear values and (rows,) log shift per row
# (the values in the product's dtype: bfloat16 with a bfloat16 emission; guide_ratio reads them exactly)

GUIDE_TABLES: LRUCache[GuideTables] = LRUCache("guide", 2 * 2**30, lambda t: t.nbytes + layout_budget(t))
"""Guide tables by content (DFA, horizon, minimum length, HMM, device, dtype), bounded in bytes: the tables'
own and the share their step layouts (kept beside them once steps run, step_layout.py) may take."""


def tables_for(
    hmm: HMM,
    dfa: TokenDFA,
    horizon: int,
    min_new_tokens: int,
    emission_dtype: torch.dtype,
    deadline: float | None = None,
    terminal: torch.Tensor | None = None,
    table_dtype: torch.dtype = torch.float32,
    feasibility: Feasibility | None = None,
) -> GuideTables:
    key = (dfa.content_key, horizon, min_new_tokens, hmm.fingerprint, str(hmm.device), emission_dtype)
    key += (table_dtype,) if table_dtype != torch.float32 else ()
    if terminal is not None:  # infilling: the suffix's rest (pc_core.infill)
        key += (hashlib.sha256(terminal.detach().float().cpu().numpy().tobytes()).hexdigest(),)
    guide_tables = GUIDE_TABLES.get(key)
    if guide_tables is None:
        guide_tables = GuideTables(
            hmm, dfa, horizon, min_new_tokens, emission_dtype, deadline, terminal, table_dtype, feasibility
        )
        precompute_layouts(guide_tables)  # what a step in a new state would build (step_layout.py)
        GUIDE_TABLES.put(key, guide_tables)
    return guide_tables


class ConstraintGuide:
    """`ConstraintGuide(hmm, dfa, horizon=n)`; see the module docstring for the mathematics."""

    kind = "exact"  # beside factored_guide.FactoredGuide: which guide a response says ran
    # a block whose tokens read one product row per beam takes that row whole (_assemble_block); False: a
    # per-token gather wherever a beam has several successors in the block (the reference, tests)
    ONE_ROW_PER_BEAM = True

    def __init__(
        self,
        hmm: HMM,
        dfa: TokenDFA,
        horizon: int,
        min_new_tokens: int = 0,
        max_horizon: int = DEFAULT_MAX_HORIZON,
        emission_dtype: torch.dtype = torch.float32,
        deadline: float | None = None,
        terminal: torch.Tensor | None = None,
        table_dtype: torch.dtype = torch.float32,
        feasibility: Feasibility | None = None,
    ) -> None:
        """`deadline` (time.perf_counter()): a precompute still running then stops (DeadlineExceeded).
        `terminal` (H,): infilling, log P(the suffix's rest | z emits its first token) (pc_core.infill)."""
        if dfa.vocab_size != hmm.vocab_size:
            raise TokenizerMismatch(
                f"the DFA was compiled for a vocabulary of {dfa.vocab_size} tokens but the HMM has {hmm.vocab_size}"
            )
        if hmm.eos_token_id is not None and hmm.eos_token_id != dfa.eos_token_id:
            raise TokenizerMismatch(f"EOS differs: DFA {dfa.eos_token_id}, HMM {hmm.eos_token_id}")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= max_horizon:
            raise GuideError(f"horizon must be an integer in 1..{max_horizon}, got {horizon!r}")
        if not 0 <= min_new_tokens <= horizon:
            raise GuideError(f"min_new_tokens must be in 0..horizon ({horizon}), got {min_new_tokens}")
        self.hmm, self.dfa, self.horizon, self.min_new_tokens = hmm, dfa, horizon, min_new_tokens
        self.emission_dtype = emission_dtype
        self.tables = tables_for(
            hmm, dfa, horizon, min_new_tokens, emission_dtype, deadline, terminal, table_dtype, feasibility
        )
        emission_operands(hmm, self.tables, emission_dtype)  # built now, not in a step

    # ------------------------------------------------------------------ states

    def init_state(self, batch_size: int = 1, hmm_context: Sequence[int] | None = None) -> GuideState:
        """Beams at position 0. `hmm_context`: prompt tokens fed into the forward vector (not the DFA)."""
        hmm = self.hmm
        log_alpha = hmm.log_initial.float()[None, :]  # (1, H)
        dfa_state = torch.full((1,), self.dfa.initial_state, dtype=torch.long, device=hmm.device)
        for token in hmm_context or ():  # the prompt is observed as is: the unrestricted emission
            self._check_tokens([token])
            log_alpha = self._forward(log_alpha, torch.tensor([token], device=hmm.device), generated=False)
        state = GuideState(log_alpha, dfa_state, 0, ("",) if self.dfa.blocklist is not None else None)
        return state.select([0] * batch_size)

    def _forward(self, log_alpha: torch.Tensor, tokens: torch.Tensor, generated: bool = True) -> torch.Tensor:
        """a' = normalise((a * B'[:, x]) @ A), in log space (B for prompt tokens)."""
        emitted = log_alpha + self.hmm.log_emission.index_select(1, tokens).T.float()  # (B, H)
        if generated:
            emitted = emitted + self.tables.log_scale
        scaled, log_peak = self.hmm.transition_scaled()
        if emitted.is_cuda or scaled.dtype != torch.float32:
            out = log_matmul_exp(emitted, scaled) + log_peak
            return out - torch.logsumexp(out, dim=1, keepdim=True)
        # on a CPU, kernels.reference.log_matmul_exp's operations, fewer of them (a step's fixed cost):
        # the same values, in place where it makes new tensors; the shift is 0 for a row with no finite entry
        shift = torch.nan_to_num(emitted.amax(dim=1, keepdim=True), nan=0.0, posinf=0.0, neginf=0.0)
        out = (emitted - shift).exp_() @ scaled  # (B, H)
        out.log_().add_(shift).add_(log_peak)
        return out.sub_(torch.logsumexp(out, dim=1, keepdim=True))

    def advance(self, state: GuideState, tokens: torch.Tensor | Sequence[int]) -> GuideState:
        """Every beam takes its next token (B,)."""
        if isinstance(tokens, (list, tuple)) and all(type(x) is int for x in tokens):  # checked as ints
            if tokens and (min(tokens) < 0 or max(tokens) >= self.hmm.vocab_size):
                raise GuideError(f"token ids must be in 0..{self.hmm.vocab_size - 1}")
            tokens = torch.tensor(tokens, dtype=torch.long, device=self.hmm.device)
        else:
            tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.hmm.device).reshape(-1)
            self._check_tokens(tokens)
        if tokens.shape[0] != state.batch_size:
            raise GuideError(f"expected {state.batch_size} tokens (one per beam), got {tokens.shape[0]}")
        if state.position >= self.horizon:
            raise GuideError(f"the prefix already has {state.position} tokens, the horizon is {self.horizon}")
        guide_tables = self.tables
        next_dfa = guide_tables.transitions[state.dfa_state, guide_tables.token_class[tokens]]
        words = state.open_words
        if words is not None:
            blocklist = self.dfa.blocklist
            words = tuple(blocklist.advance(w, x) for w, x in zip(words, tokens.tolist()))
        return GuideState(self._forward(state.log_alpha, tokens), next_dfa, state.position + 1, words)

    def _check_tokens(self, tokens: torch.Tensor | Sequence[int]) -> None:
        tokens = torch.as_tensor(tokens)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.hmm.vocab_size):
            raise GuideError(f"token ids must be in 0..{self.hmm.vocab_size - 1}")

    def state_for(self, prefix: Sequence[int], hmm_context: Sequence[int] | None = None) -> GuideState:
        if len(prefix) > self.horizon:
            raise GuideError(f"prefix of {len(prefix)} tokens is longer than the horizon {self.horizon}")
        state = self.init_state(1, hmm_context)
        for token in prefix:
            state = self.advance(state, [token])
        return state

    # ------------------------------------------------------------------ queries

    def next_log_probs(self, state_or_prefix: GuideState | Sequence[int]) -> torch.Tensor:
        """log P(constraint | prefix, x) for every x: (B, V) for a state, (V,) for a token-id prefix."""
        if isinstance(state_or_prefix, GuideState):
            return batched_next_log_probs([(self, state_or_prefix)])[0]
        return batched_next_log_probs([(self, self.state_for(state_or_prefix))])[0][0]

    def log_prob(self, state_or_prefix: GuideState | Sequence[int]) -> torch.Tensor:
        """log P(constraint | prefix) over continuations that complete the horizon: (B,) or a scalar."""
        single = not isinstance(state_or_prefix, GuideState)
        state = self.state_for(state_or_prefix) if single else state_or_prefix
        guide_tables = self.tables
        k = self.horizon - state.position
        if guide_tables.terminal is not None and bool(self.dfa.ended[state.dfa_state.cpu().numpy()].all()):
            # ended: the rest must follow
            out = torch.logsumexp(state.log_alpha + guide_tables.terminal, dim=1)
            out = torch.where(guide_tables.feasible[0][state.dfa_state], out, NEG_INF)
        elif k == 0:
            out = torch.where(guide_tables.feasible[0][state.dfa_state], 0.0, NEG_INF)
        else:
            # R_k[s] = edge sum over U_{k-1}, only for the beams' states
            r_k = guide_tables.edge_sum(k, state.dfa_state)  # (B, H)
            r_k = torch.where(guide_tables.feasible[k][state.dfa_state][:, None], r_k, NEG_INF)
            out = torch.logsumexp(state.log_alpha + r_k, dim=1)
            out = torch.where(guide_tables.certain[k][state.dfa_state], 0.0, out.clamp_max(0.0))
        return out[0] if single else out

    # ------------------------------------------------------------------ a step: plan, (multiply), assemble

    def plan(self, state: GuideState) -> StepPlan:
        """Left rows of the shared product, per vocabulary block: a marginal row for each beam with a ratio
        to compute in that block, then one row per needed (beam, dense successor) whose classes have tokens
        in the block. A beam whose successors in a block are all certain or impossible needs no row there:
        its values are exactly 0 or -inf."""
        guide_tables = self.tables
        if state.position >= self.horizon:
            raise GuideError(f"the prefix already has {state.position} tokens, the horizon is {self.horizon}")
        r = self.horizon - state.position - 1
        left = state.log_alpha + guide_tables.log_scale  # (B, H): a_t * scale, so rows @ B equals a_t @ B'
        states = state.dfa_state.tolist()
        layouts = plan_layout(guide_tables, states, r)  # kept per beam states (block_plan.py)
        tail = tail_step(guide_tables, states, r) if guide_tables.tail_tokens.numel() else None
        uniform = bool(layouts) and layouts[0].uniform  # the same rows in every block: built once
        # every joint row of the step, the blocks' pairs then the tail's, from one gather of U_r (fewer ops)
        parts = [b for b in layouts[: 1 if uniform else len(layouts)] if b.pair_state.numel()]
        if tail is not None and tail.pair_state.numel():
            parts.append(tail)
        joint = None
        if parts:
            pair_beam, pair_state = (
                (parts[0].pair_beam, parts[0].pair_state) if len(parts) == 1
                else (torch.cat([p.pair_beam for p in parts]), torch.cat([p.pair_state for p in parts]))
            )  # fmt: skip
            joint = _joint_rows(guide_tables, r, left, pair_beam, pair_state)
        start, blocks = 0, []
        for b in layouts:  # (M + Q, H): the marginal rows, then the pairs'
            if not (uniform and blocks):
                rows, start = _with_marginal_rows(left, b.with_marginal, joint, start, b.pair_state.numel())
            blocks.append(BlockPlan(rows, b.row_of_slot, b.marginal_row, b))
        tail_rows = None
        if tail is not None and tail.pair_state.numel():
            count = tail.pair_state.numel()
            tail_rows, start = _with_marginal_rows(left, tail.with_marginal, joint, start, count)
        return StepPlan(state, blocks, tail, left, tail_rows, uniform)

    def assemble(self, plan: StepPlan, products: Sequence[Product]) -> torch.Tensor:
        """(B, V) log P(constraint | prefix, x) from this guide's slices of the block products plus the tail,
        with banned tokens, ending tokens (EOS, and those that complete a stop string or the suffix) before the
        minimum length and the blocklist's tokens at -inf."""
        state, guide_tables = plan.state, self.tables
        out = torch.empty(state.batch_size, self.hmm.vocab_size, device=state.log_alpha.device)  # block order
        # one product over the whole vocabulary, in token order (multiply, for a uniform plan): no permutation
        whole = guide_tables.num_blocks > 1 and len(products) == 1
        if whole:
            if not plan.uniform:
                raise GuideError("a whole-vocabulary product is for a plan whose blocks have the same rows")
            self._assemble_block(state, 0, products[0], plan.blocks[0], out, token_order=True)
        else:
            column = 0
            for k, (product, block) in enumerate(zip(products, plan.blocks)):
                width = guide_tables.block_tokens[k].numel()
                self._assemble_block(state, k, product, block, out[:, column : column + width])
                column += width
        if guide_tables.tail_tokens.numel():  # the tail tokens the blocks did not give (step_layout.py)
            assemble_tail(self, state, out, plan.tail, plan.left, plan.tail_rows, token_order=whole)
        out.clamp_max_(0.0)
        if guide_tables.num_blocks > 1 and not whole:  # back to token order (one beam: along the flat row)
            if state.batch_size == 1:
                out = out.view(-1).index_select(0, guide_tables.block_position).view(1, -1)
            else:
                out = out.index_select(1, guide_tables.block_position)
        if guide_tables.banned is not None:
            out.index_fill_(1, guide_tables.banned, NEG_INF)
        if state.position + 1 < self.min_new_tokens + 1:  # no end (EOS, a stop string, the suffix) yet
            out[:, guide_tables.eos_token_id] = NEG_INF
            if guide_tables.ends_by_text:
                ending = guide_tables.ending_t[state.dfa_state][:, guide_tables.token_class]  # (B, V)
                out.masked_fill_(ending, NEG_INF)
        if state.open_words is not None:  # the blocklist beside the DFA
            for beam, word in enumerate(state.open_words):
                blocked = torch.from_numpy(~self.dfa.blocklist.allowed(word)).to(out.device)
                out[beam].masked_fill_(blocked, NEG_INF)
        return out

    def _assemble_block(
        self,
        state: GuideState,
        k: int,
        product: Product,
        block: BlockPlan,
        ratio: torch.Tensor,
        token_order: bool = False,
    ) -> None:
        """Fill ratio (B, V_k), a view: one ratio joint / marginal, one log and one shift per entry, then
        exactly 0 / -inf where the successor is certain / impossible. `token_order`: the product and ratio
        span the whole vocabulary in token order (a uniform plan's rows, whole rows)."""
        guide_tables, layout = self.tables, block.layout
        if layout is not None and layout.row is not None:  # one successor per beam: whole rows, as planned
            values, shift = product
            if values.shape[0]:
                tokens = None if token_order else guide_tables.block_tokens[k]
                log_ratio(self, state, ratio, values, shift, layout.row, block.marginal_row, tokens,
                          layout.in_order)  # fmt: skip
            for beams, value in ((layout.impossible, NEG_INF), (layout.certain, 0.0)):
                if beams is None:
                    continue
                if ratio.shape[0] == 1:  # one beam: it is that beam, a plain fill
                    ratio.fill_(value)
                else:
                    ratio.index_fill_(0, beams, value)
            return
        slots = guide_tables.block_slot[state.dfa_state, k]  # (B,)
        # one successor per beam: whole rows
        if guide_tables.block_slot_everywhere[k] or bool((slots >= 0).all()):
            row = block.row_of_slot.gather(1, slots[:, None].clamp_min(0))  # (B, 1)
            values, shift = product
            if values.shape[0]:
                tokens = guide_tables.block_tokens[k]
                log_ratio(self, state, ratio, values, shift, row, block.marginal_row, tokens)
            for code, value in ((ROW_IMPOSSIBLE, NEG_INF), (ROW_CERTAIN, 0.0)):
                hit = (row[:, 0] == code).nonzero()[:, 0]  # whole rows: fill only those
                if hit.numel():
                    ratio.index_fill_(0, hit, value)
            return
        # several successors in this block: a row per token, looked up per class (C), then per token (V_k)
        classes = guide_tables.block_class[k]
        slot = guide_tables.slot_of_class[state.dfa_state].clamp_min(0)  # (B, C)
        row_of_class = block.row_of_slot.gather(1, slot)  # (B, C)
        values, shift = product
        if values.shape[0]:
            b = ratio.shape[0]
            joint_row = torch.arange(b, 2 * b, device=ratio.device)[:, None]  # (B, 1)
            one_row = self.ONE_ROW_PER_BEAM and values.shape[0] == 2 * b
            if one_row and bool(((row_of_class == joint_row) | (row_of_class < 0)).all()):
                # 2B rows and each beam's one joint row B + b: every beam has its marginal row, then that row
                # (in order); its value for every token (the tokens of the other slots are certain or
                # impossible, filled below), without a per-token gather
                log_ratio(self, state, ratio, values, shift, joint_row, block.marginal_row,
                          guide_tables.block_tokens[k], in_order=True)  # fmt: skip
            else:
                row = row_of_class.index_select(1, classes)  # (B, V_k)
                tokens = guide_tables.block_tokens[k]
                log_ratio(self, state, ratio, values, shift, row, block.marginal_row, tokens)
        for code, value in ((ROW_IMPOSSIBLE, NEG_INF), (ROW_CERTAIN, 0.0)):
            hit = row_of_class == code  # (B, C)
            if bool(hit.any()):
                ratio.masked_fill_(hit.index_select(1, classes), value)


def emission_operands(hmm: HMM, guide_tables: GuideTables, dtype: torch.dtype) -> list:
    """The right operands of `multiply` for these tables (cached on the HMM, once per model and vocabulary
    partition; packing one takes ~0.1 s at H = 256, V = 50k): each block's emission and, with several blocks
    on a CPU, the whole vocabulary's (last), which uniform plans read. The list itself is cached there too
    (one lookup per step instead of one per operand)."""

    def build() -> list:
        if guide_tables.num_blocks == 1:
            return [hmm.emission_block(None, f"{guide_tables.block_key}/0", dtype)]
        blocks = [
            hmm.emission_block(tokens, f"{guide_tables.block_key}/{k}", dtype)
            for k, tokens in enumerate(guide_tables.block_tokens)
        ]
        if torch.device(hmm.device).type != "cpu":  # uniform plans are CPU-only (block_plan.py): no second
            return blocks  # emission-sized buffer on a GPU
        return [*blocks, hmm.emission_block(None, "all/0", dtype)]

    return hmm._cached(("guide-operands", guide_tables.block_key, guide_tables.num_blocks, dtype), build)


def multiply(items: Sequence[tuple[ConstraintGuide, StepPlan]]) -> list[list[Product]]:
    """The products of a step for several guides over one HMM: per vocabulary block, the planned rows of all
    guides with the same blocks in one (rows, H) x (H, V_k) product. Returns each guide's slices. Where every
    guide of a group has a uniform plan (the same whole rows in every block), one (rows, H) x (H, V) product
    in token order instead: each guide's list then holds that one product."""
    if not items:
        return []
    hmm = items[0][0].hmm
    if any(g.hmm is not hmm for g, _ in items):
        raise GuideError("batched guides must share one HMM")
    products: list[list[Product]] = [[] for _ in items]
    groups: dict[tuple, list[int]] = {}  # guides with the same vocabulary blocks share their products
    for i, (guide, _) in enumerate(items):
        groups.setdefault((guide.tables.block_key, guide.emission_dtype), []).append(i)
    for (_, dtype), members in groups.items():
        guide_tables = items[members[0]][0].tables
        operands = emission_operands(hmm, guide_tables, dtype)  # (V_k, H) each, maybe packed
        if guide_tables.num_blocks > 1 and all(getattr(items[i][1], "uniform", False) for i in members):
            # every block has the same rows: one product over the whole vocabulary, in token order (the
            # emission a single-block guide reads), so the assembly needs no permutation back to token order
            products_of = [(0, operands[-1], hmm.vocab_size)]
        else:
            products_of = [(k, operands[k], guide_tables.block_tokens[k].numel())
                           for k in range(guide_tables.num_blocks)]  # fmt: skip
        for k, right, width in products_of:
            parts = [items[i][1].blocks[k].rows for i in members]
            rows = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
            if rows.shape[0]:
                values, shift = matmul_exp_nt(rows, right, raw=True)  # (rows of all members, width), (rows,)
            else:  # every beam certain or impossible in this block
                values, shift = rows.new_empty(0, width), rows.new_empty(0)
            if len(members) == 1:
                products[members[0]].append((values, shift))
                continue
            start = 0
            for i, part in zip(members, parts):
                size = part.shape[0]
                products[i].append((values[start : start + size], shift[start : start + size]))
                start += size
    return products


def batched_next_log_probs(items: Sequence[tuple[ConstraintGuide, GuideState]]) -> list[torch.Tensor]:
    """Step several guides (different constraints, same HMM) with one shared product per vocabulary block."""
    planned = [(guide, guide.plan(state)) for guide, state in items]
    return [guide.assemble(plan, products) for (guide, plan), products in zip(planned, multiply(planned))]
