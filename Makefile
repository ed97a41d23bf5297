# The two commands: `make run` (whole service, embedded defaults) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt demo chaos soak fuzz bench install clean-data

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m config.launcher

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# mypy's Django plugin imports the settings, which start the embedded PostgreSQL when no
# DATABASE_URL is set, and mypy exits without releasing it: give it a URL it never dials.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	DATABASE_URL=$${DATABASE_URL:-postgresql://typecheck.invalid/none} $(VENV)/bin/mypy .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .

demo: $(STAMP)
	$(PY) -m bench.demo

chaos: $(STAMP)
	$(PY) -m pytest -m chaos tests/chaos -v -rxX $(PYTEST_ARGS)
	@echo "figures of each run: .data/chaos-logs/figures.jsonl; server logs: .data/chaos-logs/"

soak: $(STAMP)
	$(PY) -m bench.soak $(SOAK_ARGS)

fuzz: $(STAMP)
	$(PY) -m pytest tests/api/test_schemathesis.py -v

bench: $(STAMP)
	$(PY) bench/quotes.py
	$(PY) bench/pipeline.py
	$(PY) bench/ws.py

clean-data:
	rm -rf .data
