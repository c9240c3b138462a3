# Two commands for a fresh machine: `make up` (the whole product) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Let Python cache compiled modules (__pycache__, git-ignored) even where the environment says
# not to: every test starts dozens of processes (workers, launchers, ranks, the CLI), and each
# would otherwise recompile the whole library (~0.6 s a process on a 2-core CPU).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: up test lint format bench clean-var

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## Bring up Redis (embedded if none answers at REDIS_URL), migrations, a worker and the dashboard.
up: $(STAMP)
	$(VENV)/bin/sslengine up

## The full test suite (starts an embedded Redis itself if none is reachable).
test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .
