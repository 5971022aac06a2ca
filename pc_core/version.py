"""What this build is: the installed distribution's version and, where it can be found, the source commit
(`pcgen --version`, the service's `pcgen_build_info`)."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]

try:
    __version__ = metadata.version("pcgen")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


@lru_cache(maxsize=1)
def commit() -> str:
    """PCGEN_COMMIT (set by image builds), else the git checkout's HEAD (short), else "unknown"."""
    given = os.environ.get("PCGEN_COMMIT", "").strip()
    if given:
        return given
    if not (SOURCE / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(["git", "-C", str(SOURCE), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
