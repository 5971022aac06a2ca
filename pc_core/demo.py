"""`pcgen demo`: the whole product on a laptop, offline, from nothing.

1. Write a corpus of everyday sentences from a small grammar (no download).
2. Train a tiny GPT-2 and its byte-level BPE on it (pc_core.tinylm; a few minutes on 2 cores, cached).
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
import socket
import subprocess
import sys
import time
from pathlib import Path

from pc_core.tinylm import TinyLMConfig, train_lm, train_tokenizer

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

    def noun_phrase(nouns: list[str]) -> str:
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
    cache.mkdir(parents=True, exist_ok=True)
    lines = synthetic_corpus(4000 if quick else 20000)
    lm_cfg = TinyLMConfig(vocab_size=512, n_layer=2, n_embd=96, n_head=4, max_len=40, epochs=2 if quick else 4,
                          batch_size=32, lr=3e-3)  # fmt: skip
    started = time.time()
    tokenizer = train_tokenizer(lines, cache / "tokenizer", lm_cfg.vocab_size)
    lm_dir = train_lm(lines, tokenizer, cache, lm_cfg)
    log.info("LM ready in %.0f s: %s", time.time() - started, lm_dir)
    hmm_dir = cache / "distill" / "hmm"
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
            [sys.executable, "-m", "pc_core.cli", "distill", "run", "--config", str(config_path)], check=True
        )
        log.info("HMM distilled in %.0f s: %s", time.time() - started, hmm_dir)
    return lm_dir, hmm_dir


def serve_and_ask(
    lm_dir: Path, hmm_dir: Path, keywords: list[str], keep_serving: bool, port: int | None
) -> int:
    import httpx

    port = port or _free_port()
    env = {**os.environ, "PCGEN_LM": str(lm_dir), "PCGEN_HMM": str(hmm_dir), "PCGEN_DEVICE": "cpu",
           "PCGEN_HOST": "127.0.0.1", "PCGEN_PORT": str(port)}  # fmt: skip
    log_path = lm_dir.parent / "server.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - closed with the server
    server = subprocess.Popen([sys.executable, "-m", "pc_core.cli", "serve"], env=env, stdout=log_file,
                              stderr=subprocess.STDOUT)  # fmt: skip
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log.info("starting pcgen serve on port %d (log: %s)", port, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode}; see {log_path}")
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the server did not become ready within 5 minutes")
        body = {
            "prompt": "",
            "keywords": keywords,
            "max_new_tokens": 16,
            "num_beams": 4,
            "num_return_sequences": 3,
        }
        print(f"\nPOST {base}/generate {json.dumps(body)}")
        response = httpx.post(f"{base}/generate", json=body, timeout=300)
        response.raise_for_status()
        result = response.json()
        for output in result["outputs"]:
            mark = "satisfied" if output["constraint_satisfied"] else "NOT satisfied"
            print(f"  [{mark}] {output['text'].strip()}")
        print(f"  timings (ms): {json.dumps({k: round(v, 1) for k, v in result['timings'].items()})}")
        if keep_serving:
            print(f"\nServing on {base} (playground at {base}/, API docs at {base}/docs). Ctrl-C to stop.")
            server.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
        log_file.close()


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
