"""Loading models fails clearly: a wrong local path or an unreachable hub id is one line (ModelLoadError, a
PcgenError: `pcgen` exits 2), at once instead of after a transformers traceback or the hub's retries."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pc_core import hub
from pc_core.errors import HMMFormatError, ModelLoadError
from pc_core.hmm import HMM
from pc_core.lm import load_lm, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def _pcgen(args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    clean.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "pcgen", *args], capture_output=True, text=True, env=clean,
                          cwd=ROOT, timeout=600)  # fmt: skip


def _connections(monkeypatch) -> list:
    """The address of every socket connection this process attempts from now on (a count, not a clock: the
    hub's retries would be many attempts)."""
    attempts = []
    real = socket.socket.connect

    def connect(self, address):
        attempts.append(address)
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and a hub endpoint nobody listens on (connection refused at once)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    hub._reachable.clear()
    yield {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    hub._reachable.clear()


@pytest.mark.parametrize(
    "args, message",
    [
        (["compile", "--tokenizer", "/nonexistent/tokenizer", "--keywords", "dog"],
         "no tokenizer at /nonexistent/tokenizer: no such directory (expected a directory with tokenizer.json"),
        (["generate", "--lm", "./no/such/lm", "--hmm", "x", "--keywords", "dog"],
         "no model at ./no/such/lm: no such directory (expected a directory with config.json"),
        (["compile", "--tokenizer", "docs", "--keywords", "dog"],
         "no tokenizer at docs: the directory has none of tokenizer.json"),
    ],
)  # fmt: skip
def test_a_wrong_path_is_one_line_and_exit_2(args, message):
    run = _pcgen(args, HF_HUB_OFFLINE="1")
    assert run.returncode == 2, run.stderr[-3000:]
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"pcgen {args[0]}: {message}")
    assert "Traceback" not in run.stderr and "Repo id must be" not in run.stderr


def test_a_hub_id_offline_is_one_line_within_seconds(tmp_path):
    run = _pcgen(["compile", "--tokenizer", "someone/not-cached", "--keywords", "dog"],
                 HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("pcgen compile: cannot load tokenizer 'someone/not-cached': ")
    assert "not in the Hugging Face cache" in line and "HF_HUB_OFFLINE" in line


def test_a_hub_id_without_network_fails_at_once(no_hub, monkeypatch):
    attempts = _connections(monkeypatch)
    for load in (lambda: load_tokenizer("gpt2"), lambda: load_lm("someone/some-lm", device="cpu")):
        with pytest.raises(
            ModelLoadError, match=r"cannot be downloaded: no connection to http://127\.0\.0\.1:9 "
        ):
            load()
    with pytest.raises(HMMFormatError, match="cannot load HMM 'someone/hmm': .* no connection"):
        HMM.load("someone/hmm")
    # one reachability probe per load at most (remembered for a while), not huggingface_hub's retries
    assert 1 <= len(attempts) <= 3 and set(attempts) == {("127.0.0.1", 9)}, attempts


def test_the_pcgen_command_without_network(no_hub):
    run = _pcgen(["compile", "--tokenizer", "gpt2", "--keywords", "dog"], **no_hub)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr[-3000:]
    assert "cannot load tokenizer 'gpt2'" in run.stderr and "no connection" in run.stderr


def test_a_cached_hub_id_loads_without_the_network(no_hub, tiny_lm_dir, tmp_path, monkeypatch):
    """Unreachable hub, model in the cache: loaded from it (local_files_only), no waiting."""
    cache = Path(os.environ["HF_HUB_CACHE"])
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for item in tiny_lm_dir.iterdir():
        (snapshot / item.name).symlink_to(item)
    attempts = _connections(monkeypatch)
    model, tokenizer = load_lm("someone/tiny", device="cpu")
    assert len(tokenizer) == model.config.vocab_size
    # at most a reachability probe per lookup (model, tokenizer), to the refused endpoint: nothing asked the hub
    assert len(attempts) <= 2 and set(attempts) <= {("127.0.0.1", 9)}, attempts


def test_source_checks():
    assert hub.looks_like_hub_id("gpt2") and hub.looks_like_hub_id("ctrlg/hmm_gpt2-large_common-gen_4096")
    for bad in ("/abs/path", "./rel", "a/b/c", "a--b", "a..b", "-a", "a/", "", "~/x"):
        assert not hub.looks_like_hub_id(bad), bad
    assert hub.first_line(OSError("first\n\n  second")) == "first"
