from __future__ import annotations

import os
from pathlib import Path

import pytest
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
