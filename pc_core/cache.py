"""A thread-safe LRU cache bounded in bytes: the one cache type every per-process table cache uses.

Entries are evicted least-recently-used first when the bytes they account for exceed `max_bytes`; an entry
larger than the whole budget is not kept at all. `size_of(value)` says what an entry costs. Hits, misses,
evictions, bytes and entries are readable for metrics.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import numpy as np

V = TypeVar("V")


class LRUCache(Generic[V]):
    def __init__(self, name: str, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # entries dropped to stay within max_bytes (a full cache: evictions keep growing)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: V) -> None:
        size = max(0, int(self._size_of(value)))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if size > self.max_bytes:
                return
            self._entries[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
                self.evictions += 1

    def resize(self, max_bytes: int) -> None:
        """A new bound (a server applies its settings), evicting down to it."""
        with self._lock:
            self.max_bytes = max_bytes
            while self.bytes > self.max_bytes and self._entries:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0


def buffer_bytes(values: Iterable[Any]) -> int:
    """Bytes of the tensors and arrays among `values` (lists, tuples and dicts searched too), each buffer once:
    a tensor made by torch.from_numpy shares its array's buffer. What a cache entry really holds, so that a
    byte bound is a bound on memory."""
    torch = sys.modules.get("torch")  # not imported: no tensors (the constraint compiler runs without torch)
    seen: set[int] = set()
    total, stack = 0, list(values)
    while stack:
        value = stack.pop()
        if torch is not None and isinstance(value, torch.Tensor):
            try:
                storage = value.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
            except (RuntimeError, NotImplementedError):  # opaque layouts (oneDNN-packed weights)
                key, size = id(value), value.numel() * value.element_size()
        elif isinstance(value, np.ndarray):
            while isinstance(value.base, np.ndarray):
                value = value.base
            key, size = value.__array_interface__["data"][0], value.nbytes
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
            continue
        elif isinstance(value, dict):
            stack.extend(value.values())
            continue
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. a oneDNN-packed matrix
            stack.extend(vars(value).values())
            continue
        else:
            continue
        if key not in seen:
            seen.add(key)
            total += size
    return total
