from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from service_support import MAX_NEW_TOKENS, RedisServer, Server
from support import build_tiny_lm, build_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """Small byte-level BPE (about 700 tokens) trained on text the fixture writes."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def big_tokenizer():
    """The GPT-2-shaped 50,257-token BPE from ../shared, when present."""
    path = SHARED / "tokenizers" / "bpe-50257"
    if not path.exists():
        pytest.skip("../shared/tokenizers/bpe-50257 is not available")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, tokenizer):
    """A random-init 2-layer GPT-2 over the test tokenizer, saved with it (loadable by path)."""
    path = tmp_path_factory.mktemp("tiny-lm")
    build_tiny_lm(path, tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)).eval()


@pytest.fixture(scope="session")
def tiny_hmm(tokenizer):
    from pc_core.hmm import HMM

    return HMM.random(16, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)


# ---------------------------------------------------------------------- servers (service and deployment tests)


@pytest.fixture(scope="session")
def model_env(tmp_path_factory, tokenizer, tiny_lm_dir):
    """PCGEN_LM / PCGEN_HMM for a server: the tiny GPT-2 directory and a random H=16 HMM saved beside it."""
    from pc_core.hmm import HMM

    hmm_dir = tmp_path_factory.mktemp("tiny-hmm")
    HMM.random(16, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id).save(hmm_dir)
    return {
        "PCGEN_LM": str(tiny_lm_dir),
        "PCGEN_HMM": str(hmm_dir),
        "PCGEN_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
    }


@pytest.fixture(scope="session")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def start_server(model_env, logs):
    """start_server(name, **env) -> a ready Server; all are stopped at the end of the session."""
    servers: list[Server] = []

    def start(name: str, **env: str) -> Server:
        server = Server(logs, {**model_env, **env}, name)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server):
    """Default configuration: in-process cache and limiter, continuous batching."""
    return start_server("default", PCGEN_MAX_BATCH_SIZE="8")


@pytest.fixture(scope="session")
def redis_server(logs):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (CI installs it: apt-get install redis-server)")
    redis = RedisServer(logs).start()
    yield redis
    redis.stop()


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory):
    """The offline demo's models (quick size): a tiny GPT-2 trained on the demo corpus and an HMM distilled
    from it by `pcgen distill run`. About a minute on 2 cores; shared by the demo and playground tests."""
    from pcgen.demo import build

    cache = tmp_path_factory.mktemp("demo")
    lm_dir, hmm_dir = build(cache, quick=True)
    return {"cache": cache, "lm": lm_dir, "hmm": hmm_dir}
