"""`pcgen distill sample --server`: sampling through real `pcgen serve` processes (uvicorn, tiny GPT-2).

Every server is started here and stopped (or killed) by a finalizer, so none outlives the test.
"""

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from distill_support import cli_in_process, kill_when, pcgen
from server_processes import Server

from distill import data
from distill.errors import DistillError
from distill.remote import ServerRefused, parse_token_ids
from distill.sample import SampleConfig, run_sample
from distill.sample_server import sequence_seed

SEQ = 8  # tokens per sequence; the test servers cap max_tokens at 12


@pytest.fixture(scope="module")
def server_a(model_env, logs, request):
    server = Server(logs, model_env, "distill-a")
    request.addfinalizer(server.stop)
    return server.start()


@pytest.fixture
def start(model_env, logs, request):
    """start(name, **env) -> a ready server of this test, stopped when the test ends."""

    def start(name, **env):
        server = Server(logs, {**model_env, **env}, name)
        request.addfinalizer(server.stop)
        return server.start()

    return start


def _cfg(tiny_lm, out, server, **kw):
    base = dict(lm=str(tiny_lm), out=str(out), num_sequences=40, seq_len=SEQ, shard_size=16, concurrency=4)
    return SampleConfig(**{**base, **kw}, server=server)


def _args(tiny_lm, out, servers, **flags):
    args = ["distill", "sample", "--lm", str(tiny_lm), "--out", str(out), "--server", ",".join(servers)]
    for key, value in flags.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _padded(ids, eos):
    """What the sampler stores for a completion's ids: cut after the first EOS, EOS-padded to SEQ."""
    if eos in ids:
        ids = ids[: ids.index(eos) + 1]
    return ids + [eos] * (SEQ - len(ids))


def test_stored_sequences_are_the_servers_token_ids(server_a, tiny_lm, tokenizer, tmp_path):
    """Each stored row is exactly the ids the server returns for that sequence's request (same seed), and
    the manifest records the server, the model, the sampling parameters and how the tokenizer was checked."""
    from pc_core.constraints.vocab import tokenizer_fingerprint

    manifest = run_sample(_cfg(tiny_lm, tmp_path / "s", server_a.url + "/v1/", seed=7))
    tokens, _ = data.load_tokens(tmp_path / "s")
    assert manifest["complete"] and tokens.shape == (40, SEQ) and manifest["num_shards"] == 3
    settings = manifest["settings"]
    assert settings["source"] == "server" and settings["servers"] == [server_a.url]
    assert settings["model"] == httpx.get(server_a.url + "/v1/models").json()["data"][0]["id"]
    assert settings["sampling"]["temperature"] == 1.0 and settings["sampling"]["top_p"] == 1.0
    assert settings["sampling"]["return_tokens_as_token_ids"] is True
    assert settings["tokenizer_checks"] == {server_a.url: "tokenize"}  # pcgen serve has vLLM's /tokenize
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert [e["servers"] for e in manifest["shards"]] == [{server_a.url: n} for n in (16, 16, 8)]
    eos = tokenizer.eos_token_id
    with httpx.Client(timeout=60) as client:
        for row in (0, 17, 39):
            body = {"prompt": [eos], "max_tokens": SEQ, "temperature": 1.0, "top_p": 1.0, "logprobs": 0,
                    "return_tokens_as_token_ids": True, "seed": sequence_seed(7, row)}  # fmt: skip
            choice = client.post(server_a.url + "/v1/completions", json=body).json()["choices"][0]
            assert tokens[row].tolist() == _padded(parse_token_ids(choice, "a"), eos), row
    assert (tokens != eos).sum() > 40 * SEQ // 2  # mostly real tokens, not padding


def test_two_servers_one_killed_mid_run_no_duplicate_no_missing(server_a, start, tiny_lm, tmp_path, caplog):
    """Server B is SIGKILLed mid-run: its requests are retried on A, the job finishes, and the samples equal
    a run on A alone, row for row (so no sequence is missing, duplicated or misplaced). The sampler runs in a
    thread of this process (the server is the process killed; the CLI's --server path is the next test's)."""
    b = start("distill-b")
    out = tmp_path / "fleet"
    flags = dict(num_sequences=128, seq_len=SEQ, shard_size=8, concurrency=8, seed=3)  # 16 shards
    fleet = SampleConfig(lm=str(tiny_lm), out=str(out), server=f"{server_a.url},{b.url}", **flags)
    with caplog.at_level("WARNING", logger="distill.remote"), ThreadPoolExecutor(1) as pool:
        job = pool.submit(run_sample, fleet)
        deadline = time.monotonic() + 300
        while len(data.finished_shards(out)) < 3:
            assert not job.done(), job.exception()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        assert job.result(timeout=600)["complete"]
    # the dropped connections were seen and retried
    assert "backing off" in caplog.text and f"server {b.url}" in caplog.text, caplog.text[-3000:]
    got, manifest = data.load_tokens(out)
    assert manifest["complete"] and got.shape == (128, SEQ)
    per_server = {server_a.url: 0, b.url: 0}
    for entry in manifest["shards"]:
        assert sum(entry["servers"].values()) == entry["num_sequences"]
        for url, n in entry["servers"].items():
            per_server[url] += n
    assert per_server[b.url] > 0 and per_server[server_a.url] > per_server[b.url], per_server
    assert b.url not in manifest["shards"][-1]["servers"]  # after the kill, only A answers
    reference = run_sample(SampleConfig(lm=str(tiny_lm), out=str(tmp_path / "ref"), server=server_a.url,
                                        **{**flags, "concurrency": 4}))  # fmt: skip
    np.testing.assert_array_equal(got, data.load_tokens(tmp_path / "ref")[0])
    assert reference["complete"]


def test_sampler_killed_and_resumed_equals_uninterrupted(server_a, tiny_lm, tmp_path, caplog, capsys):
    out = tmp_path / "killed"
    sizes = dict(num_sequences=128, shard_size=8)  # 16 shards: the kill lands among many shard boundaries
    args = _args(tiny_lm, out, [server_a.url], seq_len=SEQ, seed=5, **sizes)
    kill_when(pcgen(*args), lambda: len(data.finished_shards(out)) >= 2)
    done = data.finished_shards(out)
    assert 2 <= len(done) < 16
    code, resumed = cli_in_process(caplog, capsys, *args)  # the same command again, to the end
    assert code == 0, resumed[-3000:]
    for index in done:
        assert f"shard {index}: finished earlier, skipping" in resumed
    straight = run_sample(_cfg(tiny_lm, tmp_path / "straight", server_a.url, seed=5, **sizes))
    np.testing.assert_array_equal(data.load_tokens(out)[0], data.load_tokens(tmp_path / "straight")[0])
    assert straight["settings"]["source"] == "server"
    # other sampling settings in the same directory are refused
    with pytest.raises(DistillError, match="other settings"):
        run_sample(_cfg(tiny_lm, out, server_a.url, seed=6, **sizes))


def test_rate_limited_server_is_retried_after_its_429s(start, tiny_lm, tmp_path, caplog):
    """6 requests in flight against 4 per second: the server answers 429 (Retry-After), the client waits
    and retries (a 429 does not use up max_retries: whichever request loses the race waits its turn), and
    every sequence arrives."""
    limited = start("distill-limited", PCGEN_RATE_LIMIT="4/second")
    with caplog.at_level("WARNING", logger="distill.remote"):
        manifest = run_sample(_cfg(tiny_lm, tmp_path / "s", limited.url, num_sequences=24, concurrency=6))
    assert f"server {limited.url}: HTTP 429" in caplog.text
    assert manifest["complete"] and len(data.load_tokens(tmp_path / "s")[0]) == 24


def test_a_rate_limit_that_never_lets_a_request_in_fails_within_the_request_timeout(start, tiny_lm, tmp_path):
    """429s are waited out, not counted as failures (six requests racing for four slots a second could lose
    max_retries times in a row), but not forever: a request whose wait for the rate limit would pass the
    request timeout fails, naming the 429s. One request a minute, the tokenizer check takes it: the first
    completion is told to come back in up to a minute, past the 5 s timeout."""
    limited = start("distill-starved", PCGEN_RATE_LIMIT="1/minute")
    began = time.monotonic()
    with pytest.raises(DistillError, match="429"):
        run_sample(
            _cfg(tiny_lm, tmp_path / "s", limited.url, num_sequences=4, concurrency=2, request_timeout=5.0)
        )
    assert time.monotonic() - began < 60  # it did not sit out the server's Retry-After


@pytest.fixture(params=["tokenize", "echo"])
def check(request, monkeypatch):
    """Which tokenizer check runs: the server's /tokenize, or (the client looking for /tokenize where the
    server has none, as on servers without it) the echo of the local ids of a fixed text."""
    if request.param == "echo":
        monkeypatch.setattr("distill.remote.Fleet.tokenize_path", "/no-such-route")
    return request.param


def test_tokenizer_check_passes_by_either_probe(server_a, tiny_lm, tmp_path, check):
    manifest = run_sample(_cfg(tiny_lm, tmp_path / "s", server_a.url, num_sequences=4))
    assert manifest["complete"] and manifest["settings"]["tokenizer_checks"] == {server_a.url: check}


def test_refuses_a_server_with_another_tokenizer(server_a, tmp_path, check):
    """The local LM directory has another tokenizer than the server's: refused, naming the server."""
    from tiny_models import build_tiny_lm, build_tokenizer

    other = build_tokenizer(tmp_path / "tok", vocab_size=600)
    build_tiny_lm(tmp_path / "lm", other)
    # echo: these two BPEs share every id the smaller one has (the same merges, in order), so the server
    # decodes the local ids back to the same text; it is the count of the text's tokens that differs
    how = {"tokenize": "/tokenize gave", "echo": r"a fixed text is \d+ tokens there, \d+ here"}[check]
    with pytest.raises(ServerRefused, match=f"server {server_a.url}: its tokenizer differs .*{how}"):
        run_sample(_cfg(tmp_path / "lm", tmp_path / "s", server_a.url))
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_refuses_unreachable_server_and_bad_settings(tiny_lm, tmp_path):
    with pytest.raises(ServerRefused, match="server http://127.0.0.1:9: cannot connect"):
        run_sample(_cfg(tiny_lm, tmp_path / "s", "http://127.0.0.1:9"))
    with pytest.raises(DistillError, match="save_embeddings"):
        run_sample(_cfg(tiny_lm, tmp_path / "s", "http://127.0.0.1:9", save_embeddings=4))
    with pytest.raises(DistillError, match="concurrency"):
        run_sample(_cfg(tiny_lm, tmp_path / "s", "http://127.0.0.1:9", concurrency=0))


def test_token_ids_are_required():
    """A completion whose logprobs carry token texts (a server without return_tokens_as_token_ids)."""
    choice = {"text": " dog", "logprobs": {"tokens": [" dog"], "token_logprobs": [-1.0]}}
    with pytest.raises(ServerRefused, match="server http://x did not return token ids"):
        parse_token_ids(choice, "http://x")
    with pytest.raises(ServerRefused, match="did not return token ids"):
        parse_token_ids({"text": " dog", "logprobs": None}, "http://x")
    assert parse_token_ids({"logprobs": {"tokens": ["token_id:5", "token_id:0"]}}, "s") == [5, 0]
    assert parse_token_ids({"token_ids": [3, 4]}, "s") == [3, 4]


def test_manifest_holds_no_credentials(server_a, tiny_lm, tmp_path):
    url = server_a.url.replace("http://", "http://user:secret@")
    run_sample(_cfg(tiny_lm, tmp_path / "s", url, num_sequences=4, api_key="sk-never-recorded"))
    text = (tmp_path / "s" / "manifest.json").read_text()
    assert "secret" not in text and "sk-never-recorded" not in text
    assert json.loads(text)["settings"]["servers"] == [server_a.url]


def test_pipeline_with_a_server_section(server_a, tiny_lm, tmp_path):
    """`pcgen distill run` with `server:`: sample (server) -> embed -> lvd -> em_sample (server) -> train."""
    import yaml

    from distill.pipeline import run_pipeline
    from pc_core.hmm import HMM

    sizes = {"seq_len": SEQ, "shard_size": 32}
    config = {
        "lm": str(tiny_lm), "out": "run", "seed": 2, "device": "cpu",
        "server": {"url": [server_a.url], "concurrency": 4},
        "sample": {"num_sequences": 64, **sizes}, "embed": {"batch_size": 16},
        "lvd": {"hidden_size": 6, "kmeans_iters": 5},
        "em_sample": {"num_sequences": 64, **sizes},
        "train": {"steps": 2, "batch_size": 32, "heldout": 8},
    }  # fmt: skip
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    out = run_pipeline(path)
    hmm = HMM.load(out)
    assert hmm.hidden_size == 6 and out == tmp_path / "run" / "hmm"
    lvd_samples = data.read_manifest(tmp_path / "run" / "samples")
    em_samples = data.read_manifest(tmp_path / "run" / "em-samples")
    assert lvd_samples["settings"]["source"] == em_samples["settings"]["source"] == "server"
    assert lvd_samples["embed"]["num_sequences"] == 64 and lvd_samples["embedding_dim"] == 32
    assert em_samples["embedding_dim"] is None  # EM needs no hidden states
    assert not np.array_equal(data.load_tokens(tmp_path / "run" / "samples")[0],
                              data.load_tokens(tmp_path / "run" / "em-samples")[0])  # fmt: skip
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    run_pipeline(path)  # finished stages are skipped
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    config["sample"]["save_embeddings"] = 8
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(DistillError, match="save_embeddings"):
        run_pipeline(path)
