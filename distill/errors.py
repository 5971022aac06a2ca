"""The error the distillation stages raise on bad input (the CLI prints it and exits with status 2)."""

from pc_core.errors import PcgenError


class DistillError(PcgenError, ValueError):
    """Bad distillation input: missing/truncated shards, mismatched vocabularies or settings, bad sizes."""
