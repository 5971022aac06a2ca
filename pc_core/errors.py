"""Typed errors. Every error a user can cause names what is wrong (and where, for constraints).

Each error class has one `ErrorKind`: the whole list of what can go wrong, in one enum. The library never
thinks in HTTP statuses; the service maps each kind to its status in one table (service/errors.py), as TGI
maps its InferError variants."""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    """What went wrong; the value is the machine-readable `error.type` an API answers with."""

    INVALID_CONSTRAINT = "invalid_constraint"  # ConstraintError: a malformed spec
    CONSTRAINT_TOO_COMPLEX = "constraint_too_complex"  # past the state cap, time budget or guide budget
    UNSATISFIABLE_CONSTRAINT = "unsatisfiable_constraint"  # no text within max_new_tokens
    INVALID_PARAMETERS = "invalid_parameters"  # params.DecodingError
    TIMEOUT = "timeout"  # DeadlineExceeded: the request's own deadline stopped the work
    COMPILE_BACKLOG_FULL = "compile_backlog_full"  # a client has its maximum of compiles waiting (service)
    MODEL_MISMATCH = "model_mismatch"  # TokenizerMismatch: the models do not fit together
    MODEL_ERROR = "model_error"  # HMMFormatError
    GUIDE_ERROR = "guide_error"  # guide.GuideError: bad guide arguments (a bug upstream of the guide)
    INTERNAL = "internal_error"  # anything else raised on purpose (BlocklistInteraction escaping prepare)

    @property
    def request_fault(self) -> bool:
        """The request is to blame (its constraint or parameters): counted per kind, answered with the field
        at fault. Otherwise the server is (or the deadline, or the backlog: neither is the request's content)."""
        return self in REQUEST_FAULTS


REQUEST_FAULTS = frozenset({ErrorKind.INVALID_CONSTRAINT, ErrorKind.CONSTRAINT_TOO_COMPLEX,
                            ErrorKind.UNSATISFIABLE_CONSTRAINT, ErrorKind.INVALID_PARAMETERS})  # fmt: skip


class PcgenError(Exception):
    """Base class for errors the project raises on purpose."""

    kind = ErrorKind.INTERNAL

    @property
    def error_type(self) -> str:
        """The kind's name, as an API's `error.type` says it."""
        return self.kind.value


class ConstraintError(PcgenError, ValueError):
    """A constraint spec is malformed. `path` locates the offending part, e.g. `constraint.all[2].word_at`."""

    kind = ErrorKind.INVALID_CONSTRAINT

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")

    def __reduce__(self) -> tuple:  # picklable across processes (a compiling worker sends it back)
        return (type(self), (self.path, self.message), self.__dict__)


class ConstraintTooComplex(ConstraintError):
    """Compiling the constraint would exceed the state cap or the time budget."""

    kind = ErrorKind.CONSTRAINT_TOO_COMPLEX

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

    kind = ErrorKind.UNSATISFIABLE_CONSTRAINT


class CompileBacklogFull(PcgenError):
    """A client already has its maximum of compiles waiting (a server's compile pool: service/compile_pool.py)."""

    kind = ErrorKind.COMPILE_BACKLOG_FULL


class TokenizerMismatch(PcgenError, ValueError):
    """A DFA, HMM or data file was built for a different tokenizer / vocabulary size."""

    kind = ErrorKind.MODEL_MISMATCH


class HMMFormatError(PcgenError, ValueError):
    """An HMM checkpoint is missing, corrupt or inconsistent."""

    kind = ErrorKind.MODEL_ERROR


class BlocklistInteraction(PcgenError):
    """A blocklist enforced beside the guide could dead-end the rest of the constraint within this horizon; the
    caller compiles the constraint as one exact product instead (compile_constraint(blocklist_mask=False))."""


class DeadlineExceeded(PcgenError):
    """Work for a request stopped because the request's deadline passed (nobody waits for the result)."""

    kind = ErrorKind.TIMEOUT


class ModelLoadError(PcgenError, OSError):
    """A model or tokenizer cannot be loaded: no such local directory (or not a saved model), or a hub id that
    is neither in the local Hugging Face cache nor downloadable (offline). The message is one line naming the
    source and what was expected."""
