"""What a first-week user tripped on (issue 25 §6), each against a real `pcgen serve` (tiny GPT-2, H=16 HMM) or
the real command line: finish reasons with stop strings, `full_text` by default, compile time in `dfa_ms`
with compile workers on, `/docs` offline, `pcgen --version` / fast `--help` / no BrokenPipeError, no progress
bars in server logs, the served model's default id, the metrics' collectors and build info, and OpenAI's
field names in context-length errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from response_text import metric_value
from server_processes import MAX_NEW_TOKENS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chat_server(start_server, chat_lm_dir):
    """The tiny GPT-2 with a chat template on its tokenizer."""
    return start_server("chat-details", PCGEN_LM=str(chat_lm_dir))


# ---------------------------------------------------------------------------------------------- finish_reason


@pytest.mark.parametrize("temperature", [0, 1], ids=["beam", "sampling"])
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_finish_reason_at_eos_is_stop_whether_or_not_stop_is_set(server, chat_server, tokenizer, endpoint,
                                                                  temperature):  # fmt: skip
    """EOS made all but certain once the constraint holds (logit_bias +100): the outputs end at EOS, before
    max_tokens, and say "stop", with `stop` set (it never matches) as without."""
    eos = str(tokenizer.eos_token_id)
    body = {"max_tokens": MAX_NEW_TOKENS, "temperature": temperature, "seed": 1, "n": 2, "best_of": 2,
            "keywords": ["dog"], "logit_bias": {eos: 100}}  # fmt: skip
    if endpoint == "completions":
        target, path, body = server, "/v1/completions", {**body, "prompt": "The"}
    else:
        target, path = chat_server, "/v1/chat/completions"
        body = {**body, "messages": [{"role": "user", "content": "Hello"}]}
    with target.client() as http:
        answers = [
            http.post(path, json={**body, **extra}) for extra in ({}, {"stop": ["zzz"]}, {"stop": "zzz"})
        ]
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] < 2 * MAX_NEW_TOKENS  # ended early: at EOS
        assert [c["finish_reason"] for c in r.json()["choices"]] == ["stop", "stop"], r.json()


def test_generate_says_eos_with_stop_strings_set(tiny_lm, tokenizer, tiny_hmm):
    """The native finish reason ("eos") is the one the decoder reports, with stop strings as without."""
    from pc_core.decoding import generate

    eos = tokenizer.eos_token_id
    for do_sample in (False, True):
        for stop in ((), ("zzz",)):
            out = generate(tiny_lm, tokenizer, tiny_hmm, {"keywords": ["dog"]}, prompt="The", max_new_tokens=12,
                           num_beams=1 if do_sample else 2, do_sample=do_sample, seed=3, stop=stop,
                           logit_bias=((eos, 100.0),))  # fmt: skip
            seq = out.sequences[0]
            assert len(seq.token_ids) < 12 and seq.finish_reason == "eos", (do_sample, stop, seq)


# ---------------------------------------------------------------------------------------------- /generate


def test_generate_returns_full_text_for_suffix_requests_by_default(server):
    with server.client() as http:
        body = {"prompt": "The", "suffix": " end.", "max_new_tokens": MAX_NEW_TOKENS, "keywords": ["dog"]}
        default = http.post("/generate", json=body)
        without = http.post("/generate", json={**body, "return_full_text": False})
        plain = http.post("/generate", json={"prompt": "The", "keywords": ["dog"], "max_new_tokens": 8})
    assert default.status_code == without.status_code == plain.status_code == 200, default.text
    for out in default.json()["outputs"]:
        assert out["full_text"] == out["text"] + " end."
    assert all(out.get("full_text") is None for out in without.json()["outputs"])
    assert all(out.get("full_text") is None for out in plain.json()["outputs"])  # no suffix: the text itself


SLOW_WORD = "slowcompileword"  # PCGEN_TEST_SLOW_WORD: its constraints spend SLOW_COMPILE_S compiling


@pytest.fixture(scope="module")
def slow_compile_server(start_server):
    """Compile workers on (the default), and constraints that mention SLOW_WORD take at least SLOW_COMPILE_S."""
    # no warm-up generation: its constraint may overrun the quick attempt and start a worker (speed-dependent)
    return start_server("slow-compile", PCGEN_TEST_SLOW_WORD=SLOW_WORD, PCGEN_COMPILE_WORKERS="1",
                        PCGEN_WARMUP="false")  # fmt: skip


def test_dfa_ms_counts_the_compile_when_compile_workers_are_on(slow_compile_server):
    """A compile known to take at least SLOW_COMPILE_S (the test hook, in a compile worker) is in
    timings.dfa_ms and in pcgen_dfa_compile_seconds (one observation, the same seconds), not in queue_ms."""
    from pc_core.constraints.explicit import SLOW_COMPILE_S

    server = slow_compile_server
    before = server.metrics()
    # test servers start their compile workers on first use (conftest's start_server): nothing compiled yet
    assert metric_value(before, "pcgen_compile_workers", {"state": "alive"}) == 0
    with server.client() as http:
        r = http.post("/generate", json={"prompt": "The", "max_new_tokens": MAX_NEW_TOKENS,
                                         "constraint": {"all": ["dog", {"not": SLOW_WORD}]}})  # fmt: skip
    assert r.status_code == 200, r.text
    after = server.metrics()
    timings = r.json()["timings"]
    assert timings["dfa_ms"] >= SLOW_COMPILE_S * 1000, timings

    def delta(name: str) -> float:
        return metric_value(after, name) - metric_value(before, name)

    assert delta("pcgen_dfa_compile_seconds_count") == 1
    assert metric_value(after, "pcgen_compile_workers", {"state": "alive"}) >= 1  # started for this compile
    assert delta("pcgen_dfa_compile_seconds_sum") * 1000 == pytest.approx(
        timings["dfa_ms"], rel=1e-3, abs=0.01
    )


# ---------------------------------------------------------------------------------------------- /docs


def test_docs_work_offline(server):
    """/docs and /redoc load nothing from another host: their scripts and styles are served here."""
    with server.client() as http:
        for page in ("/docs", "/redoc"):
            html = http.get(page).text
            assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(
                r"""url:\s*['"]([^'"]+)""", html
            )
            assert assets, html
            for url in assets:
                assert not url.startswith(("http://", "https://", "//")), (page, url)
                r = http.get(url if url.startswith("/") else "/" + url)
                assert r.status_code == 200 and r.content, (page, url)


# ---------------------------------------------------------------------------------------------- CLI and logs


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcgen.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kwargs)  # fmt: skip


def test_version_and_help_without_torch():
    from pcgen import __version__

    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"pcgen {__version__}", out
    probe = "import sys\nfrom pcgen.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
            "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules)"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "serve" in out.stdout and "TORCH False False" in out.stdout, out


def test_the_quick_command_list_says_what_each_command_says():
    """`pcgen --help` lists the commands from pcgen.cli's table without importing them: each line there is the
    help the command's own module registers."""
    import argparse

    from pcgen.cli import build_parser

    def helps(parser: argparse.ArgumentParser) -> dict[str, str]:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return {choice.dest: choice.help for choice in sub._choices_actions}

    assert helps(build_parser(listing=True)) == helps(build_parser())


def test_output_into_a_closed_pipe_is_not_a_traceback(tiny_lm_dir):
    """`pcgen compile --json | head`: the reader has gone; the command ends quietly."""
    proc = subprocess.Popen([sys.executable, "-m", "pcgen.cli", "compile", "--tokenizer", str(tiny_lm_dir),
                             "--keywords", "dog", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # before it writes: every write fails with EPIPE
    _, err = proc.communicate(timeout=300)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode in (0, 141), proc.returncode


def test_server_logs_have_no_progress_bars(server):
    log = server.log_path.read_text()
    assert "Loading weights" not in log and "it/s]" not in log, log[-2000:]


# ---------------------------------------------------------------------------------------------- model id, metrics


def test_served_model_id_is_the_directory_name(server, tiny_lm_dir):
    name = Path(tiny_lm_dir).name
    models = httpx.get(server.url + "/v1/models", timeout=30).json()
    assert models["data"][0]["id"] == name
    text = server.metrics()
    assert f'model_name="{name}"' in text and str(tiny_lm_dir) not in text
    with server.client() as http:
        r = http.post(
            "/v1/completions", json={"model": name, "prompt": "The", "max_tokens": 2, "keywords": ["dog"]}
        )
    assert r.status_code == 200 and r.json()["model"] == name, r.text


def test_metrics_have_process_python_build_and_compile_worker_series(server, tiny_lm_dir):
    text = server.metrics()
    assert "_created" not in text
    assert metric_value(text, "process_resident_memory_bytes") > 0
    assert metric_value(text, "process_cpu_seconds_total") > 0
    assert "python_gc_collections_total" in text and "python_info" in text
    # start-up's objects (tokenizer, models, dictionaries) out of the collector's view once ready
    assert metric_value(text, "pcgen_gc_frozen_objects") > 10_000
    from pcgen import __version__

    (info,) = [line for line in text.splitlines() if line.startswith("pcgen_build_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info))
    assert labels["version"] == __version__ and labels["model"] == Path(tiny_lm_dir).name
    assert labels["commit"] and labels["hmm"] and info.endswith(" 1.0")
    assert metric_value(text, "pcgen_compile_workers", {"state": "alive"}) >= 1
    assert metric_value(text, "pcgen_compile_workers", {"state": "configured"}) == metric_value(
        text, "pcgen_compile_workers", {"state": "alive"}
    )


def test_context_length_error_names_max_tokens(server):
    """The /v1 error names OpenAI's field (`max_tokens`), never pcgen's max_new_tokens."""
    prompt = list(range(1, 125))  # the tiny LM's context is 128 tokens: 124 + 12 do not fit
    with server.client() as http:
        r = http.post(
            "/v1/completions", json={"prompt": prompt, "max_tokens": MAX_NEW_TOKENS, "keywords": ["dog"]}
        )
        chat = http.post("/generate", json={"prompt": "word " * 130, "max_new_tokens": MAX_NEW_TOKENS,
                                            "keywords": ["dog"]})  # fmt: skip
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "max_new_tokens" not in error["message"] and "max_tokens" in error["message"], error
    assert error["param"] in ("prompt", "max_tokens")
    assert chat.status_code == 422 and "max_new_tokens" in chat.json()["error"]["message"], chat.text
