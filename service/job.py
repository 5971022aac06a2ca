"""One request's way through the engine (`Job`): its future and stream queue, its state and timestamps. The
event loop creates it (Engine.submit); the decoding thread hands results back through it, always by
`loop.call_soon_threadsafe`."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pc_core.results import GenerationOutput, StreamEvent
from pc_core.search import GuidedSearch
from service.generation import GenerationSpec

_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    generation: GenerationSpec
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    events: asyncio.Queue | None = None  # streaming: ("token", StreamEvent) items, then ("end", None)
    client: str = "anonymous"  # API key id or address: compile work is shared out fairly between clients
    deadline: float | None = None  # time.perf_counter(); work for the job stops once it passes
    id: int = field(default_factory=lambda: next(_ids))
    search: GuidedSearch | None = None  # built by Engine._prepare
    state: str = "preparing"  # preparing -> queued -> running -> done | cancelled | failed
    accepted_at: float = field(default_factory=time.perf_counter)
    queued_at: float | None = None
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    cancel_reason: str | None = None
    compile_ms: float = (
        0.0  # getting the automaton ahead of prepare (compile pool: the wait for a worker too)
    )
    observed: bool = True  # counted in the per-request metrics (False: the warm-up generation)

    # called on the decoding thread -----------------------------------------------------------------

    def push_event(self, event: StreamEvent) -> None:
        if self.events is not None:
            self._call(self.events.put_nowait, ("token", event))

    def resolve(self, output: GenerationOutput) -> None:
        self.finished_at = time.perf_counter()
        self._call(self._set, output, None)

    def fail(self, error: BaseException) -> None:
        self.finished_at = time.perf_counter()
        self._call(self._set, None, error)

    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    # on the event loop -----------------------------------------------------------------------------

    def _set(self, output: GenerationOutput | None, error: BaseException | None) -> None:
        if not self.future.done():
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(output)
        if self.events is not None:
            self.events.put_nowait(("end", None))

    def timings(self) -> dict[str, float]:
        """The engine's dfa_ms, precompute_ms and decode_ms, plus queue_ms: time from acceptance to joining the
        batch not spent compiling (waiting for a preparation thread and for a batch slot)."""
        out = dict(self.search.output.timings) if self.search is not None and self.search.output else {}
        if out:
            out["dfa_ms"] = out.get("dfa_ms", 0.0) + self.compile_ms
        start = self.started_at or self.finished_at or time.perf_counter()
        preparing = out.get("dfa_ms", 0.0) + out.get("precompute_ms", 0.0)
        out["queue_ms"] = max(0.0, (start - self.accepted_at) * 1000 - preparing)
        return out
