"""Bearer API keys. When keys are configured every route needs one, except the health probes (and /metrics,
/docs when made public). Keys are compared in constant time and never logged; the rate limiter sees only a
short hash of the key."""

from __future__ import annotations

import hashlib
import hmac

from service.errors import error_body

OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
METRICS_PATHS = frozenset({"/metrics"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def key_id(key: str) -> str:
    """A stable, non-reversible identity for rate limits and logs."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


class KeyChecker:
    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def valid(self, presented: str) -> bool:
        """Constant time in the presented key: every configured key is compared, digests have equal length."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for expected in self._digests:
            ok |= hmac.compare_digest(digest, expected)
        return ok


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def unauthorized_body(message: str) -> dict:
    return error_body("unauthorized", message)


def playground_paths() -> frozenset[str]:
    """The playground page and its assets: public, they hold no data (the page sends the key it is given)."""
    from service.playground import STATIC_DIR

    return frozenset({"/", *(f"/static/{p.name}" for p in STATIC_DIR.iterdir() if p.is_file())})


def public_paths(metrics_public: bool, docs_public: bool, playground: bool = False) -> frozenset[str]:
    paths = set(OPEN_PATHS)
    if playground:
        paths |= playground_paths()
    if metrics_public:
        paths |= METRICS_PATHS
    if docs_public:
        paths |= DOCS_PATHS
    return frozenset(paths)
