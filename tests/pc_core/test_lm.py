"""pc_core.lm: the device and dtype settings, the KV-cache keyword transformers expects (no deprecation
warnings), and loading."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pc_core.lm import (
    DTYPES,
    KVBatch,
    cache_kwarg,
    forward_cached,
    load_lm,
    max_positions,
    resolve_device,
    resolve_dtype,
)

ROOT = Path(__file__).resolve().parents[2]


def test_dtype_table_and_resolver():
    cpu = torch.device("cpu")
    assert list(DTYPES) == ["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]
    for name, dtype in DTYPES.items():
        assert resolve_dtype(name, cpu) == (dtype or torch.float32)  # auto: float32 off CUDA
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bf16", torch.device("cuda", 0)) == torch.bfloat16  # a name ignores the device
    with pytest.raises(ValueError, match="unknown dtype 'half'; use one of auto, float32, fp32, bfloat16"):
        resolve_dtype("half", cpu)


def test_auto_dtype_on_cuda(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", cuda) == torch.float16


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)  # one process: the first GPU
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3)  # under torchrun: this rank's GPU
    for name in ("cpu", "cuda", "cuda:1", "mps"):
        assert resolve_device(name) == torch.device(name)  # explicit names as given


def test_the_service_and_distill_validate_with_the_table():
    from pydantic import ValidationError

    from distill.errors import DistillError
    from distill.sample import SampleConfig
    from service.settings import Settings

    for name in DTYPES:
        assert Settings(hmm="h", dtype=name).dtype == name
        SampleConfig(lm="x", out="y", num_sequences=1, dtype=name).validate()
    with pytest.raises(ValidationError, match="use one of auto, float32, fp32, bfloat16, bf16, float16"):
        Settings(hmm="h", dtype="half")
    with pytest.raises(DistillError, match="dtype must be one of auto, float32, .*, got 'half'"):
        SampleConfig(lm="x", out="y", num_sequences=1, dtype="half").validate()


def test_max_positions_from_the_config():
    assert max_positions(SimpleNamespace(n_positions=1024)) == 1024
    assert max_positions(SimpleNamespace(max_position_embeddings=4096)) == 4096
    assert max_positions(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=32))) == 32
    assert max_positions(SimpleNamespace()) is None


def test_load_lm_with_a_dtype(tiny_lm_dir, tokenizer):
    model, tok = load_lm(str(tiny_lm_dir), device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16 and len(tok) == len(tokenizer)
    assert next(model.parameters()).device == torch.device("cpu") and not model.training


def test_kv_batch_step_without_deprecation_warnings(tiny_lm, tokenizer):
    """Prefill and one forward step pass the cache the way transformers expects: no FutureWarning."""
    prompt = tokenizer.encode("The dog caught a", add_special_tokens=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        kv, logits = KVBatch.prefill(tiny_lm, prompt)
        kv, logits = kv.select(torch.tensor([0, 0])).forward(tiny_lm, torch.tensor([7, 9]))
    assert logits.shape == (2, tiny_lm.config.vocab_size) and kv.positions.tolist() == [len(prompt) + 1] * 2
    with torch.no_grad():
        want = tiny_lm(input_ids=torch.tensor([prompt + [9]])).logits[0, -1]
    torch.testing.assert_close(logits[1], want, atol=1e-4, rtol=1e-4)
    if "cache" in inspect.signature(type(tiny_lm).forward).parameters:
        assert cache_kwarg(tiny_lm) == "cache"


class _PastKeyValuesOnly(torch.nn.Module):
    """A model whose forward takes the cache as `past_key_values` (transformers before the rename)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, []

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None
    ):
        self.calls.append(past_key_values)
        kwargs = {cache_kwarg(self.inner): past_key_values}
        return self.inner(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache,
            **kwargs,
        )  # fmt: skip


def test_models_that_take_past_key_values(tiny_lm, tokenizer):
    old = _PastKeyValuesOnly(tiny_lm)
    assert cache_kwarg(old) == "past_key_values"
    prompt = tokenizer.encode("A cat", add_special_tokens=False)
    kv, _ = KVBatch.prefill(old, prompt)
    _, logits = kv.forward(old, torch.tensor([5]))
    _, want = KVBatch.prefill(tiny_lm, prompt + [5])
    torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)
    assert old.calls[0] is None and old.calls[1] is not None  # the cache went in under the old name
    out, cache = forward_cached(tiny_lm, None, input_ids=torch.tensor([prompt]))
    assert cache.get_seq_length() == len(prompt) and out.logits.shape[1] == len(prompt)


def test_a_fresh_process_prints_no_cache_deprecation(tiny_lm_dir, tmp_path):
    """Neither the FutureWarning nor transformers' logged notice (printed once per process) appears."""
    from pc_core.hmm import HMM

    _, tok = load_lm(str(tiny_lm_dir), device="cpu")
    HMM.random(8, len(tok), seed=0, eos_token_id=tok.eos_token_id).save(tmp_path / "hmm")
    script = (
        "from pc_core.decoding import generate\nfrom pc_core.hmm import HMM\nfrom pc_core.lm import load_lm\n"
        f"lm, tok = load_lm({str(tiny_lm_dir)!r}, device='cpu')\n"
        f"out = generate(lm, tok, HMM.load({str(tmp_path / 'hmm')!r}), {{'keywords': ['dog']}}, prompt='The',"
        " max_new_tokens=6, num_beams=2)\n"
        "assert out.sequences[0].constraint_satisfied\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "past_key_values" not in proc.stderr and "deprecated" not in proc.stderr, proc.stderr[-3000:]
