from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import build_tokenizer

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
