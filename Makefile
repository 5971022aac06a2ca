# Two entry points on a fresh machine: `make demo` (the product end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean compose-test

setup: $(STAMP)

# torch is pinned (constraints.txt) and installed first so no other package pulls a different build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,gpu,eval,faiss]"
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check --output-format concise .
	$(BIN)/ruff format --check .

# The suite runs on one worker more than there are cores (pytest-xdist; the extra one fills the time others wait
# on servers and subprocesses): a test file's tests stay on one worker, so its module fixtures (servers) start
# once; models built for the tests are shared by the workers (tests/conftest.py).
# Bytecode is written (PYTHONDONTWRITEBYTECODE, where the environment sets it, is dropped): the suite starts
# ~100 Python processes (workers, servers, CLIs), and each would otherwise compile the project's modules and
# pytest its assertion rewrites again (~0.3 CPU s per process, ~1.7 per worker).
TEST_WORKERS ?= $(shell expr $$(nproc 2>/dev/null || echo 1) + 1)
test: lint
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30

# docker-compose.yml for real with podman (root; .ci/run's packages): local base + images, the stack, teardown.
# Part of `make test` too; here a machine that cannot run podman fails instead of skipping.
compose-test: setup
	PCGEN_COMPOSE_TEST_REQUIRED=1 $(BIN)/python -m pytest -p no:cacheprovider -n 0 -rs -s \
		tests/docker/test_compose_podman.py

demo: setup
	$(BIN)/pcgen demo

bench: setup
	$(BIN)/python -m benchmarks.constraints

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
