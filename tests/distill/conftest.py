"""Fixtures for the distillation tests: a tiny random GPT-2 over the test tokenizer."""

from __future__ import annotations

import pytest
from tiny_models import build_tiny_lm


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, tokenizer):
    """Directory of a 2-layer random GPT-2 over the test tokenizer (loadable by path)."""
    path = tmp_path_factory.mktemp("tiny_lm")
    build_tiny_lm(path, tokenizer)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (badly so on a shared CPU). Restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
