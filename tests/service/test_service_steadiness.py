"""The server never locks up: /health/live keeps answering through refused, new, repeated, cancelled and
past-deadline requests from one and from several clients, and SIGTERM still stops it afterwards.

The issue this guards against: a constraint refused as too complex, then within seconds a small new constraint
from the same client, deadlocked the compile pool (a done-callback that took a lock its caller held) and with
it the whole process: no /health/live, no /metrics, SIGTERM ignored."""

from __future__ import annotations

import random
import signal
import threading
import time

import httpx
import pytest

REFUSED = {"keywords": ["man", "apple", "beach", "old", "carry", "lunch", "chef", "letter"]}
WORDS = ["dog", "cat", "ball", "tree", "park", "lake", "kite", "girl", "boy", "apple", "river", "song"]
LIVE_WITHIN_S = 5.0  # generous for a loaded CI machine; a locked server never answers at all


class LivenessWatch:
    """Polls /health/live from its own thread; remembers the slowest answer and any failure."""

    def __init__(self, url: str) -> None:
        self.url, self.worst, self.failures = url, 0.0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LivenessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=LIVE_WITHIN_S) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = client.get("/health/live").status_code
                    if status != 200:
                        self.failures.append(f"status {status}")
                except httpx.HTTPError as err:
                    self.failures.append(f"{type(err).__name__} after {time.monotonic() - started:.1f} s")
                self.worst = max(self.worst, time.monotonic() - started)
                self._stop.wait(0.2)


@pytest.fixture(scope="module")
def steady_server(start_server):
    # clients are told apart by X-Forwarded-For from this trusted loopback proxy
    return start_server("steadiness", PCGEN_TRUSTED_PROXIES="127.0.0.1", PCGEN_REQUEST_TIMEOUT_S="3")


def test_refused_then_new_constraint_from_the_same_client(steady_server):
    with LivenessWatch(steady_server.url) as watch, steady_server.client() as client:
        for _ in range(3):
            refused = client.post("/generate", json=REFUSED | {"max_new_tokens": 16})
            assert refused.status_code in (200, 422, 504), refused.text  # refused where the cost is too high
            word = random.Random(len(watch.failures)).choice(WORDS)
            ok = client.post(
                "/generate", json={"constraint": {"word_at": 4, "word": word}, "max_new_tokens": 8}
            )
            assert ok.status_code in (200, 422), ok.text  # answered: satisfiable or not within 8 tokens
    assert not watch.failures, watch.failures


def _one_request(url: str, rng: random.Random, client_ip: str) -> str:
    kind = rng.choice(["refused", "new", "repeated", "cancelled", "past_deadline"])
    headers = {"X-Forwarded-For": client_ip}
    if kind == "refused":
        body = REFUSED | {"max_new_tokens": 16}
    elif kind == "repeated":
        body = {"keywords": ["dog"], "max_new_tokens": 8}
    else:
        body = {"keywords": rng.sample(WORDS, rng.randint(1, 3)), "max_new_tokens": 12}
    if kind == "past_deadline":  # heavy enough to outlast the server's short deadline on most machines
        body = {"all": [{"keywords": rng.sample(WORDS, 6)}, {"word_count": {"min": 20, "max": 30}}],
                "max_new_tokens": 40}  # fmt: skip
    timeout = httpx.Timeout(120.0, read=0.05) if kind == "cancelled" else 120.0
    try:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            return f"{kind}:{client.post('/generate', json=body, headers=headers).status_code}"
    except httpx.ReadTimeout:
        return f"{kind}:gone"  # the client left before the answer: the server cancels its work


@pytest.mark.parametrize("clients", [1, 4])
def test_seeded_random_requests_never_lock_the_server(steady_server, clients):
    rng = random.Random(1000 + clients)
    plans = [[random.Random(rng.random()) for _ in range(8)] for _ in range(clients)]
    outcomes: list[str] = []

    def run(index: int) -> None:
        for request_rng in plans[index]:
            outcomes.append(_one_request(steady_server.url, request_rng, f"198.51.100.{index + 1}"))

    with LivenessWatch(steady_server.url) as watch:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not watch.failures, (watch.failures, outcomes)
    assert len(outcomes) == 8 * clients
    assert not [o for o in outcomes if o.endswith(":500")], outcomes
    with steady_server.client() as client:
        assert client.get("/metrics").status_code in (200, 401)


def test_sigterm_stops_the_server_after_the_flood(start_server):
    server = start_server("steadiness-sigterm")
    with server.client() as client:
        assert client.post("/generate", json=REFUSED | {"max_new_tokens": 16}).status_code in (200, 422)
        client.post("/generate", json={"constraint": {"word_at": 4, "word": "ball"}, "max_new_tokens": 8})
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) is not None
