# The two commands of the README: `make run` and `make test`. Everything else serves them.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint types pytest schema bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/wsgate serve

test: lint types pytest

lint: $(STAMP)
	$(BIN)/ruff check wsgate tests $(wildcard scripts)
	$(BIN)/ruff format --check wsgate tests $(wildcard scripts)

types: $(STAMP)
	$(BIN)/mypy --strict wsgate

pytest: $(STAMP)
	$(BIN)/pytest

schema: $(STAMP)
	$(BIN)/wsgate schema --out protocol/schema

# The load-test benchmark (scripts/bench.py): writes BENCHMARKS.md. BENCH_ARGS=--quick for ~45 s.
bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
