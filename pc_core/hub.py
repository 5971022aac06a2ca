"""Where models come from: a local directory or a Hugging Face hub id, checked before transformers or
huggingface_hub see it, so that a wrong source fails at once with one line naming it.

    local_files_only = check_source("runs/lm", "model", LM_FILES)    # raises ModelLoadError, or says how to load

* An existing directory must hold one of the expected files (a transformers `save_pretrained` directory).
* Anything that cannot be a hub id (an absolute or dotted path, two slashes, ...) and does not exist is "no
  model at PATH" (not transformers' "Repo id must be in the form ...").
* A hub id loads from the local cache when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set or the hub does
  not answer a TCP connection within CONNECT_TIMEOUT_S (through the HTTPS proxy when one is set); if it is not
  cached then, the error says so at once instead of after huggingface_hub's retries (about a minute).

Only the standard library at import; huggingface_hub is imported for hub ids only.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from pc_core.errors import ModelLoadError

CONNECT_TIMEOUT_S = 2.0
REACHABLE_TTL_S = 60.0  # a process loading an LM, its tokenizer and an HMM checks the network once
DEFAULT_ENDPOINT = "https://huggingface.co"
LM_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
EXPECTED = {
    "model": "a directory with config.json and the weights, as save_pretrained writes them",
    "tokenizer": "a directory with tokenizer.json or tokenizer_config.json, as save_pretrained writes them",
    "HMM": "a directory with config.json and model.safetensors, or a GeLaTo torch file",
}
_HUB_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[\w])?"
HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")
_TRUE = {"1", "true", "yes", "on"}
_reachable: dict[tuple[str, int], tuple[float, bool]] = {}


class HubStatus(NamedTuple):
    problem: str | None  # why the hub id cannot be loaded now, or None
    local_files_only: bool  # load it from the cache without asking the hub


def looks_like_hub_id(name: str) -> bool:
    """`name` or `owner/name` of letters, digits, '-', '_', '.', not starting or ending with one of those
    punctuation characters, without '--' or '..' (huggingface_hub's rules)."""
    return bool(HUB_ID.match(name)) and "--" not in name and ".." not in name


def offline_mode() -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set (as huggingface_hub read it, or in the environment now)."""
    if any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or getattr(constants, "ENDPOINT", DEFAULT_ENDPOINT)


def hub_reachable(url: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint (or the HTTPS proxy in front of it) opens within `timeout`
    seconds, name resolution included; the answer is kept for REACHABLE_TTL_S."""
    parts = urlsplit(url or endpoint())
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 8080
    now = time.monotonic()
    cached = _reachable.get((host, port))
    if cached is not None and now - cached[0] < REACHABLE_TTL_S:
        return cached[1]
    result: list[bool] = []

    def connect() -> None:  # in a thread: getaddrinfo has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=connect, name="pcgen-hub-check", daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    ok = bool(result and result[0])
    _reachable[(host, port)] = (now, ok)
    return ok


def in_cache(repo_id: str, files: Sequence[str]) -> bool:
    """One of `files` of the repo's main revision is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    for name in files:
        try:
            found = try_to_load_from_cache(repo_id, name)
        except Exception:  # noqa: BLE001 - an unusual id or cache layout: not cached, as far as we can tell
            return False
        if isinstance(found, str):
            return True
    return False


def hub_status(repo_id: str, files: Sequence[str]) -> HubStatus:
    """Can the hub id be loaded now, and from the cache only? Fast: no download, at most one connection
    check of CONNECT_TIMEOUT_S."""
    from huggingface_hub import constants

    cached = in_cache(repo_id, files)
    cache = getattr(constants, "HF_HUB_CACHE", "the Hugging Face cache")
    if offline_mode():
        if cached:
            return HubStatus(None, True)
        return HubStatus(
            f"no such local path, and as a hub id it is not in the Hugging Face cache ({cache}) while "
            "HF_HUB_OFFLINE is set; download it once with network access, or give a local directory",
            True,
        )
    if hub_reachable():
        return HubStatus(None, False)
    if cached:
        return HubStatus(None, True)
    return HubStatus(
        f"no such local path, and as a hub id it cannot be downloaded: no connection to {endpoint()} within "
        f"{CONNECT_TIMEOUT_S:g} s, and it is not in the Hugging Face cache ({cache}); connect, or give a "
        "local directory (HF_HUB_OFFLINE=1 loads cached models without asking the hub)",
        True,
    )


def check_source(name_or_path: str, what: str = "model", files: Sequence[str] = LM_FILES) -> bool:
    """Raise ModelLoadError (one line) unless `name_or_path` can be loaded: an existing directory holding one of
    `files`, or a hub id that is cached or downloadable. Returns whether to load with local_files_only."""
    expected = EXPECTED.get(what, "a directory with " + " or ".join(files))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_dir() and any((path / name).is_file() for name in files):
            return True
        found = f"the directory has none of {', '.join(files)}" if path.is_dir() else "it is a file"
        raise ModelLoadError(f"no {what} at {name_or_path}: {found} (expected {expected})")
    if not looks_like_hub_id(str(name_or_path)):
        raise ModelLoadError(
            f"no {what} at {name_or_path}: no such directory (expected {expected}, or a Hugging Face hub id)"
        )
    status = hub_status(str(name_or_path), files)
    if status.problem:
        raise ModelLoadError(f"cannot load {what} {name_or_path!r}: {status.problem}")
    return status.local_files_only


def first_line(err: BaseException) -> str:
    """An exception's message on one line (transformers' messages run over several)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
