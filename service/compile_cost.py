"""How heavy a constraint's compile looks, from its structure alone, before any compiling: what sends it to the
compile pool's light or heavy lane (service/compile_pool.py)."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

from pc_core.constraints.spec import parse_constraint

HEAVY_COST = 100.0  # estimated_cost above which a constraint goes straight to the heavy lane (6 keywords)


def estimated_cost(constraint: Any) -> float:
    """A cheap guess of the automaton's size from the constraint's structure alone: each keyword multiplies it
    by ~2.5 (seen or not, times its forms' partial matches; measured on the tests' BPE, 1-8 keywords: 23, 66,
    198, 450, 1202, 2946, 6402, 15106 states), counters by their range, positions by their index. Only its
    order of magnitude matters: it picks a lane."""
    return _cost(parse_constraint(constraint))


def _cost(node: Any) -> float:
    name = type(node).__name__
    if name == "Keyword":
        return 2.5 * (1 + len(node.variants)) ** 0.5
    if name in ("WordCount",):
        return float((node.max if node.max is not None else node.min) + 1)
    if name == "WordAt":  # from the end: a history of |index| words, 2^|index| states
        positions = node.index + 1 if node.index > 0 else 2.0 ** min(-node.index, 60)
        return float(positions) * _cost(node.word)
    if name == "Count":
        return float((node.max if node.max is not None else node.min) + 2) * _cost(node.keyword)
    if name in ("Ordered",):
        return float(len(node.items) + 1) * math.prod(_cost(k) for k in node.items)
    if name in ("Tokens", "EndsWith"):
        return float(len(getattr(node, "ids", getattr(node, "text", ()))) + 1)
    if name == "Affixed":
        # partial matches of the suffix's junction and the stop strings: states added near the end, mostly
        extra = sum(len(s) for s in node.stop) + len(node.suffix or "")
        return _cost(node.body) * (1 + 0.1 * extra)
    children = [v for v in _node_values(node)]
    product = math.prod(_cost(c) for c in children) if children else 1.0
    known = name in ("All", "AnyOf", "Not", "AtLeast", "AtMost")
    return product if known else 16.0 * product  # an operator this estimate does not know: assume heavier


def _node_values(node: Any) -> list[Any]:
    """The constraint nodes directly below `node`, whatever its type."""
    out = []
    for f in fields(node) if is_dataclass(node) else ():
        value = getattr(node, f.name)
        values = value if isinstance(value, tuple) else (value,)
        out.extend(v for v in values if is_dataclass(v))
    return out
