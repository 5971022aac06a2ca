"""Typed errors. Every error a user can cause names what is wrong (and where, for constraints)."""

from __future__ import annotations


class PcgenError(Exception):
    """Base class for errors the project raises on purpose."""


class ConstraintError(PcgenError, ValueError):
    """A constraint spec is malformed. `path` locates the offending part, e.g. `constraint.all[2].word_at`."""

    error_type = "invalid_constraint"

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")

    def __reduce__(self) -> tuple:  # picklable across processes (a compiling worker sends it back)
        return (type(self), (self.path, self.message), self.__dict__)


class ConstraintTooComplex(ConstraintError):
    """Compiling the constraint would exceed the state cap or the time budget."""

    error_type = "constraint_too_complex"

    def __init__(
        self,
        path: str,
        message: str,
        *,
        states: int | None = None,
        limit: int | None = None,
        out_of_time: bool = False,
    ) -> None:
        self.states = states
        self.limit = limit
        self.out_of_time = (
            out_of_time  # the time budget ran out (another budget might do); else the state cap
        )
        super().__init__(path, message)

    def fresh(self) -> ConstraintTooComplex:
        """The same rejection without a traceback: what a cache keeps. A raised exception's traceback holds
        the frames it passed through (the compiler's tables, the request), megabytes per rejection."""
        return ConstraintTooComplex(
            self.path, self.message, states=self.states, limit=self.limit, out_of_time=self.out_of_time
        )


class UnsatisfiableConstraint(ConstraintError):
    """No text of at most the allowed number of tokens can satisfy the constraint."""

    error_type = "unsatisfiable_constraint"


class TokenizerMismatch(PcgenError, ValueError):
    """A DFA, HMM or data file was built for a different tokenizer / vocabulary size."""


class HMMFormatError(PcgenError, ValueError):
    """An HMM checkpoint is missing, corrupt or inconsistent."""


class BlocklistInteraction(PcgenError):
    """A blocklist enforced beside the guide could dead-end the rest of the constraint within this horizon; the
    caller compiles the constraint as one exact product instead (compile_constraint(blocklist_mask=False))."""


class DeadlineExceeded(PcgenError):
    """Work for a request stopped because the request's deadline passed (nobody waits for the result)."""


class ModelLoadError(PcgenError, OSError):
    """A model or tokenizer cannot be loaded: no such local directory (or not a saved model), or a hub id that
    is neither in the local Hugging Face cache nor downloadable (offline). The message is one line naming the
    source and what was expected."""
