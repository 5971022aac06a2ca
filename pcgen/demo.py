"""`pcgen demo`: the whole product on a laptop, offline, from nothing.

1. Write a corpus of everyday sentences from a small grammar (no download).
2. Train a tiny GPT-2 and its byte-level BPE on it (pcgen.tinylm; a few minutes on 2 cores, cached).
3. Distill an HMM from that LM with the real pipeline (`pcgen distill run`: sample, LVD, EM).
4. Start the API server (`pcgen serve`), send an example request, print the texts with the requested words.

Everything is cached under --cache (default ~/.cache/pcgen/demo), so a second run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from pc_core.lifetime import set_parent_death_signal
from pcgen.tinylm import TinyLMConfig, train_lm, train_tokenizer

log = logging.getLogger("pcgen.demo")

_PEOPLE = [
    "boy",
    "girl",
    "man",
    "woman",
    "child",
    "farmer",
    "chef",
    "student",
    "player",
    "teacher",
    "dog",
    "cat",
]
_THINGS = ["frisbee", "ball", "book", "kite", "pizza", "apple", "guitar", "bicycle", "umbrella", "camera",
           "sandwich", "letter", "flower", "boat", "hat"]  # fmt: skip
_PLACES = ["in the park", "on the beach", "by the lake", "in the kitchen", "on the field", "in the garden",
           "at the station", "under a tree", "near the river", "in the snow", "on the street", "at home"]  # fmt: skip
_ADJ = ["red", "small", "old", "new", "happy", "brown", "little", "big", "green", "quiet"]
# verb: (base, third person, past, -ing, takes an object)
_VERBS = [("catch", "catches", "caught", "catching", True), ("throw", "throws", "threw", "throwing", True),
          ("hold", "holds", "held", "holding", True), ("read", "reads", "read", "reading", True),
          ("carry", "carries", "carried", "carrying", True), ("find", "finds", "found", "finding", True),
          ("eat", "eats", "ate", "eating", True), ("paint", "paints", "painted", "painting", True),
          ("run", "runs", "ran", "running", False), ("jump", "jumps", "jumped", "jumping", False),
          ("sit", "sits", "sat", "sitting", False), ("sleep", "sleeps", "slept", "sleeping", False),
          ("walk", "walks", "walked", "walking", False), ("play", "plays", "played", "playing", False)]  # fmt: skip
_TIMES = ["in the morning", "after lunch", "every day", "at night", "on sunday", "in winter", "today"]


def synthetic_corpus(n: int, seed: int = 0) -> list[str]:
    """Simple English sentences: subject, verb (any tense), object, place, time."""
    rng = random.Random(seed)

    def noun_phrase(nouns: list[str]) -> tuple[str, bool]:
        noun = rng.choice(nouns)
        plural = rng.random() < 0.25
        det = rng.choice(["the", "a", "my", "the"]) if not plural else rng.choice(["the", "two", "some"])
        if det == "a" and noun[0] in "aeiou":
            det = "an"
        adj = rng.choice(_ADJ) + " " if rng.random() < 0.4 else ""
        noun = (
            noun + ("es" if noun.endswith(("ch", "sh")) else "ren" if noun == "child" else "s")
            if plural
            else noun
        )
        noun = {"mans": "men", "womans": "women"}.get(noun, noun)
        return f"{det} {adj}{noun}", plural

    out = []
    for _ in range(n):
        subject, plural = noun_phrase(_PEOPLE)
        base, third, past, ing, transitive = rng.choice(_VERBS)
        tense = rng.random()
        if tense < 0.4:
            verb = past
        elif tense < 0.7:
            verb = ("are " if plural else "is ") + ing
        else:
            verb = base if plural else third
        words = [subject, verb]
        if transitive:
            words.append(noun_phrase(_THINGS)[0])
        if rng.random() < 0.8:
            words.append(rng.choice(_PLACES))
        if rng.random() < 0.3:
            words.append(rng.choice(_TIMES))
        sentence = " ".join(words)
        out.append(sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "!"]))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(cache: Path, quick: bool = False) -> tuple[Path, Path]:
    """LM and HMM directories, built (or found) under `cache`."""
    lm_dir, hmm_dir = cache / "lm", cache / "distill" / "hmm"
    if (lm_dir / "model.safetensors").exists() and (hmm_dir / "model.safetensors").exists():
        log.info("models found: %s, %s", lm_dir, hmm_dir)  # no torch import, no tokenizer load: ~4 s saved
        return lm_dir, hmm_dir
    cache.mkdir(parents=True, exist_ok=True)
    lines = synthetic_corpus(4000 if quick else 20000)
    lm_cfg = TinyLMConfig(vocab_size=512, n_layer=2, n_embd=96, n_head=4, max_len=40, epochs=2 if quick else 4,
                          batch_size=32, lr=3e-3)  # fmt: skip
    started = time.time()
    tokenizer = train_tokenizer(lines, cache / "tokenizer", lm_cfg.vocab_size)
    lm_dir = train_lm(lines, tokenizer, cache, lm_cfg)
    log.info("LM ready in %.0f s: %s", time.time() - started, lm_dir)
    if not (hmm_dir / "model.safetensors").exists():
        config = {  # the `pcgen distill run` config format (distill/pipeline.py); JSON is valid YAML
            "lm": str(lm_dir),
            "out": str(cache / "distill"),
            "device": "cpu",
            "sample": {"num_sequences": 1500 if quick else 6000, "seq_len": 24, "batch_size": 128,
                       "save_embeddings": 1000 if quick else 3000},
            "lvd": {"hidden_size": 32 if quick else 64, "kmeans_iters": 15},
            "train": {"steps": 3 if quick else 8, "batch_size": 512},
        }  # fmt: skip
        config_path = cache / "distill.yaml"
        config_path.write_text(json.dumps(config, indent=2))
        started = time.time()
        subprocess.run(
            [sys.executable, "-m", "pcgen.cli", "distill", "run", "--config", str(config_path)], check=True
        )
        log.info("HMM distilled in %.0f s: %s", time.time() - started, hmm_dir)
    return lm_dir, hmm_dir


class _Stopped(BaseException):  # not Exception: no library handler may swallow it
    """SIGINT or SIGTERM arrived; raised by the handler so the `finally` below stops the server."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def _stop_server(server: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the server's process group (it runs in a session of its own), then SIGKILL after `timeout`."""
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=timeout)
    except ProcessLookupError:
        server.wait()
    except subprocess.TimeoutExpired:
        log.warning("the server did not stop within %.0f s; killing it", timeout)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _error_line(response: object) -> str:
    """One line for an error response: the service's {"error": {"type", "message", "path"}}, else the text."""
    try:
        error = response.json()["error"]
        line = f"{error['type']}: {error['message']}" + (
            f" (path: {error['path']})" if error.get("path") else ""
        )
    except Exception:  # noqa: BLE001 - not the service's error shape (a proxy, a crash): show the raw text
        line = response.text.strip() or response.reason_phrase
    return " ".join(f"HTTP {response.status_code} {line}".split())


def _wait_ready(server: subprocess.Popen, base: str, log_path: Path) -> None:
    """Until the server answers /health/ready (at most 5 minutes); exits when the server does."""
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"pcgen demo: the server exited with code {server.returncode}; see {log_path}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"pcgen demo: the server did not become ready within 5 minutes; see {log_path}")


def _ask(base: str, keywords: list[str]) -> None:
    """The example request, and its outputs and timings printed; an error answer exits, on one line."""
    import httpx

    body = {
        "prompt": "",
        "keywords": keywords,
        "max_new_tokens": 16,
        "num_beams": 4,
        "num_return_sequences": 3,
    }
    print(f"\nPOST {base}/generate {json.dumps(body)}", flush=True)
    try:
        response = httpx.post(f"{base}/generate", json=body, timeout=300)
    except httpx.HTTPError as err:
        raise SystemExit(f"pcgen demo: POST /generate failed: {type(err).__name__}: {err}") from None
    if response.status_code >= 400:
        raise SystemExit(f"pcgen demo: {_error_line(response)}")
    result = response.json()
    for output in result["outputs"]:
        mark = "satisfied" if output["constraint_satisfied"] else "NOT satisfied"
        print(f"  [{mark}] {output['text'].strip()}")
    timings = {k: round(v, 1) for k, v in result["timings"].items()}
    print(f"  timings (ms): {json.dumps(timings)}", flush=True)


def serve_and_ask(
    lm_dir: Path, hmm_dir: Path, keywords: list[str], keep_serving: bool, port: int | None
) -> int:
    """Start `pcgen serve`, send one request, print the outputs; 0 on success. The server always stops with this
    function, also on SIGINT / SIGTERM (which return 0 once the example has been answered, 128 + the signal
    before) and on an error answer (printed on one line, exit code 1)."""
    port = port or _free_port()
    # compile workers start on first use: the demo's few keywords compile in the serving process, so it never
    # starts one
    env = {"PCGEN_COMPILE_WARM_UP": "false", **os.environ, "PCGEN_LM": str(lm_dir), "PCGEN_HMM": str(hmm_dir),
           "PCGEN_DEVICE": "cpu", "PCGEN_HOST": "127.0.0.1", "PCGEN_PORT": str(port)}  # fmt: skip
    log_path = lm_dir.parent / "server.log"
    base = f"http://127.0.0.1:{port}"
    answered = False
    server: subprocess.Popen | None = None
    log_file = open(log_path, "w")  # noqa: SIM115 - closed with the server
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A session of its own: the terminal's Ctrl-C reaches only this process, which stops the whole group.
        # The server dies with the demo even when the demo is killed outright (its workers follow the server);
        # the thread starting it lives until it has stopped the server (the signal is tied to that thread).
        server = subprocess.Popen([sys.executable, "-m", "pcgen.cli", "serve"], env=env, stdout=log_file,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=set_parent_death_signal)  # fmt: skip
        logging.getLogger("httpx").setLevel(logging.WARNING)
        log.info("starting pcgen serve (pid %d) on port %d (log: %s)", server.pid, port, log_path)
        _wait_ready(server, base, log_path)
        _ask(base, keywords)
        answered = True
        if keep_serving:
            print(f"\nServing on {base} (playground at {base}/, API docs at {base}/docs). Ctrl-C to stop.",
                  flush=True)  # fmt: skip
            code = server.wait()
            raise SystemExit(f"pcgen demo: the server exited with code {code}; see {log_path}")
        return 0
    except (_Stopped, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, _Stopped) else signal.SIGINT
        log.info("%s: stopping the server", signal.Signals(signum).name)
        return 0 if answered else 128 + signum
    finally:
        for sig in previous:  # a second Ctrl-C must not abandon the server half-stopped
            signal.signal(sig, signal.SIG_IGN)
        try:
            if server is not None:
                _stop_server(server)
            log_file.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def cmd_demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    lm_dir, hmm_dir = build(Path(args.cache).expanduser(), quick=args.quick)
    return serve_and_ask(lm_dir, hmm_dir, args.keywords, args.keep_serving, args.port)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline end-to-end demo: tiny LM -> distilled HMM -> server -> request")
    p.add_argument("--cache", default=os.environ.get("PCGEN_DEMO_CACHE", "~/.cache/pcgen/demo"))
    p.add_argument("--keywords", nargs="+", default=["dog", "frisbee", "catch"])
    p.add_argument("--quick", action="store_true", help="smaller corpus, LM and HMM (for tests)")
    p.add_argument("--keep-serving", action="store_true", help="keep the server running after the example")
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=cmd_demo)
