# The two commands a newcomer runs: `make demo` and `make test`.
# Each creates or reuses .venv and installs what it needs; re-running is quick
# when pyproject.toml has not changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FEDREC := $(VENV)/bin/fedrec
STAMP  := $(VENV)/.installed-stamp
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test test-fast bench browser clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[full,dev]'
	@# compile the engine's numba kernels once into their on-disk cache (about a minute)
	$(PY) -m federation.engine.kernels.warm
	@touch $(STAMP)

venv: $(STAMP)

# Comments sit on their own lines: make keeps the spaces before a trailing comment in the value.
# DEMO_RUN: rating prediction (RMSE); its ratings weigh the summaries and history entries.
# DEMO_RANK: the ranker the demo recommends with (an RMSE model favours rarely rated titles).
DEMO_RUN := runs/demo-ml100k-explicit
DEMO_IDX := indices/demo-ml100k-explicit
DEMO_RANK := runs/demo-ml100k-implicit
# make demo DEMO_SERVE=0: stop after printing, do not serve the dashboard
DEMO_SERVE ?= 1
PORT ?= 8501

demo: $(STAMP)
	$(FEDREC) data fetch ml-100k
	$(FEDREC) train configs/ml100k-explicit.yaml --run-dir $(DEMO_RUN) --overwrite
	$(FEDREC) evaluate $(DEMO_RUN) --split test
	$(FEDREC) train configs/ml100k-implicit.yaml --run-dir $(DEMO_RANK) --overwrite
	$(FEDREC) evaluate $(DEMO_RANK) --split test
	@# The same implicit job under secure aggregation (docs/privacy.md): the server sees only sums.
	$(FEDREC) train configs/ml100k-implicit-secure.yaml --run-dir runs/demo-ml100k-implicit-secure --overwrite
	$(FEDREC) evaluate runs/demo-ml100k-implicit-secure --split test
	$(FEDREC) recommend $(DEMO_RANK) --user 1 -k 10
	$(FEDREC) recommend $(DEMO_RANK) --user 42 -k 10
	@# New users (docs/strategies.md, persona): the same job with a federated user embedder; a user the
	@# run has never seen gets a list from three liked films at once.
	$(FEDREC) train configs/ml100k-persona.yaml --run-dir runs/demo-ml100k-persona --overwrite --quiet
	$(FEDREC) recommend runs/demo-ml100k-persona --history "50,181,172" -k 10
	@# The ranking stage (docs/ranking.md): federated EASE, a LightGBM re-ranker trained across user
	@# blocks, and a list with long-tail and novelty targets (MAP palette).
	$(FEDREC) rank ease configs/ml100k-ease.yaml --run-dir runs/demo-ml100k-ease --overwrite
	$(FEDREC) rank train configs/ml100k-ranker.yaml --run-dir runs/demo-ml100k-ranker --overwrite --quiet
	$(FEDREC) recommend $(DEMO_RANK) --user 1 -k 10 --rerank runs/demo-ml100k-ranker --target tail=0.3 --target novelty=0.35
	$(FEDREC) index build items $(DEMO_RANK) --out indices/demo-ml100k-implicit/items --quiet > /dev/null
	$(FEDREC) index build items $(DEMO_RUN) --out $(DEMO_IDX)/items --quiet > /dev/null
	$(FEDREC) index build content $(DEMO_RUN) --out $(DEMO_IDX)/content --quiet > /dev/null
	$(FEDREC) index build summaries $(DEMO_RUN) --out $(DEMO_IDX)/summaries --quiet > /dev/null
	$(FEDREC) index build histories $(DEMO_RUN) --out $(DEMO_IDX)/histories --quiet > /dev/null
	$(FEDREC) index query $(DEMO_IDX)/content --run $(DEMO_RUN) --text "a funny animated film for children" -k 5
	$(FEDREC) index query $(DEMO_IDX)/histories --run $(DEMO_RUN) --user 42 --text "space adventure" -k 3
	@# Content: a synthetic multimodal catalogue, a CLIP model trained on it, a cold-start run,
	@# personalized search and an explanation (docs/content.md).
	$(FEDREC) data synth --out data/synth-mm --users 3000 --items 1000
	$(FEDREC) clip train data/synth-mm --out models/clip-synth-mm --epochs 40 --if-stale
	$(FEDREC) train configs/synth-cold.yaml --run-dir runs/demo-synth-cold --overwrite
	$(FEDREC) search runs/demo-synth-cold --user 0 --query "a red striped lamp" -k 5
	$(FEDREC) search runs/demo-synth-cold --user 1 --query "a red striped lamp" -k 5
	$(FEDREC) explain runs/demo-synth-cold --user 0 --item 7
	@if [ "$(DEMO_SERVE)" = "1" ]; then $(FEDREC) dashboard --runs runs --indices indices --port $(PORT); fi

# Debian's chromium + chromedriver for the dashboard's browser test and `fedrec bench browser`: installed
# once when missing and this machine can (root + apt-get); otherwise that test skips and says why.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian chromium + chromium-driver (browser test)"; \
	    apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && \
	        apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } || \
	      echo "could not install chromium: the browser test will skip"; \
	  else echo "no chromium and no root apt-get here: the browser test will skip"; fi; \
	fi

# --durations: CI prints the slowest tests, to keep the suite inside its ~20-minute budget.
test: $(STAMP) browser
	$(PY) -m pytest -q --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The browser section times the demo's runs: make them first (without serving the dashboard).
bench: $(STAMP) browser
	$(MAKE) demo DEMO_SERVE=0
	$(FEDREC) bench all --out docs/benchmarks.md --cache docs/bench/strategies.jsonl

clean-venv:
	rm -rf $(VENV)
