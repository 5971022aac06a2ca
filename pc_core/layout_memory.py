"""The memory the guide's step layouts (step_layout.py, block_plan.py) keep beside one table of guide values.

Layouts are built after the tables entered GUIDE_TABLES (guide.py), so the cache sets aside their share when a
table enters it: `layout_budget(tables)` bytes, which every layout kept beside that table must fit, and past
which they all start over."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from pc_core.guide_tables import GuideTables

# The bytes the layouts kept beside one table may take: LAYOUT_FRACTION of the table's own bytes, within
# [MIN_LAYOUT_BYTES, MAX_LAYOUT_BYTES] (the floor small enough that a tiny model's table and its layouts fit a
# 1 MiB guide cache); past it they start over.
MIN_LAYOUT_BYTES = 256 << 10
LAYOUT_FRACTION = 0.5
MAX_LAYOUT_BYTES = 64 << 20
ENTRY_OVERHEAD = 512  # bytes charged per kept layout beyond its arrays (the key, the Python objects)


def layout_budget(guide_tables: GuideTables) -> int:
    """Bytes the step layouts kept beside `guide_tables` may take. GUIDE_TABLES (guide.py) counts it with the
    tables' own bytes: the layouts are built after the tables entered that cache, so their share is set
    aside when they enter it."""
    share = int(LAYOUT_FRACTION * guide_tables.nbytes)
    return min(MAX_LAYOUT_BYTES, max(MIN_LAYOUT_BYTES, share))


class LayoutMemory:
    """The layout caches kept beside one table and the bytes they hold: `fixed` (arrays built once, kept)
    plus the cached layouts; when a new layout would pass the budget, every cache starts over."""

    def __init__(self, budget: int) -> None:
        self.budget, self.fixed, self.bytes, self.evictions = budget, 0, 0, 0
        self.caches: list[dict] = []

    def cache(self) -> dict:
        cache: dict = {}
        self.caches.append(cache)
        return cache

    def charge(self, nbytes: int) -> bool:
        """Account for a layout about to be kept; False when it alone exceeds the budget (do not keep it)."""
        nbytes += ENTRY_OVERHEAD
        if self.fixed + nbytes > self.budget:
            return False
        if self.fixed + self.bytes + nbytes > self.budget:
            for cache in self.caches:
                cache.clear()
            self.bytes = 0
            self.evictions += 1
        self.bytes += nbytes
        return True


def layout_memory(guide_tables: GuideTables) -> LayoutMemory:
    """The LayoutMemory of `guide_tables` (made on first use, with the tables' layout budget)."""
    memory = getattr(guide_tables, "_layout_memory", None)
    if memory is None:
        memory = guide_tables._layout_memory = LayoutMemory(layout_budget(guide_tables))
    return memory


def nbytes_of(*arrays: np.ndarray) -> int:
    return sum(a.nbytes for a in arrays)


def as_tensors(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """numpy arrays as tensors on `device` (on a CPU, sharing their memory)."""
    if device.type == "cpu":
        return [torch.from_numpy(a) for a in arrays]
    return [torch.from_numpy(a).to(device) for a in arrays]
