"""A client for OpenAI-compatible `/v1/completions` servers (vLLM, SGLang, TGI, `pcgen serve`) that samples
the LM's own distribution with its exact token ids, over a fleet of servers.

What distillation needs from a server (vLLM's documented parameters, which `pcgen serve` also takes):
- plain ancestral sampling: `temperature` 1, `top_p` 1, no penalties; servers that also know vLLM's
  `top_k`, `min_p` and `repetition_penalty` get them set to "off" explicitly (vLLM otherwise applies the
  model's generation_config.json defaults, e.g. a top_k of 20), servers that refuse those fields with a
  400 naming one of them do not have them and get the request without;
- the token ids themselves: `logprobs: 0` with `return_tokens_as_token_ids: true`, so every sampled token
  comes back spelled "token_id:123" (re-tokenising the text would sample another distribution);
- the local tokenizer: the server's `/tokenize` (vLLM's shape, or TGI's list of {"id"}) must give the local
  ids of a fixed text; a server without it must decode the local ids of that text back to the local
  decoding (`echo`) and count the text as the local tokenizer does (`usage.prompt_tokens`, allowing a BOS).
A server that fails any of these is refused with a message naming it.

Requests go to the server with the fewest requests in flight; a dropped connection, a timeout, 429 or a 5xx
marks that server down for a backoff (doubling per consecutive failure, `Retry-After` honoured) and the
request is retried, on another server when one is up: up to max_retries failures, where a 429 (the server's
rate limit) is not a failure but a wait, of at most the request timeout in all. Any other 4xx is an error
naming the server.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from distill.errors import DistillError

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise

PROBE_TEXT = "The quick brown fox, 42 times: naïve café — 日本 😀\n  indented"
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
OFF_EXTRAS = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}  # vLLM's "disabled" values
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
TOKEN_PREFIX = "token_id:"


class ServerRefused(DistillError):
    """A server that cannot be used for distillation (no token ids, another tokenizer, a hard 4xx)."""


@dataclass
class Server:
    url: str  # base URL without /v1
    in_flight: int = 0
    failures: int = 0  # consecutive
    down_until: float = 0.0
    extras: bool = True  # accepts OFF_EXTRAS
    check: str | None = None  # how its tokenizer was verified: "tokenize" or "echo"
    sequences: int = 0
    tokens: int = 0
    seconds: float = 0.0  # summed request latency of successful sampling requests

    @property
    def name(self) -> str:
        return self.url


def base_url(url: str) -> str:
    """http://host:8000/v1/ -> http://host:8000 (the OpenAI SDK's base_url convention is accepted too)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise DistillError(f"server {url!r}: expected an http:// or https:// URL")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def public_url(url: str) -> str:
    """The URL without credentials (what the manifest records)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_token_ids(choice: dict, server: str) -> list[int]:
    """The sampled ids of a completion choice: `logprobs.tokens` spelled "token_id:N" (or a vLLM
    `token_ids` list)."""
    if isinstance(choice.get("token_ids"), list):
        return [int(t) for t in choice["token_ids"]]
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if not isinstance(tokens, list) or not all(
        isinstance(t, str) and t.startswith(TOKEN_PREFIX) for t in tokens
    ):
        shown = tokens[:3] if isinstance(tokens, list) else tokens
        raise ServerRefused(
            f"server {server} did not return token ids (asked with logprobs and return_tokens_as_token_ids; "
            f"got tokens {shown!r}); distillation needs the sampled ids, not re-tokenised text"
        )
    return [int(t[len(TOKEN_PREFIX) :]) for t in tokens]


@dataclass
class Fleet:
    """Servers that answer one model's completions; `sample` returns one sequence's token ids."""

    urls: list[str]
    api_key: str | None = None
    model: str | None = None
    timeout: float = 600.0
    max_retries: int = 8
    servers: list[Server] = field(init=False)
    client: httpx.AsyncClient | None = field(init=False, default=None)
    tokenize_path: str = field(init=False, default="/tokenize")  # vLLM's (and pcgen serve's) path

    def __post_init__(self) -> None:
        if not self.urls:
            raise DistillError("server: at least one URL is needed")
        self.servers = [Server(base_url(u)) for u in self.urls]

    async def __aenter__(self) -> Fleet:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self.client = httpx.AsyncClient(headers=headers, timeout=self.timeout, limits=limits)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    # ------------------------------------------------------------------------------------------ requests

    async def _post(self, server: Server, path: str, body: dict) -> httpx.Response:
        return await self.client.post(server.url + path, json=body)

    def _body(self, server: Server, prompt: list[int], max_tokens: int, seed: int | None) -> dict:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "n": 1, **SAMPLING,
                "logprobs": 0, "return_tokens_as_token_ids": True}  # fmt: skip
        if seed is not None:
            body["seed"] = seed
        if server.extras:
            body.update(OFF_EXTRAS)
        return body

    def _pick(self) -> Server | None:
        now = time.monotonic()
        up = [s for s in self.servers if s.down_until <= now]
        return min(up, key=lambda s: (s.in_flight, s.sequences)) if up else None

    def _mark_down(self, server: Server, why: str, retry_after: float | None = None) -> None:
        """Back off from a server: its Retry-After when it sent one, else 0.25 s doubling per consecutive
        failure up to 30 s, with jitter. The requests in flight when it failed count as one failure."""
        now = time.monotonic()
        if server.down_until > now:
            return
        server.failures += 1
        wait = min(30.0, 0.25 * 2 ** min(server.failures - 1, 8))
        if retry_after is not None:
            wait = min(retry_after, 120.0)
        wait *= 0.75 + 0.5 * random.random()  # clients that failed together do not come back together
        server.down_until = now + wait
        log.warning("server %s: %s; backing off %.1f s", server.name, why, wait)

    async def sample(
        self, prompt: list[int], max_tokens: int, seed: int | None
    ) -> tuple[list[int], str, Server]:
        """One completion: (token ids, finish_reason, the server that answered). Retries transient failures
        on whichever server is up; raises after max_retries failures of this request. A 429 is not a failure
        but the server asking for its turn: it does not use up the retries (under contention a request could
        lose the race for the rate limit's slots max_retries times in a row), and the request waits for
        rate-limited servers at most `timeout` seconds in all."""
        failures, waited_since = 0, None
        while True:
            server = self._pick()
            if server is None:  # every server backs off: wait for the first to come back, in random order
                wait = max(0.01, min(s.down_until for s in self.servers) - time.monotonic())
                if waited_since is not None and time.monotonic() + wait - waited_since > self.timeout:
                    raise DistillError(
                        f"servers {', '.join(s.name for s in self.servers)} kept answering 429 (rate limited) "
                        f"for more than the request timeout ({self.timeout:g} s)"
                    )
                await asyncio.sleep(wait * (1.0 + 0.2 * random.random()))
                server = self._pick() or min(self.servers, key=lambda s: s.down_until)
            server.in_flight += 1
            began = time.perf_counter()
            try:
                r = await self._post(server, "/v1/completions", self._body(server, prompt, max_tokens, seed))
            except httpx.TransportError as err:  # refused, dropped, timed out
                r, why = None, f"{type(err).__name__} {err}"
            finally:
                server.in_flight -= 1
            if r is None or r.status_code in RETRY_STATUS:
                if r is not None:
                    why = f"HTTP {r.status_code}"
                self._mark_down(server, why, None if r is None else _retry_after(r))
                if r is not None and r.status_code == 429:  # a wait, not a failure
                    waited_since = time.monotonic() if waited_since is None else waited_since
                    continue
                failures += 1
                if failures > self.max_retries:
                    break
                continue
            choice = _choice(r, server)
            ids = parse_token_ids(choice, server.name)
            server.failures = 0
            server.sequences += 1
            server.tokens += len(ids)
            server.seconds += time.perf_counter() - began
            return ids, choice.get("finish_reason") or "length", server
        raise DistillError(
            f"a completion failed {self.max_retries + 1} times over servers "
            f"{', '.join(s.name for s in self.servers)}; see the warnings above"
        )

    # ------------------------------------------------------------------------------------------ setup

    async def prepare(self, tokenizer: Any, start: list[int], max_tokens: int) -> None:
        """The model name, then per server: the vLLM extras, token ids, and the tokenizer check."""
        if self.model is None:
            self.model = await self._served_model(self.servers[0])
        for server in self.servers:
            if await self._served_model(server, self.model) != self.model:
                raise ServerRefused(f"server {server.name} does not serve model {self.model!r}")
            await self._probe_sampling(server, start, min(max_tokens, 4))
            await self._check_tokenizer(server, tokenizer)
            log.info("server %s: model %s, token ids, tokenizer checked by %s", server.name, self.model,
                     server.check)  # fmt: skip

    async def _served_model(self, server: Server, want: str | None = None) -> str:
        r = await self._get_json(server, "/v1/models")
        ids = [m.get("id") for m in r.get("data", []) if isinstance(m, dict)]
        if not ids:
            raise ServerRefused(f"server {server.name}: /v1/models lists no model")
        return want if want in ids else ids[0]

    async def _get_json(self, server: Server, path: str) -> dict:
        try:
            r = await self.client.get(server.url + path)
        except httpx.TransportError as err:
            raise ServerRefused(f"server {server.name}: cannot connect ({type(err).__name__} {err})") from err
        if r.status_code != 200:
            raise ServerRefused(f"server {server.name}: GET {path} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    async def _probe_sampling(self, server: Server, start: list[int], max_tokens: int) -> None:
        body = self._body(server, start, max_tokens, seed=0)
        r = await self._checked_post(server, "/v1/completions", body)
        if r.status_code == 400 and any(key in r.text for key in OFF_EXTRAS):
            server.extras = False  # the server has no such sampling knobs, so none is on
            r = await self._checked_post(server, "/v1/completions", self._body(server, start, max_tokens, 0))
        choice = _choice(r, server)
        ids = parse_token_ids(choice, server.name)
        if not ids:
            raise ServerRefused(f"server {server.name}: a probe completion returned no tokens")

    async def _checked_post(self, server: Server, path: str, body: dict) -> httpx.Response:
        try:
            return await self._post(server, path, body)
        except httpx.TransportError as err:
            raise ServerRefused(f"server {server.name}: cannot connect ({type(err).__name__} {err})") from err

    async def _check_tokenizer(self, server: Server, tokenizer: Any) -> None:
        local = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        body = {"model": self.model, "prompt": PROBE_TEXT, "add_special_tokens": False}
        r = await self._checked_post(server, self.tokenize_path, body)
        theirs = _tokenize_ids(r) if r.status_code == 200 else None
        if theirs is not None:
            server.check = "tokenize"
            if theirs != local:
                raise ServerRefused(
                    f"server {server.name}: its tokenizer differs from the local one (/tokenize gave "
                    f"{theirs[:12]}... for a text the local tokenizer encodes as {local[:12]}...)"
                )
            return
        server.check = "echo"
        await self._check_by_echo(server, tokenizer, local)

    async def _check_by_echo(self, server: Server, tokenizer: Any, local: list[int]) -> None:
        """No /tokenize: the server decodes the local ids as the local tokenizer does, and counts the text's
        tokens as it does (a BOS it adds to text prompts allowed)."""
        body = {**self._body(server, local, 1, 0), "echo": True}
        body.pop("logprobs"), body.pop("return_tokens_as_token_ids")
        echoed = _choice(await self._checked_post(server, "/v1/completions", body), server)["text"]
        want = tokenizer.decode(local)
        if not echoed.startswith(want):
            raise ServerRefused(
                f"server {server.name}: its tokenizer differs from the local one (it decodes the local ids "
                f"of a fixed text as {echoed[: len(want) + 8]!r}, the local tokenizer as {want!r})"
            )
        body = {**body, "prompt": PROBE_TEXT, "echo": False}
        r = await self._checked_post(server, "/v1/completions", body)
        _choice(r, server)
        counted = r.json().get("usage", {}).get("prompt_tokens")
        if counted not in (len(local), len(local) + 1):
            raise ServerRefused(
                f"server {server.name}: its tokenizer differs from the local one (a fixed text is "
                f"{counted} tokens there, {len(local)} here)"
            )


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return float(r.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _choice(r: httpx.Response, server: Server) -> dict:
    """The first choice of a 200 completion; any other answer is an error naming the server."""
    if r.status_code != 200:
        raise ServerRefused(f"server {server.name}: /v1/completions answered {r.status_code}: {r.text[:500]}")
    try:
        return r.json()["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise ServerRefused(f"server {server.name}: not a completion response: {r.text[:300]}") from err


def _tokenize_ids(r: httpx.Response) -> list[int] | None:
    """vLLM/SGLang: {"tokens": [ids]}; TGI: [{"id": ...}, ...]. None when the body is neither."""
    try:
        body = r.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("tokens"), list):
        return [int(t) for t in body["tokens"]]
    if isinstance(body, list) and all(isinstance(t, dict) and "id" in t for t in body):
        return [int(t["id"]) for t in body]
    return None
