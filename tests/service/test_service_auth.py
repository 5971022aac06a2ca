"""API keys: 401 without / with a wrong key on every protected route, probes open; per-key rate limits."""

from __future__ import annotations

import httpx
import pytest

PROTECTED = [
    ("POST", "/generate", {"prompt": "The", "keywords": ["dog"], "max_new_tokens": 6}),
    ("POST", "/v1/completions", {"prompt": "The", "keywords": ["dog"], "max_tokens": 6}),
    ("GET", "/v1/models", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
]


@pytest.fixture(scope="module")
def auth_server(start_server):
    return start_server("auth", PCGEN_API_KEYS="key-one-1234,key-two-5678", PCGEN_RATE_LIMIT="4/minute")


@pytest.mark.parametrize("method,path,body", PROTECTED)
def test_protected_routes_need_a_key(auth_server, method, path, body):
    with httpx.Client(base_url=auth_server.url, timeout=60) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key-000"},
            {"Authorization": "Basic a2V5LW9uZS0xMjM0"},
        ):
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            error = r.json()["error"]
            if path.startswith("/v1/"):  # OpenAI's error shape: the category in `type`, pcgen's in `code`
                assert error["type"] == "authentication_error" and error["code"] == "unauthorized"
            else:
                assert error["type"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        r = client.request(method, path, json=body, headers={"Authorization": "Bearer key-two-5678"})
        assert r.status_code == 200, r.text


def test_probes_stay_open(auth_server):
    with httpx.Client(base_url=auth_server.url, timeout=30) as client:
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 200
        assert client.get("/health").status_code == 200  # the alias is a public probe too


def test_bearer_scheme_is_documented(auth_server):
    spec = httpx.get(
        auth_server.url + "/openapi.json", headers={"Authorization": "Bearer key-one-1234"}
    ).json()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["paths"]["/health/live"]["get"]["security"] == []


def test_rate_limit_per_key(auth_server):
    body = {"prompt": "A", "keywords": ["cat"], "max_new_tokens": 6}
    key_one = {"Authorization": "Bearer key-one-1234"}
    with httpx.Client(base_url=auth_server.url, timeout=60) as client:
        replies = [client.post("/generate", json=body, headers=key_one) for _ in range(6)]
        codes = [r.status_code for r in replies]
        assert codes[:4] == [200] * 4 and codes[4:] == [429, 429], codes
        # X-RateLimit-* on every answer: the limit, what is left of it, seconds until it frees up
        assert [r.headers["x-ratelimit-remaining"] for r in replies] == ["3", "2", "1", "0", "0", "0"]
        assert {r.headers["x-ratelimit-limit"] for r in replies} == {"4"}
        assert all(1 <= int(r.headers["x-ratelimit-reset"]) <= 60 for r in replies)
        r = client.post("/generate", json=body, headers=key_one)
        assert r.json()["error"]["type"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-remaining"] == "0"
        # another key has its own budget (key-two spent one call in the route tests at most twice)
        r = client.post("/generate", json=body, headers={"Authorization": "Bearer key-two-5678"})
        assert r.status_code == 200
        # the limit covers generation routes only
        assert client.get("/v1/models", headers=key_one).status_code == 200
