"""The guide's definition by enumeration (every continuation, float64 numpy), shared by the tests that check a
guide against it, and the comparison they use."""

import math

import numpy as np
from byte_support import has_banned_token

from pc_core.constraints.checker import check_ids


class Brute:
    """Enumerates every continuation; float64 numpy; the definition the guide must match."""

    def __init__(self, hmm, tokenizer, spec, horizon, min_new_tokens=0, context=()):
        self.pi = hmm.log_initial.double().exp().numpy()
        self.A = hmm.log_transition.double().exp().numpy()
        B = hmm.log_emission.double().exp().numpy()
        # the guide models generation without tokens that split a character: remove them, renormalise rows
        banned = [x for x in range(B.shape[1]) if has_banned_token(tokenizer, [x])]
        self.B0 = B.copy()
        B[:, banned] = 0.0
        self.B = B / B.sum(axis=1, keepdims=True)
        self.tok, self.spec, self.n, self.min_new = tokenizer, spec, horizon, min_new_tokens
        a = self.pi
        for x in context:  # the prompt is observed with the unrestricted emission
            a = (a * self.B0[:, x]) @ self.A
        self.a0 = a / a.sum()
        self.V = self.B.shape[1]
        self.eos = tokenizer.eos_token_id

    _ok_cache: dict = {}

    def ok(self, ids):
        key = (str(self.spec), self.min_new, tuple(ids))
        if key not in self._ok_cache:
            self._ok_cache[key] = self._ok(ids)
        return self._ok_cache[key]

    def _ok(self, ids):
        first_eos = ids.index(self.eos) if self.eos in ids else len(ids)
        if first_eos < self.min_new:
            return False
        return check_ids(self.spec, self.tok, ids) and not has_banned_token(self.tok, ids)

    def alpha(self, prefix):
        a = self.a0
        for x in prefix:
            a = (a * self.B[:, x]) @ self.A
        return a

    def mass(self, prefix, a, k):
        """sum over continuations c of length k of P(c | a) * ok(prefix + c); a unnormalised."""
        if k == 0:
            return a.sum() if self.ok(list(prefix)) else 0.0
        total = 0.0
        for x in range(self.V):
            total += self.mass(prefix + (x,), (a * self.B[:, x]) @ self.A, k - 1)
        return total

    def log_prob(self, prefix):
        a = self.alpha(prefix)
        a = a / a.sum()
        m = self.mass(tuple(prefix), a, self.n - len(prefix))
        return math.log(m) if m > 0 else -math.inf

    def next_log_probs(self, prefix):
        a = self.alpha(prefix)
        a = a / a.sum()
        out = []
        for x in range(self.V):
            px = (a * self.B[:, x]).sum()
            if px == 0:  # a banned token
                out.append(-math.inf)
                continue
            m = self.mass(tuple(prefix) + (x,), (a * self.B[:, x]) @ self.A, self.n - len(prefix) - 1)
            out.append(math.log(m / px) if m > 0 else -math.inf)
        return np.array(out)


def _close(got, want, rel=1e-5):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert np.array_equal(np.isneginf(got), np.isneginf(want)), (got, want)
    finite = np.isfinite(want)
    # relative on probabilities: |p_got / p_want - 1| <= rel
    np.testing.assert_allclose(np.exp(got[finite] - want[finite]), 1.0, rtol=rel, atol=0)
