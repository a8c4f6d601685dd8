# The two commands a newcomer runs: `make demo` and `make test`.
# Each creates or reuses .venv and installs what it needs; re-running is quick
# when pyproject.toml has not changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FEDREC := $(VENV)/bin/fedrec
STAMP  := $(VENV)/.installed-stamp
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test test-fast bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[full,dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(FEDREC) data fetch ml-100k
	$(FEDREC) train configs/ml100k-explicit.yaml --run-dir runs/demo-ml100k-explicit --overwrite
	$(FEDREC) evaluate runs/demo-ml100k-explicit --split test
	$(FEDREC) recommend runs/demo-ml100k-explicit --user 1 -k 10
	$(FEDREC) recommend runs/demo-ml100k-explicit --user 42 -k 10

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(FEDREC) data fetch ml-100k
	$(FEDREC) bench all --out docs/benchmarks.md

clean-venv:
	rm -rf $(VENV)
