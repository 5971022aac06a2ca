"""Atomic file writes, shared by the HMM checkpoints (pc_core.hmm) and the distillation outputs (distill/).

A file is written under a temporary name in its target's directory (`.NAME.XXXX.tmp`), flushed to disk
(fsync) and renamed over the target (os.replace, atomic on POSIX): a kill at any point leaves either the old
file or the new one, never half of one. A killed writer can leave its temporary behind;
`remove_stale_temporaries` deletes those (call it only while nothing is writing to the directory).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

TEMPORARY_GLOB = ".*.tmp"  # the names atomic_path gives its temporaries


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (e.g. safetensors' save_file).

    When the block ends without an exception the temporary is fsynced and renamed over `path`; on an
    exception it is removed and `path` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_file(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """`with atomic_open(path) as fh: fh.write(...)`: a binary file that replaces `path` when the block ends
    without an exception (and never otherwise)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        yield fh
        fh.flush()


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[BinaryIO], Any]) -> Path:
    """Replace `path` atomically by `content`: bytes, text (UTF-8), or a function that writes to the binary
    file handle it is given. Returns the path."""
    with atomic_open(path) as fh:
        if callable(content):
            content(fh)
        else:
            fh.write(content.encode() if isinstance(content, str) else content)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """`obj` as indented JSON, written atomically."""
    return atomic_write(path, json.dumps(obj, indent=2))


def remove_stale_temporaries(directory: str | os.PathLike) -> None:
    """Delete the temporaries a killed writer left in `directory` (call only while no one is writing)."""
    for tmp in Path(directory).glob(TEMPORARY_GLOB):
        tmp.unlink(missing_ok=True)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make renames inside `directory` durable (they are atomic already; this survives a power cut)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
