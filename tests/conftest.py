from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
from guards import (  # noqa: F401 - the watchdog and the end-of-run process check (hooks)
    pytest_configure,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_testnodedown,
    pytest_timeout_set_timer,
)
from server_processes import MAX_NEW_TOKENS, RedisServer, Server
from server_template import close_template
from shared_builds import shared_build, shared_root, source_digest
from tiny_models import build_tiny_lm, build_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread per process: the suite runs about one pytest worker per core, and two OpenMP threads per
# worker on a busy machine spin against each other (a tiny model's layer norm took 2 ms). Measured on test_decoding.py,
# 9 cases: 67 CPU s with 2 threads per worker beside other work, 10 CPU s with 1. Servers the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """Small byte-level BPE (about 700 tokens) trained on text the fixture writes."""
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def big_tokenizer():
    """The GPT-2-shaped 50,257-token BPE from ../shared, when present."""
    path = SHARED / "tokenizers" / "bpe-50257"
    if not path.exists():
        pytest.skip("../shared/tokenizers/bpe-50257 is not available")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, tokenizer):
    """A random-init 2-layer GPT-2 over the test tokenizer, saved with it (loadable by path)."""
    path = tmp_path_factory.mktemp("tiny-lm")
    build_tiny_lm(path, tokenizer)
    return path


# a small chat template in the Jinja dialect transformers uses: "role: content" lines, then the reply's cue
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="session")
def chat_lm_dir(tmp_path_factory, tiny_lm_dir):
    """The tiny GPT-2 saved again with a chat template on its tokenizer."""
    import shutil

    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-chat-lm")
    shutil.copytree(tiny_lm_dir, path, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm_dir))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)).eval()


@pytest.fixture(scope="session")
def tiny_hmm(tokenizer):
    from pc_core.hmm import HMM

    return HMM.random(16, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)


# ---------------------------------------------------------------------- servers (service and deployment tests)


@pytest.fixture(scope="session")
def model_env(tmp_path_factory, tokenizer, tiny_lm_dir):
    """PCGEN_LM / PCGEN_HMM for a server: the tiny GPT-2 directory and a random H=16 HMM saved beside it."""
    from pc_core.hmm import HMM

    hmm_dir = tmp_path_factory.mktemp("tiny-hmm")
    HMM.random(16, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id).save(hmm_dir)
    return {
        "PCGEN_LM": str(tiny_lm_dir),
        "PCGEN_HMM": str(hmm_dir),
        "PCGEN_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
    }


@pytest.fixture(scope="session")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("service-logs")


SLOW_FIXTURE_TIMEOUT_S = 1200  # tests that may build the demo models (minutes on a loaded 2-core machine)


# The modules that keep a worker longest (seconds from their first test to the next module's, 3 workers on
# 2 cores, measured 2026-12-07), longest first: with --dist loadfile, xdist hands out whole modules, ordered by
# their number of tests; handing out these first (longest-processing-time first) keeps one long module from
# ending the run alone (that tail was 45-60 s).
HEAVY_MODULES = (
    "pc_core/test_tokenizer_families.py", "pcgen/test_demo.py", "service/test_service_hardening.py",
    "docker/test_compose_podman.py", "service/test_service_memory.py", "distill/test_distill_server.py",
    "service/test_service_playground.py", "service/test_service_api_details.py",
    "service/test_service_prometheus.py", "docker/test_deploy.py", "pc_core/constraints/test_compiler.py",
    "distill/test_distill_resume.py", "pc_core/constraints/test_blocklist.py", "pc_core/test_lazy_guide.py",
    "service/test_service_startup.py", "distill/test_distill_families.py", "service/test_service_fuzz.py",
    "test_server_template.py", "pc_core/test_infilling.py", "distill/test_distill_embed.py",
)  # fmt: skip


def _heavy_rank_of(path: str) -> int:
    return next(
        (rank for rank, name in enumerate(HEAVY_MODULES) if path.endswith("tests/" + name)),
        len(HEAVY_MODULES),
    )


def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, with HEAVY_MODULES handed out first (then xdist's own order: most tests first)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class HeavyFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            if not getattr(self, "_heavy_first", False):  # the queue is complete at the first assignment
                self._heavy_first = True
                order = sorted(self.workqueue, key=_heavy_rank_of)  # stable: the rest keep xdist's order
                self.workqueue = OrderedDict((scope, self.workqueue[scope]) for scope in order)
            super()._assign_work_unit(node)

    return HeavyFirst(config, log)


def pytest_collection_modifyitems(config, items):
    """Per-test timeouts (the watchdog in tests/guards.py): pyproject's default, longer where a test may pay for
    building the demo models or is marked slow; an explicit @pytest.mark.timeout wins."""
    for item in items:
        if item.get_closest_marker("timeout") is None and (
            "demo_models" in getattr(item, "fixturenames", ()) or item.get_closest_marker("slow")
        ):
            item.add_marker(pytest.mark.timeout(SLOW_FIXTURE_TIMEOUT_S))


_MODULE_SERVERS: list[Server] = []  # started by a test or a module's fixture: stopped when the module ends


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last test of a module (and its module fixtures): stop the servers it started, so that a run
    does not keep every test's server (and its compile workers) alive to the end."""
    yield
    if nextitem is None or getattr(nextitem, "module", None) is not getattr(item, "module", None):
        while _MODULE_SERVERS:
            _MODULE_SERVERS.pop().stop()


@pytest.fixture(scope="session", autouse=True)
def _server_template():
    """The warm process test servers are forked from (tests/server_template.py): stopped after the last test,
    when every server it forked has been stopped."""
    yield
    close_template()


@pytest.fixture(scope="session")
def start_server(model_env, logs):
    """start_server(name, **env) -> a ready Server, stopped after the last test of the module that started it
    (stop() it earlier where a test is done with it)."""
    session_servers: list[Server] = []

    def start(name: str, _keep: bool = False, **env: str) -> Server:
        # compile workers start on first use: most test servers never need one (~1.4 CPU s each saved)
        server = Server(logs, {"PCGEN_COMPILE_WARM_UP": "0", **model_env, **env}, name)
        (session_servers if _keep else _MODULE_SERVERS).append(server)
        return server.start()

    yield start
    for server in session_servers + _MODULE_SERVERS:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server):
    """Default configuration: in-process cache and limiter, continuous batching (one per session)."""
    return start_server("default", _keep=True, PCGEN_MAX_BATCH_SIZE="8", PCGEN_COMPILE_WARM_UP="1")


@pytest.fixture(scope="session")
def redis_server(logs):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (CI installs it: apt-get install redis-server)")
    redis = RedisServer(logs).start()
    yield redis
    redis.stop()


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory):
    """The offline demo's models (quick size): a tiny GPT-2 trained on the demo corpus and an HMM distilled
    from it by `pcgen distill run`. About a minute on 2 cores: built once per run (keyed by the code that
    builds them) and shared by every xdist worker; used by the demo and playground tests."""
    from pcgen.demo import build

    key = source_digest("pc_core", "distill", "pcgen")
    cache = shared_build(shared_root(tmp_path_factory), "demo-quick", key, lambda d: build(d, quick=True))
    lm_dir, hmm_dir = build(cache, quick=True)  # found, not built again
    return {"cache": cache, "lm": lm_dir, "hmm": hmm_dir}
