"""What an exact guide costs for one model and device, and the budget it must fit (docs/method.md §5.9).

The exact guide stores one (H,) row per live (step, state) pair (feasibility.Feasibility.live: reachable
from the start, able to accept in the remaining steps, not certain) and computes each with one (H,) x (H, H)
product, so for P live pairs, H hidden states, b bytes per stored value, S states and T tail tokens:

    table bytes   = P x H x b  +  E x H x 4  +  S x (C + T) x 8    (rows, edge masses, step layout)
    precompute    = 2 x H^2 x P  +  EDGE_WEIGHT x H x P x E / S         (GEMM flops, edge sums)

for E distinct edges. The edge sum (a gather, two products and an index_add per element, about E / S edges
per live row) is memory-bound: measured on the 2-core CPU it took as long per element as ~30 GEMM flops (the
six-keyword constraint at H = 256: 18 s of CPU for 1.6 M edge rows beside 10 GFLOP of products), so it is
counted as EDGE_WEIGHT flop-equivalents per element.

A flat cap on DFA states cannot say this: the six-keyword constraint's 3,330 states cost 159 MB and 22 GFLOP
at H = 256, and 15 times the bytes and 120 times the flops at H = 4096. The defaults follow the device: a
CPU is given 512 MiB of tables and a set-up time, CPU_SETUP_S of precompute on one core at CPU_FLOP_RATE
(18 GFLOP); an accelerator 4 GiB and 20 TFLOP (sized from an H100's peak, not measured here). Past the budget
the request gets the factored guide (factored_guide.py) or, when the caller asks for the exact guide only, a
ConstraintTooComplex that says what the exact guide would cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pc_core.constraints.dfa import TokenDFA
from pc_core.errors import ConstraintTooComplex
from pc_core.feasibility import Feasibility

CPU_FLOP_RATE = 12e9
"""The exact guide's precompute on one core of the dev box's CPU, in the cost's flop-equivalents per second
(H = 256, float32, one torch thread: 7-25 over 27 guides of the families and editing benchmarks, median about
13; the edge sums' share makes it vary). A rate, not a measurement at run time: the choice of guide does not
depend on the machine's load."""
CPU_SETUP_S = 1.5
"""The exact guide's expected precompute on a CPU, at most (seconds at CPU_FLOP_RATE): past it the factored or
lazy guide sets up in less (once over 5 keywords: 19-22 GFLOP, 1.5-1.7 s exact, 1.1-1.3 s in all factored)."""
CPU_TABLE_BYTES, CPU_FLOPS = 512 * 2**20, CPU_SETUP_S * CPU_FLOP_RATE
GPU_TABLE_BYTES, GPU_FLOPS = 4 * 2**30, 20e12
EDGE_WEIGHT = 30.0
BIG_CLASS_FRACTION = 0.01  # as guide_tables: classes with >= 1% of the vocabulary are not in the tail


@dataclass(frozen=True)
class GuideBudget:
    table_bytes: int
    flops: float
    table_dtype: torch.dtype = torch.float32  # what the rows are stored in (guide_tables.py)

    @classmethod
    def for_device(
        cls,
        device: torch.device | str,
        table_bytes: int | None = None,
        gflops: float | None = None,
        table_dtype: str = "auto",
    ) -> GuideBudget:
        """The defaults of `device` (CPU or an accelerator), each replaced where given. `table_dtype`:
        auto (bfloat16 rows on an accelerator, float32 on CPU), float32 or bfloat16."""
        accelerator = torch.device(device).type != "cpu"
        default_bytes, default_flops = (
            (GPU_TABLE_BYTES, GPU_FLOPS) if accelerator else (CPU_TABLE_BYTES, CPU_FLOPS)
        )
        dtype = {"auto": torch.bfloat16 if accelerator else torch.float32, "float32": torch.float32,
                 "bfloat16": torch.bfloat16}[table_dtype]  # fmt: skip
        return cls(
            default_bytes if table_bytes is None else int(table_bytes),
            default_flops if gflops is None else float(gflops) * 1e9,
            dtype,
        )

    def describe(self) -> str:
        return f"{_bytes(self.table_bytes)} of tables and {_flops(self.flops)} of precompute"


@dataclass(frozen=True)
class GuideCost:
    pairs: int  # live (step, state) pairs
    states: int
    hidden: int
    table_bytes: int
    flops: float

    def fits(self, budget: GuideBudget) -> bool:
        return self.table_bytes <= budget.table_bytes and self.flops <= budget.flops

    def describe(self) -> str:
        return (
            f"{self.pairs:,} live (step, state) pairs of a {self.states:,}-state automaton at H = {self.hidden}: "
            f"{_bytes(self.table_bytes)} of tables and {_flops(self.flops)} of precompute"
        )


def exact_cost(dfa: TokenDFA, feasibility: Feasibility, hidden: int, bytes_per_value: int) -> GuideCost:
    """The exact guide's cost for this DFA and horizon (the module docstring's formulas)."""
    pairs = feasibility.live_pairs
    s_count, c_count = dfa.transitions.shape
    tail = int(
        (~(dfa.class_sizes >= max(1, int(BIG_CLASS_FRACTION * dfa.vocab_size))))[dfa.token_class].sum()
    )
    edges = len(feasibility.edges)
    layout = s_count * (c_count + tail) * 8 + edges * hidden * 4
    edge_work = EDGE_WEIGHT * hidden * pairs * edges / max(1, s_count)  # the edge sum, per live row
    flops = 2.0 * hidden**2 * pairs + edge_work
    return GuideCost(pairs, s_count, hidden, pairs * hidden * bytes_per_value + layout, flops)


def too_costly(cost: GuideCost, budget: GuideBudget) -> ConstraintTooComplex:
    """The refusal when only the exact guide may run and it does not fit."""
    return ConstraintTooComplex(
        "constraint",
        f"the exact guide would need {cost.describe()}, above this server's budget of {budget.describe()}; "
        "simplify the constraint, or allow the factored guide (docs/method.md §5.9)",
        states=cost.states,
    )


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def _flops(n: float) -> str:
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} FLOP"


def dtype_bytes(dtype: torch.dtype) -> int:
    return int(torch.empty(0, dtype=dtype).element_size())
