"""Test builds (tokenizers, models, checkpoints) made once per run and shared by the xdist workers, keyed by
a digest of the sources they depend on."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_digest(*packages: str) -> str:
    """A digest of the Python sources of `packages` (and the model builders): what a built model depends on."""
    digest = hashlib.sha256()
    for package in (*packages, "tests/tiny_models.py", "tests/shared_builds.py"):
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else [ROOT / package]:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def shared_root(tmp_path_factory) -> Path:
    """Where builds are shared: $PCGEN_TEST_CACHE when set (kept between runs: the key changes with the code),
    else the directory of this run that every xdist worker's base temporary directory sits in."""
    if os.environ.get("PCGEN_TEST_CACHE"):
        root = Path(os.environ["PCGEN_TEST_CACHE"]).expanduser()
    else:
        base = tmp_path_factory.getbasetemp()
        root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = root / "shared-builds"
    root.mkdir(parents=True, exist_ok=True)
    return root


def shared_build(root: Path, name: str, key: str, build: Callable[[Path], object]) -> Path:
    """`root/name-key`, made by `build(directory)` once: the first worker to ask builds it under a file lock,
    the others wait for it and reuse it. A build that died half way (no `.complete` mark) is started again."""
    from filelock import FileLock

    target = root / f"{name}-{key}"
    with FileLock(str(target) + ".lock"):
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            build(target)
            (target / ".complete").touch()
    return target
