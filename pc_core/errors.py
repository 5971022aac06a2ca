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
        self, path: str, message: str, *, states: int | None = None, limit: int | None = None
    ) -> None:
        self.states = states
        self.limit = limit
        super().__init__(path, message)


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
