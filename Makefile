# Two entry points on a fresh machine: `make demo` (the product end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

# torch is pinned (constraints.txt) and installed first so no other package pulls a different build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,gpu,eval]"
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check --output-format concise .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/pcgen demo

bench: setup
	$(BIN)/python -m benchmarks.constraints

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
