# Two commands on a fresh machine: `make smoke` (set up + smoke suite) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup smoke test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

smoke: setup
	$(VENV)/bin/harness run smoke

test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check harness adapters workloads tests benchmarks
	$(VENV)/bin/ruff format --check harness adapters workloads tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m benchmarks.bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
