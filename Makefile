# Two commands on a fresh machine: `make smoke` (set up + smoke suite) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MXNet 1.9.1 needs numpy <= 1.23.5, JAX needs numpy 2: MXNet gets its own venv (see harness/envs.py).
MXNET_VENV := .venvs/mxnet
MXNET_STAMP := $(MXNET_VENV)/.installed

.PHONY: setup browser smoke test test-heavy lint bench study clean

setup: $(STAMP) $(MXNET_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(MXNET_STAMP): infra/requirements-mxnet.txt pyproject.toml
	$(PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MXNET_VENV)/bin/python -m pip install --quiet -r infra/requirements-mxnet.txt
	$(MXNET_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(MXNET_STAMP)

smoke: setup
	$(VENV)/bin/harness run smoke

# headless Chromium for the browser tests, from Debian's packages (root + apt-get; else they skip, saying why)
browser:
	@bash infra/browser/install-chromium.sh

test: setup browser
	$(VENV)/bin/pytest -q

# the full-size transformer presets one step each at batch 1 (about a minute here; not in `make test`)
test-heavy: setup
	$(VENV)/bin/pytest -q -m heavy

lint: setup
	$(VENV)/bin/ruff check harness adapters workloads tests benchmarks
	$(VENV)/bin/ruff format --check harness adapters workloads tests benchmarks
	$(VENV)/bin/mypy

# the deep-vs-shallow study at its quick scale (under 15 min on 2 cores); report in study-*.html
study: setup
	$(VENV)/bin/harness study deep-vs-shallow --quick

bench: setup
	$(PY) -m benchmarks.bench

clean:
	rm -rf $(VENV) .venvs build *.egg-info .pytest_cache .mypy_cache .ruff_cache
